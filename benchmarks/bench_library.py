"""Our pieces against the library pieces that do the same job (issue 17, item 4).

Three comparisons, each a subcommand (``all`` runs the three); every case runs in its own
subprocess (:func:`benchutil.run_case`), so cases never share threads, caches or memory:

``knn``
    The online kNN monitor's classifier (``OnlineKNN.measure`` -> :func:`knn_classify`: faiss
    exact search + temperature-weighted vote) against ``lightly.utils.benchmarking.knn_predict``
    (torch matmul + top-k + the same ``exp(sim / t)`` vote) on the same L2-normalised features
    (``--gallery`` x ``--dim`` gallery, ``--queries`` queries, ``--classes`` identities, seeded).
    Time per call (median of ``--repeats``, after one untimed call) and whether both give the same
    top-1 class for every query.
``loader``
    Our resumable loader (:class:`~backbone_ssl.data.sampling.ResumableLoader`) against torchdata's
    ``StatefulDataLoader`` over the same small image folder (toy faces, written once under
    ``--work``) and the same per-image transform (random resized crop + flip + colour jitter):
    images/s over ``--epochs`` epochs, and resume-exactness: stop after ``--stop`` batches, save
    ``state_dict()``, build a fresh loader, ``load_state_dict`` and compare the remaining batches
    with an uninterrupted run's: the labels (same samples in the same order) and the augmented
    images, bit for bit (``resume_exact``). torchdata is optional (``pip install
    torchdata``); without it the row says so.
``views``
    Our batched views (:mod:`backbone_ssl.data.batch_views`: per-sample :func:`draw_params` +
    one batched :func:`render`) against ``kornia.augmentation`` with the equivalent ops (random
    resized crop, flip, colour jitter, grayscale, Gaussian blur, solarisation, normalisation) for
    SimCLR's view at ``--size`` px from a ``--batch`` x 3 x ``--source`` uint8 batch: batches/s
    (median of ``--repeats``).

Prints one markdown table per comparison, with the machine (cores, CPU model), torch threads and
the load average before and after each case (the machine is shared: read the numbers with it).

    python benchmarks/bench_library.py all
    python benchmarks/bench_library.py knn --gallery 1000 --queries 500 --dim 512 --k 20 --t 0.07
    python benchmarks/bench_library.py loader --images 400 --workers 0 2 --epochs 2
    python benchmarks/bench_library.py views --batch 64 --size 32 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import emit, load_average, machine, median, run_case  # noqa: E402

HERE = Path(__file__).resolve()


# ---- knn ---------------------------------------------------------------------------------------
def _knn_features(gallery: int, queries: int, dim: int, classes: int, noise: float, seed: int):
    """Unit rows around ``classes`` seeded centres: ``(g [G,D], g_labels [G], q [Q,D], q_labels)``
    as float32 / int64 numpy arrays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)

    def draw(n: int):
        labels = rng.integers(0, classes, n)
        x = centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels

    g, gl = draw(gallery)
    q, ql = draw(queries)
    return g, gl.astype(np.int64), q, ql.astype(np.int64)


def knn_case(a: argparse.Namespace) -> None:
    """One kNN case in this process: ``--impl ours|lightly``."""
    import numpy as np
    import torch

    g, gl, q, ql = _knn_features(a.gallery, a.queries, a.dim, a.classes, a.noise, a.seed)
    if a.impl == "ours":
        from backbone_ssl.evaluation.knn import class_scores, knn_classify, knn_neighbours

        def call() -> float:
            return float(knn_classify(g, gl, q, ql, k=a.k, t=a.t, num_classes=a.classes)["top1"])

        sims, idx = knn_neighbours(g, q, a.k)
        scores = class_scores(sims, gl[idx], a.t, a.classes)
        pred = np.argsort(-scores, axis=1, kind="stable")[:, 0]
    else:
        from lightly.utils.benchmarking import knn_predict

        gt, glt, qt, qlt = (torch.from_numpy(v) for v in (g, gl, q, ql))
        bank = gt.t().contiguous()  # [D, G]: lightly's layout, built once as its callback does

        def call() -> float:
            top = knn_predict(qt, bank, glt, a.classes, knn_k=a.k, knn_t=a.t)[:, 0]
            return float((top == qlt).float().mean())

        pred = knn_predict(qt, bank, glt, a.classes, knn_k=a.k, knn_t=a.t)[:, 0].numpy()
    top1 = call()  # warm-up, untimed
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    emit({"impl": a.impl, "ms_per_call": round(1000 * median(times), 3), "top1": top1,
          "pred": pred.astype(int).tolist()})


def knn_compare(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Both kNN cases; the ``same_top1`` column says whether their per-query top-1 agree."""
    common = [str(HERE), "knn-case", "--gallery", str(a.gallery), "--queries", str(a.queries),
              "--dim", str(a.dim), "--classes", str(a.classes), "--k", str(a.k), "--t", str(a.t),
              "--noise", str(a.noise), "--seed", str(a.seed), "--repeats", str(a.repeats)]
    rows = [run_case([*common, "--impl", impl]) for impl in ("ours", "lightly")]
    agree = sum(x == y for x, y in zip(rows[0]["pred"], rows[1]["pred"])) / len(rows[0]["pred"])
    for r in rows:
        r["same_top1"] = f"{100 * agree:.1f}% of queries"
        del r["pred"]
    return rows


# ---- loader ------------------------------------------------------------------------------------
def _folder(work: Path, images: int) -> Path:
    """A toy-faces identity folder (the iCartoonFace training layout) of about ``images`` 64 px
    images, written once."""
    from backbone_ssl.data.icartoonface import TRAIN_SUBDIR
    from backbone_ssl.data.toy import write_toy_faces

    per = 20
    root = work / f"toy_faces_{images}"
    if not (root / "toy_faces.json").is_file():
        write_toy_faces(root, identities=max(2, images // per), per_identity=per, size=64, seed=0)
    return root / TRAIN_SUBDIR


def _transform(size: int):
    import torchvision.transforms as T

    return T.Compose([T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip(),
                      T.ColorJitter(0.4, 0.4, 0.4), T.ToTensor()])


def loader_case(a: argparse.Namespace) -> None:
    """One loader case in this process: ``--impl ours|torchdata|plain`` (``plain``: torch's
    ``DataLoader(shuffle=True)``, no per-sample seeding and no resume: the floor)."""
    import torch

    from backbone_ssl.data.datasets import ImageFolderDataset

    root = _folder(Path(a.work), a.images)
    dataset = ImageFolderDataset(root, transform=_transform(a.size))
    kw = dict(batch_size=a.batch, num_workers=a.workers, drop_last=True)

    if a.impl == "ours":
        from backbone_ssl.data.sampling import ResumableLoader

        def make():
            return ResumableLoader(dataset, seed=0, **kw)
    elif a.impl == "plain":
        from torch.utils.data import DataLoader

        def make():
            return DataLoader(dataset, shuffle=True, generator=torch.Generator().manual_seed(0),
                              **kw)
    else:
        try:
            from torchdata.stateful_dataloader import StatefulDataLoader
        except ImportError:
            emit({"impl": a.impl, "skipped": "torchdata is not installed (pip install torchdata)"})
            return

        def make():
            return StatefulDataLoader(dataset, shuffle=True,
                                      generator=torch.Generator().manual_seed(0), **kw)

    loader = make()
    n, t0 = 0, time.perf_counter()
    for epoch in range(a.epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for x, _ in loader:
            n += len(x)
    seconds = time.perf_counter() - t0
    if a.impl == "plain":  # nothing to resume
        emit({"impl": a.impl, "workers": a.workers, "images": n, "seconds": round(seconds, 2),
              "images_per_s": round(n / seconds, 1)})
        return

    # resume-exactness on one epoch: the batches after a saved state, fresh loader vs no stop
    def first_epoch(ld):
        if hasattr(ld.sampler, "set_epoch"):
            ld.sampler.set_epoch(0)
        return ld

    reference = list(first_epoch(make()))  # fresh loaders: same seed, same order
    if len(reference) <= a.stop:
        raise SystemExit(f"--stop {a.stop} leaves no batch of the {len(reference)} to compare: "
                         "lower it or raise --images")
    stopped = first_epoch(make())
    it = iter(stopped)
    for _ in range(a.stop):
        next(it)
    state = stopped.state_dict()
    del it
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    same_count = len(rest) == len(reference) - a.stop
    same_order = same_count and all(torch.equal(r[1], e[1])
                                    for r, e in zip(rest, reference[a.stop:]))
    exact = same_order and all(torch.equal(r[0], e[0]) for r, e in zip(rest, reference[a.stop:]))
    emit({"impl": a.impl, "workers": a.workers, "images": n, "seconds": round(seconds, 2),
          "images_per_s": round(n / seconds, 1), "resume_same_labels": bool(same_order),
          "resume_exact": bool(exact),
          "resumed_batches": len(rest), "expected_batches": len(reference) - a.stop})


def loader_compare(a: argparse.Namespace) -> list[dict[str, Any]]:
    Path(a.work).mkdir(parents=True, exist_ok=True)
    _folder(Path(a.work), a.images)  # written once, outside the timed cases
    rows = []
    for workers in a.workers:
        for impl in ("ours", "torchdata", "plain"):
            rows.append(run_case([str(HERE), "loader-case", "--impl", impl, "--work", a.work,
                                  "--images", str(a.images), "--batch", str(a.batch),
                                  "--size", str(a.size), "--workers", str(workers),
                                  "--epochs", str(a.epochs), "--stop", str(a.stop)]))
    return rows


# ---- views -------------------------------------------------------------------------------------
def _kornia_views(recipe, source: int):
    """``kornia.augmentation`` ops equivalent to one :class:`ViewRecipe`."""
    import kornia.augmentation as K
    import torch

    blur_kernel = min(2 * int(3 * recipe.sigmas[1]) + 1, source - 1 - (source % 2))
    ops = [K.RandomResizedCrop(recipe.size, scale=recipe.scale, ratio=recipe.ratio,
                               resample=recipe.mode.upper()),
           K.RandomHorizontalFlip(p=recipe.hflip)]
    if recipe.vflip:
        ops.append(K.RandomVerticalFlip(p=recipe.vflip))
    if recipe.jitter:
        ops.append(K.ColorJitter(brightness=recipe.brightness or 0.0,
                                 contrast=recipe.contrast or 0.0,
                                 saturation=recipe.saturation or 0.0, hue=recipe.hue or 0.0,
                                 p=recipe.jitter))
    if recipe.gray:
        ops.append(K.RandomGrayscale(p=recipe.gray))
    if recipe.blur:
        ops.append(K.RandomGaussianBlur((blur_kernel, blur_kernel), recipe.sigmas, p=recipe.blur))
    if recipe.solarize:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=recipe.solarize))
    ops.append(K.Normalize(mean=torch.tensor(recipe.mean), std=torch.tensor(recipe.std)))
    return K.AugmentationSequential(*ops)


def views_case(a: argparse.Namespace) -> None:
    """One views case in this process: ``--impl ours|ours-render|kornia``."""
    import torch
    from lightly.transforms import SimCLRTransform

    from backbone_ssl.data.batch_views import draw_params, recipe_from, render

    recipe = recipe_from(SimCLRTransform(input_size=a.size).transforms[0])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (a.batch, 3, a.source, a.source), dtype=torch.uint8,
                           generator=g)
    torch.manual_seed(0)
    if a.impl in ("ours", "ours-render"):
        fixed = torch.stack([draw_params(recipe, a.source, a.source) for _ in range(a.batch)])

        def call() -> torch.Tensor:
            params = fixed if a.impl == "ours-render" else torch.stack(
                [draw_params(recipe, a.source, a.source) for _ in range(a.batch)])
            return render(images, params, recipe)
    else:
        aug = _kornia_views(recipe, a.source)

        def call() -> torch.Tensor:
            return aug(images.float().div_(255))

    out = call()  # warm-up, untimed
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    emit({"impl": a.impl, "batch": a.batch, "size": a.size, "source": a.source,
          "ms_per_batch": round(1000 * median(times), 2),
          "batches_per_s": round(1 / median(times), 1), "out_shape": list(out.shape)})


def views_compare(a: argparse.Namespace) -> list[dict[str, Any]]:
    return [run_case([str(HERE), "views-case", "--impl", impl, "--batch", str(a.batch),
                      "--size", str(a.size), "--source", str(a.source),
                      "--repeats", str(a.repeats)])
            for impl in ("ours", "ours-render", "kornia")]


# ---- output ------------------------------------------------------------------------------------
def markdown(title: str, rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not k.startswith("peak_rss_children")]
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |",
             "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def knn_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--gallery", type=int, default=1000)
        q.add_argument("--queries", type=int, default=500)
        q.add_argument("--dim", type=int, default=512)
        q.add_argument("--classes", type=int, default=50)
        q.add_argument("--noise", type=float, default=4.0,
                       help="per-dimension noise around the unit-variance class centres "
                            "(4: kNN top-1 about 0.8 at the defaults, so the votes matter)")
        q.add_argument("--k", type=int, default=20)
        q.add_argument("--t", type=float, default=0.07)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--repeats", type=int, default=20)

    def loader_args(q: argparse.ArgumentParser, many_workers: bool) -> None:
        q.add_argument("--work", default="/tmp/bench_library")
        q.add_argument("--images", type=int, default=400)
        q.add_argument("--batch", type=int, default=32)
        q.add_argument("--size", type=int, default=32)
        q.add_argument("--epochs", type=int, default=2)
        q.add_argument("--stop", type=int, default=3, help="batches read before the state is saved")
        if many_workers:
            q.add_argument("--workers", type=int, nargs="+", default=[0, 2])
        else:
            q.add_argument("--workers", type=int, default=0)

    def views_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--batch", type=int, default=64)
        q.add_argument("--size", type=int, default=32)
        q.add_argument("--source", type=int, default=64, help="cached image side (uint8)")
        q.add_argument("--repeats", type=int, default=20)

    knn_args(sub.add_parser("knn", help="online kNN monitor vs lightly knn_predict"))
    loader_args(sub.add_parser("loader", help="ResumableLoader vs torchdata StatefulDataLoader"),
                True)
    views_args(sub.add_parser("views", help="batched views vs kornia.augmentation"))
    q = sub.add_parser("all", help="the three comparisons at their defaults")
    knn_args(q)
    q.add_argument("--work", default="/tmp/bench_library")
    q.add_argument("--images", type=int, default=400)
    q.add_argument("--epochs", type=int, default=2)
    q.add_argument("--stop", type=int, default=3)
    q.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    q.add_argument("--loader-batch", type=int, default=32)
    q.add_argument("--batch", type=int, default=64)
    q.add_argument("--size", type=int, default=32)
    q.add_argument("--source", type=int, default=64)
    # one process per case (internal)
    q = sub.add_parser("knn-case")
    knn_args(q)
    q.add_argument("--impl", choices=["ours", "lightly"], required=True)
    q = sub.add_parser("loader-case")
    loader_args(q, False)
    q.add_argument("--impl", choices=["ours", "torchdata", "plain"], required=True)
    q = sub.add_parser("views-case")
    views_args(q)
    q.add_argument("--impl", choices=["ours", "ours-render", "kornia"], required=True)
    a = p.parse_args(argv)

    cases = {"knn-case": knn_case, "loader-case": loader_case, "views-case": views_case}
    if a.cmd in cases:
        cases[a.cmd](a)
        return 0
    m = machine()
    print(f"Machine: {m['cores']} cores, {m['cpu']}; torch {m['torch']} "
          f"({m['torch_threads']} threads); load average {load_average()} at the start.\n")
    tables = []
    if a.cmd in ("knn", "all"):
        tables.append(markdown(f"kNN: ours (faiss + vote) vs lightly knn_predict; {a.gallery} "
                               f"gallery x {a.queries} queries x {a.dim}-d, {a.classes} classes, "
                               f"k {a.k}, t {a.t}, median of {a.repeats}", knn_compare(a)))
    if a.cmd in ("loader", "all"):
        la = argparse.Namespace(**{**vars(a), "batch": getattr(a, "loader_batch", a.batch),
                                   "size": 32})
        tables.append(markdown(f"Resumable loader: ours vs torchdata StatefulDataLoader; "
                               f"~{a.images} toy faces, batch {la.batch}, {la.size} px, "
                               f"{a.epochs} epochs; resume after {a.stop} batches",
                               loader_compare(la)))
    if a.cmd in ("views", "all"):
        tables.append(markdown(f"Batched views (SimCLR view): ours vs kornia.augmentation; "
                               f"batch {a.batch}, {a.source} -> {a.size} px, median of "
                               f"{getattr(a, 'repeats', 20)}",
                               views_compare(argparse.Namespace(
                                   **{**vars(a), "repeats": getattr(a, "repeats", 20)}))))
    print("\n\n".join(tables))
    print(f"\nLoad average at the end: {load_average()}.")
    print(json.dumps({"machine": m}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
