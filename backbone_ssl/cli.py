"""``backbone-ssl``: one entry point, one subcommand per job. Thin: parse, call, print.

Exit status: 0 done; 2 bad input or config (one line on stderr saying what and where);
1 a run that failed for another reason (e.g. a non-finite loss), also with one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from backbone_ssl import __version__
from backbone_ssl.errors import UserError
from backbone_ssl.outdir import mark_out_dir, prepare_out_dir

log = logging.getLogger("backbone_ssl")

#: subcommand registrars; later modules add theirs here (name -> function(subparsers))
REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = []


def registrar(fn: Callable[[argparse._SubParsersAction], None]):
    """Decorator: add a subcommand registrar to the parser."""
    REGISTRARS.append(fn)
    return fn


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


# ---- toy -------------------------------------------------------------------------------------
@registrar
def _toy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("toy", help="write the embedded default data sets")
    toy_sub = p.add_subparsers(dest="toy_kind", required=True, parser_class=_Parser)
    f = toy_sub.add_parser("faces", help="procedural cartoon faces in the iCartoonFace layout")
    f.add_argument("--out", required=True)
    f.add_argument("--identities", type=int, default=50)
    f.add_argument("--per-identity", type=int, default=40)
    f.add_argument("--size", type=int, default=64)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_toy_faces)
    c = toy_sub.add_parser("comics", help="procedural comic books in the COMICS layout")
    c.add_argument("--out", required=True)
    c.add_argument("--books", type=int, default=6)
    c.add_argument("--pages", type=int, default=8)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_toy_comics)


def cmd_toy_faces(args: argparse.Namespace) -> int:
    from backbone_ssl.data.toy import write_toy_faces

    for name in ("identities", "per_identity", "size"):
        if getattr(args, name) < (2 if name != "size" else 16):
            raise UserError(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    prepare_out_dir(args.out, "toy faces")
    t0 = time.perf_counter()
    summary = write_toy_faces(args.out, identities=args.identities,
                              per_identity=args.per_identity, size=args.size, seed=args.seed)
    print(f"wrote toy faces to {args.out} in {time.perf_counter() - t0:.1f}s: "
          f"{_summary_line(summary)}")
    return 0


def cmd_toy_comics(args: argparse.Namespace) -> int:
    from backbone_ssl.data.toy_comics import write_toy_comics

    if args.books < 1 or args.pages < 1:
        raise UserError(f"--books and --pages must be >= 1 (got {args.books}, {args.pages})")
    prepare_out_dir(args.out, "toy comics")
    t0 = time.perf_counter()
    summary = write_toy_comics(args.out, books=args.books, pages=args.pages, seed=args.seed)
    print(f"wrote toy comics to {args.out} in {time.perf_counter() - t0:.1f}s: "
          f"{_summary_line(summary)}")
    return 0


# ---- golden ----------------------------------------------------------------------------------
@registrar
def _golden(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("golden", help="Golden Age comics (COMICS) data preparation")
    g_sub = p.add_subparsers(dest="golden_cmd", required=True, parser_class=_Parser)
    g = g_sub.add_parser("prepare", help="face boxes + panels -> sequences, face crops, labels")
    g.add_argument("--panels", required=True, help="raw_panel_images/ folder")
    g.add_argument("--annotations", required=True, help="folder of <book>.txt face detections")
    g.add_argument("--out", required=True)
    g.add_argument("--min-conf", type=float, default=0.9)
    g.add_argument("--min-face", type=int, default=32)
    g.add_argument("--window", type=int, default=3)
    g.add_argument("--face-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=1)
    g.set_defaults(func=cmd_golden_prepare)


def cmd_golden_prepare(args: argparse.Namespace) -> int:
    from backbone_ssl.data.golden import prepare, summary_line

    prepare_out_dir(args.out, "golden prepare", sources=[args.panels, args.annotations])
    stats = prepare(args.panels, args.annotations, args.out, min_conf=args.min_conf,
                    min_face=args.min_face, window=args.window, face_size=args.face_size,
                    workers=args.workers)
    print(summary_line(stats))
    print(f"prepared: {args.out} (sequences.json, faces/, stats.json)")
    return 0


def _summary_line(summary: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in summary.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool))


# ---- pretrain --------------------------------------------------------------------------------
#: every registered method (backbone_ssl.methods.METHODS), written out so that building the parser
#: does not import torch; tests/test_config.py checks the two lists agree
METHOD_NAMES = ("dino", "byol", "inpaint", "person", "identity", "simclr", "mocov2", "vicreg",
                "barlowtwins", "nnclr")

@registrar
def _pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder with one method")
    p.add_argument("method", help=" | ".join(METHOD_NAMES))
    p.add_argument("--config", help="YAML config (default: configs/<method>.yaml)")
    p.add_argument("--data", help="image folder / iCartoonFace root / golden prepare output")
    p.add_argument("--out", help="run directory (default runs/<method>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue RUN/checkpoints/last.ckpt")
    p.set_defaults(func=cmd_pretrain, accepts_overrides=True)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from backbone_ssl.train import pretrain

    res = pretrain(args.method, config_file=args.config, data=args.data, out=args.out,
                   resume=args.resume, overrides=args.overrides)
    print(f"pretrained {args.method}: {res.steps} steps in {res.seconds:.0f}s "
          f"({res.images_per_second:.1f} images/s); skipped images: {res.skipped_images}; "
          f"encoder: {res.encoder_dir}")
    return 0


# ---- eval ------------------------------------------------------------------------------------
@registrar
def _eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="kNN + linear probe (+ iCartoonFace rank-1) of an encoder")
    p.add_argument("--encoder", required=True, help="encoder folder, checkpoint or random:<arch>")
    p.add_argument("--train", help="labelled identity folder (gallery / probe training set)")
    p.add_argument("--test", help="labelled identity folder (queries)")
    p.add_argument("--icartoonface", help="iCartoonFace root (official rank-1 protocol)")
    p.add_argument("--out", default="eval_out")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--t", type=float, default=0.07)
    p.add_argument("--baseline", action="store_true",
                   help="also evaluate a random-init encoder of the same architecture and raw "
                        "pixels at the encoder's input size")
    p.add_argument("--knn-index", choices=["flat", "ivf"], default="flat",
                   help="flat: exact (default); ivf: approximate faiss IVF search for galleries "
                        "of about 1M vectors and more (the report records it)")
    p.add_argument("--nprobe", type=int, default=None,
                   help="ivf: cells scanned per query (default: 1/32 of them, at least 8)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from backbone_ssl.evaluation.report import format_table, run_eval
    from backbone_ssl.export import resolve_encoder

    if not (args.train and args.test) and not args.icartoonface:
        raise UserError("eval needs --train DIR and --test DIR, or --icartoonface ROOT")
    if args.k < 1 or args.t <= 0:
        raise UserError(f"--k must be >= 1 and --t > 0 (got k={args.k}, t={args.t})")
    if args.nprobe is not None and args.nprobe < 1:
        raise UserError(f"--nprobe must be >= 1 (got {args.nprobe})")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 (got {args.batch_size})")
    prepare_out_dir(args.out, "eval", mark=False,
                    sources=[args.encoder, args.train, args.test, args.icartoonface])
    encoder = resolve_encoder(args.encoder)
    mark_out_dir(args.out, "eval")  # only once the encoder loaded: no empty folder on a typo
    baseline = pixels = None
    if args.baseline:
        from backbone_ssl.evaluation.pixels import pixels_like

        baseline = resolve_encoder(f"random:{encoder.arch}", input_size=encoder.input_size,
                                   seed=args.seed)
        pixels = pixels_like(encoder)
    report = None
    if args.train and args.test:
        report = run_eval(encoder, args.train, args.test, args.out, k=args.k, t=args.t,
                          baseline=baseline, seed=args.seed, batch_size=args.batch_size,
                          knn_index=args.knn_index, nprobe=args.nprobe, pixels=pixels)
    if args.icartoonface:
        from backbone_ssl.evaluation.icartoonface import run_icartoonface_eval

        report = run_icartoonface_eval(encoder, args.icartoonface, args.out, baseline=baseline,
                                       batch_size=args.batch_size, pixels=pixels)
    print(format_table(report))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


# ---- export ----------------------------------------------------------------------------------
@registrar
def _export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint's backbone as a frozen encoder")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["timm", "ssupergan"], default="timm")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier export at --out (only a folder holding exactly an "
                        "export's own files)")
    p.add_argument("--network", choices=["teacher", "student"], default=None,
                   help="which network of the checkpoint (default: its export.network; DINO: "
                        "teacher, BYOL: student = online)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from backbone_ssl import export

    if args.format == "ssupergan":
        from backbone_ssl.ssupergan import export_ssupergan

        prepare_out_dir(args.out, "export ssupergan", force=args.force, sources=[args.checkpoint],
                        mark=False)
        out = export_ssupergan(args.checkpoint, args.out, network=args.network)
        mark_out_dir(out, "export ssupergan")
    else:
        prepare_out_dir(args.out, "export", force=args.force, sources=[args.checkpoint],
                        mark=False)
        out = export.export_checkpoint(args.checkpoint, args.out, network=args.network)
    print(f"exported {args.format} encoder to {out}")
    return 0


# ---- search ---------------------------------------------------------------------------------
@registrar
def _search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="hyper-parameter search (optuna) over short runs")
    p.add_argument("method", help=" | ".join(METHOD_NAMES))
    p.add_argument("--trials", type=int, required=True)
    p.add_argument("--sampler", choices=["grid", "random"], default="random")
    p.add_argument("--space", help="search space YAML (default configs/search_<method>.yaml)")
    p.add_argument("--data")
    p.add_argument("--out", default="search_out")
    p.set_defaults(func=cmd_search, accepts_overrides=True)


def cmd_search(args: argparse.Namespace) -> int:
    from backbone_ssl.search import run_search

    if args.trials < 1:
        raise UserError(f"--trials must be >= 1, got {args.trials}")
    prepare_out_dir(args.out, "search", sources=[args.data, args.space])
    summary = run_search(args.method, trials=args.trials, sampler=args.sampler, space=args.space,
                         data=args.data, out=args.out, overrides=args.overrides)
    print(summary.get("summary", summary))
    print(f"search outputs: {args.out} (study.db, trial_*/, best.yaml)")
    return 0


# ---- cluster --------------------------------------------------------------------------------
@registrar
def _cluster(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="cluster faces by character on a kNN graph")
    p.add_argument("--encoder", required=True, help="encoder folder, checkpoint, random:<arch>, "
                   "pixels[:S]")
    p.add_argument("--data", required=True, help="face folder (golden prepare output / faces/, "
                   "identity folders)")
    p.add_argument("--out", required=True)
    p.add_argument("--method", help="rank_order | leiden | infomap | hdbscan | agglomerative | all")
    p.add_argument("--group-by", choices=["book"], help="cluster each book's cast first")
    p.add_argument("--export-identities", help="write clusters as identity folders here")
    p.add_argument("--ground-truth", help="toy comics ground_truth.json (found beside the panels "
                   "when not given)")
    p.add_argument("--config", help="YAML config (default: configs/cluster.yaml)")
    p.set_defaults(func=cmd_cluster, accepts_overrides=True)


def cmd_cluster(args: argparse.Namespace) -> int:
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # bad input stays one line
    from backbone_ssl.cluster.run import format_summary, run_cluster

    report = run_cluster(args.encoder, args.data, args.out, method=args.method,
                         group_by=args.group_by, export_dir=args.export_identities,
                         ground_truth=args.ground_truth, config_file=args.config,
                         overrides=args.overrides)
    print(format_summary(report))
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


# ---- downstream -----------------------------------------------------------------------------
@registrar
def _downstream(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("downstream", help="plug an encoder into a downstream model")
    p.add_argument("task", choices=["cloze", "siamese", "gan", "bigan", "vaegan", "introvae",
                                    "stylegan", "invert"])
    p.add_argument("--generator", help="invert: a `downstream stylegan` run folder")
    p.add_argument("--mask", choices=["none", "box"], help="invert: masked inversion")
    p.add_argument("--encoder", required=True, help="encoder folder, checkpoint or random:<arch>")
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="run directory (default runs/<task>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="bigan, vaegan, introvae: continue RUN/checkpoints/last.ckpt")
    p.add_argument("--config", help="YAML config (default: configs/<task>.yaml), e.g. "
                   "configs/cloze_autoencoder.yaml")
    p.set_defaults(func=cmd_downstream, accepts_overrides=True)


def cmd_downstream(args: argparse.Namespace) -> int:
    from downstream import run_downstream

    out = args.out or str(Path("runs") / f"{args.task}-{time.strftime('%Y%m%d-%H%M%S')}")
    prepare_out_dir(out, f"downstream {args.task}",
                    sources=[args.encoder, args.data, args.generator])
    extra = [f"generator={args.generator}"] if args.generator else []
    extra += [f"mask.kind={args.mask}"] if args.mask else []
    run_downstream(args.task, encoder=args.encoder, data=args.data, out=out,
                   overrides=extra + list(args.overrides), resume=args.resume,
                   config_file=args.config)
    print((Path(out) / "report.md").read_text())
    print(f"report: {Path(out) / 'report.md'} (report.json, plots/)")
    return 0


# ---- demo ------------------------------------------------------------------------------------
@registrar
def _demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="toy faces -> the demo recipe (configs/demo.yaml) -> eval "
                                    "beside raw pixels and random init -> report")
    p.add_argument("--out", default="demo_out")
    p.set_defaults(func=cmd_demo, accepts_overrides=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from backbone_ssl.demo import run_demo

    prepare_out_dir(args.out, "demo")
    report_md = run_demo(args.out, overrides=args.overrides)
    print(report_md)
    made = sorted(f"{p.name}/" for p in Path(args.out).iterdir() if p.is_dir())
    print(f"demo outputs: {args.out} (report.md, {', '.join(made)})")
    return 0


# ---- entry point -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backbone-ssl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"backbone-ssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging and every library warning (quiet by default)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in REGISTRARS:
        register(sub)
    return parser


def user_error_from_worker(exc: BaseException) -> str | None:
    """The message of a UserError raised in a DataLoader worker process (torch re-raises it
    wrapped, with the worker's traceback in the text), or None."""
    text = str(exc)
    if "Caught UserError" not in text:
        return None
    for line in reversed(text.strip().splitlines()):
        if "UserError: " in line:
            return line.split("UserError: ", 1)[1].strip()
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if unknown or (overrides and not getattr(args, "accepts_overrides", False)):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    args.overrides = overrides
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from backbone_ssl.quiet import install_quiet_filters

        install_quiet_filters()
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"backbone-ssl: error: {user_error_from_worker(exc) or exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("backbone-ssl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from backbone_ssl.methods.base import NonFiniteLossError

        worker_line = user_error_from_worker(exc)
        if worker_line and not args.verbose:
            print(f"backbone-ssl: error: {worker_line}", file=sys.stderr)
            return UserError.exit_code

        if isinstance(exc, NonFiniteLossError) and not args.verbose:
            print(f"backbone-ssl: error: {exc}", file=sys.stderr)
            return 1
        raise

if __name__ == "__main__":
    sys.exit(main())
