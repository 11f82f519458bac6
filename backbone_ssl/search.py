"""``backbone-ssl search``: hyper-parameter search (optuna) over short pretraining runs.

Each trial is one :func:`backbone_ssl.train.pretrain` run into ``OUT/trial_<n>/``; its objective is
the validation kNN top-1 of the exported encoder (gallery ``data.val_train``, queries
``data.val_test``: a validation split, never test). The study lives in ``OUT/study.db`` (optuna
SQLite storage), so re-running the same command continues it: finished trials are not redone,
a trial killed mid-run is marked failed.

Outputs: ``OUT/trials.csv``, ``OUT/best.yaml`` (the best trial's full config, accepted by
``backbone-ssl pretrain METHOD --config OUT/best.yaml``) and ``OUT/plots/objective_vs_<param>.png``.

Space file (YAML; default ``configs/search_<method>.yaml``)::

    params:                        # dotted config key -> distribution
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, grid: [3.0e-4, 1.0e-3]}
      dino.n_local_views: {type: categorical, choices: [0, 2]}
    fixed: {trainer.max_epochs: 3} # applied to every trial (a short run)
    pruner: median                 # none | median (optuna MedianPruner on per-epoch kNN)

A mapping of dotted keys only (no ``params:``) is read as ``params``. The grid sampler uses
``choices`` (categorical) or ``grid`` (float / int).
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
from omegaconf import OmegaConf

from backbone_ssl.config import closest_key, default_config_file, flat_keys, load_config
from backbone_ssl.curves import save_pyplot
from backbone_ssl.errors import UserError
from backbone_ssl.evaluation.features import embed_dataset
from backbone_ssl.evaluation.knn import knn_classify
from backbone_ssl.evaluation.protocol import EvalSplits, load_splits
from backbone_ssl.export import load_encoder_bundle
from backbone_ssl.io import atomic_path, write_text_atomic
from backbone_ssl.methods import get_method
from backbone_ssl.methods.base import NonFiniteLossError

log = logging.getLogger(__name__)

OBJECTIVE = "val/knn_top1"
#: Used for methods that ship no ``configs/search_<method>.yaml``.
GENERIC_SPACE: dict[str, Any] = {
    "params": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True,
                            "grid": [3e-4, 1e-3, 3e-3]}},
    "fixed": {"trainer.max_epochs": 3},
    "pruner": "none",
}
TYPES = ("float", "int", "categorical")


@dataclass
class Param:
    """One searched config key."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] = field(default_factory=list)
    grid: list[Any] = field(default_factory=list)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Draw this parameter's value for ``trial``."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def grid_values(self) -> list[Any]:
        """Values the grid sampler visits."""
        values = self.choices if self.type == "categorical" else self.grid
        if not values:
            raise UserError(f"search space key '{self.key}' ({self.type}) has no 'grid: [...]' "
                            "list; the grid sampler needs one (or use --sampler random)")
        return list(values)


@dataclass
class Space:
    """A parsed space file."""

    params: list[Param]
    fixed: dict[str, Any]
    pruner: str
    source: str


def parse_space(raw: Any, source: str, valid_keys: Sequence[str]) -> Space:
    """Validate a loaded space file (UserError naming the bad key and the closest valid one)."""
    if not isinstance(raw, dict):
        raise UserError(f"search space {source} must be a mapping of config keys")
    if "params" not in raw:
        raw = {"params": raw}
    extra = sorted(set(raw) - {"params", "fixed", "pruner"})
    if extra:
        raise UserError(f"unknown section '{extra[0]}' in search space {source} "
                        "(sections: params, fixed, pruner)")
    pruner = str(raw.get("pruner") or "none")
    if pruner not in ("none", "median"):
        raise UserError(f"search space {source}: pruner must be none or median, got '{pruner}'")
    fixed = dict(raw.get("fixed") or {})
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict) or not params_raw:
        raise UserError(f"search space {source} has no parameters under 'params:'")
    for key in [*params_raw, *fixed]:
        if key not in valid_keys:
            hint = closest_key(str(key), valid_keys)
            near = f"; did you mean '{hint}'?" if hint else ""
            raise UserError(f"unknown config key '{key}' in search space {source}{near}")
    params = []
    for key, spec in params_raw.items():
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise UserError(f"search space {source}: '{key}' needs type: float, int or "
                            "categorical")
        unknown = sorted(set(spec) - {"type", "low", "high", "log", "choices", "grid"})
        if unknown:
            raise UserError(f"search space {source}: '{key}' has unknown field '{unknown[0]}'")
        p = Param(key=key, type=spec["type"], low=spec.get("low"), high=spec.get("high"),
                  log=bool(spec.get("log", False)), choices=list(spec.get("choices") or []),
                  grid=list(spec.get("grid") or []))
        if p.type == "categorical" and not p.choices:
            raise UserError(f"search space {source}: '{key}' needs choices: [...]")
        if p.type != "categorical" and (p.low is None or p.high is None or p.low > p.high):
            raise UserError(f"search space {source}: '{key}' needs low <= high")
        params.append(p)
    return Space(params, fixed, pruner, source)


def load_space(method: str, space: str | None, valid_keys: Sequence[str]) -> Space:
    """The space file given, else ``configs/search_<method>.yaml``, else :data:`GENERIC_SPACE`."""
    path = Path(space) if space else default_config_file(f"search_{method}")
    if path is None:
        return parse_space(GENERIC_SPACE, "the generic space (optim.lr)", valid_keys)
    if not path.is_file():
        raise UserError(f"search space file not found: {path}")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as exc:  # noqa: BLE001 - yaml parse errors come in many types
        raise UserError(f"cannot parse search space {path}: {str(exc).splitlines()[0]}") from None
    return parse_space(raw, str(path), valid_keys)


def resolve_val_split(data: str | None, overrides: Sequence[str]) -> list[str]:
    """``data.val_train``/``data.val_test`` overrides for the objective (a validation split).

    Given explicitly in ``overrides``, or, for the toy ``split/train`` layout, ``--data`` itself
    as gallery and its sibling ``val`` folder as queries. A ``test`` folder is never used: the
    search chooses, so it must not see the split that is reported (docs/EVALUATION.md).
    """
    given = {o.split("=", 1)[0] for o in overrides}
    if {"data.val_train", "data.val_test"} <= given:
        return []
    if data and (Path(data).parent / "val").is_dir():
        return [f"data.val_train={data}", f"data.val_test={Path(data).parent / 'val'}"]
    raise UserError("search needs a labelled validation split for its kNN objective: pass "
                    "data.val_train=DIR data.val_test=DIR (identity folders), or --data "
                    "ROOT/train with a sibling ROOT/val (never the test split)")


def knn_objective(enc_dir: Path, splits: EvalSplits, k: int = 20, t: float = 0.07) -> float:
    """kNN top-1 of the exported encoder on the held-out split, in [0, 1]."""
    enc = load_encoder_bundle(enc_dir)
    gallery = embed_dataset(enc, splits.train)
    queries = embed_dataset(enc, splits.test)
    scores = knn_classify(gallery, splits.train_labels, queries, splits.test_labels, k=k, t=t,
                          num_classes=splits.num_classes)
    return float(scores["top1"])


class PruningReporter(pl.Callback):
    """Reports the online kNN top-1 to the trial after each epoch; stops pruned trials."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.reported: set[int] = set()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(OBJECTIVE)
        epoch = trainer.current_epoch
        if value is None or epoch in self.reported:
            return
        self.reported.add(epoch)
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({OBJECTIVE}={float(value):.3f})")


def as_override(key: str, value: Any) -> str:
    """``key=value`` in the dotlist syntax ``load_config`` parses back to the same value."""
    def text(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if v is None:
            return "null"
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(text(x) for x in v) + "]"
        return str(v)
    return f"{key}={text(value)}"


def make_sampler(kind: str, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """optuna's GridSampler (over ``choices``/``grid``) or RandomSampler (seeded)."""
    if kind == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid_values() for p in space.params},
                                           seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler '{kind}' (choose grid or random)")


def fail_stale_trials(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a killed search as FAIL; returns how many."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return len(stale)


def write_trials_csv(study: optuna.Study, space: Space, path: Path) -> None:
    """One row per trial: number, state, objective, seconds, then each parameter."""
    keys = [p.key for p in space.params]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", OBJECTIVE, "seconds", *keys])
        for t in study.get_trials(deepcopy=False):
            secs = t.duration.total_seconds() if t.duration is not None else ""
            value = "" if t.value is None else t.value
            w.writerow([t.number, t.state.name, value, secs, *(t.params.get(k, "") for k in keys)])


def plot_objective(study: optuna.Study, space: Space, plots_dir: Path) -> list[Path]:
    """``objective_vs_<param>.png`` per parameter: complete trials' objective against its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    written = []
    for p in space.params:
        pts = [(t.params[p.key], t.value) for t in done if p.key in t.params]
        fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
        if pts:
            xs, ys = zip(*pts)
            if p.type == "categorical":
                labels = [str(c) for c in p.choices]
                pos = [labels.index(str(x)) for x in xs]
                ax.scatter(pos, ys)
                ax.set_xticks(range(len(labels)), labels)
            else:
                ax.scatter(xs, ys)
                if p.log:
                    ax.set_xscale("log")
        ax.set_xlabel(p.key)
        ax.set_ylabel(f"{OBJECTIVE} (held-out)")
        ax.set_title(f"{len(pts)} complete trials")
        ax.grid(alpha=0.3)
        written.append(save_pyplot(fig, plots_dir / f"objective_vs_{p.key.replace('.', '_')}.png"))
    return written


def run_search(method: str, *, trials: int, sampler: str, space: str | None = None,
               data: str | None = None, out: str = "search_out",
               overrides: Sequence[str] = ()) -> dict:
    """Run (or continue) an optuna study of ``trials`` short ``pretrain`` runs.

    Returns ``{"best_value", "best_params", "best_trial", "complete", "pruned", "failed",
    "trials_csv", "best_yaml", "plots", "summary"}`` (``summary`` is the line the CLI prints).
    """
    from backbone_ssl.train import pretrain

    cls = get_method(method)
    if trials < 1:
        raise UserError(f"--trials must be >= 1, got {trials}")
    valid = flat_keys(OmegaConf.structured(cls.config_cls))
    spc = load_space(method, space, valid)
    fixed = [as_override(k, v) for k, v in spc.fixed.items()]
    base_overrides = [*fixed, *overrides, *resolve_val_split(data, overrides)]
    # fail fast on a bad config: every space key at its first grid/choice value (or low)
    probe = [as_override(p.key, (p.choices or p.grid or [p.low])[0]) for p in spc.params]
    base = load_config(cls.config_cls, method, None, [*base_overrides, *probe], data__path=data)
    if not base.data.path:
        raise UserError("no training data: pass --data DIR")
    splits = load_splits(base.data.val_train, base.data.val_test)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
              if spc.pruner == "median" else optuna.pruners.NopPruner())
    study = optuna.create_study(
        study_name=f"backbone-ssl-{method}", storage=f"sqlite:///{out_dir / 'study.db'}",
        direction="maximize", sampler=make_sampler(sampler, spc, base.seed), pruner=pruner,
        load_if_exists=True,
    )
    if fail_stale_trials(study):
        log.warning("marked trials left running by an interrupted search as failed")

    def objective(trial: optuna.Trial) -> float:
        suggested = [as_override(p.key, p.suggest(trial)) for p in spc.params]
        run_dir = out_dir / f"trial_{trial.number}"
        if run_dir.exists():  # left by an interrupted attempt of the same number
            shutil.rmtree(run_dir)
        reporter = [PruningReporter(trial)] if spc.pruner == "median" else []
        pretrain(method, data=data, out=str(run_dir), overrides=[*base_overrides, *suggested],
                 callbacks=reporter)
        value = knn_objective(run_dir / "encoder", splits)
        log.info("trial %d: %s -> %s=%.4f", trial.number, suggested, OBJECTIVE, value)
        return value

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = trials - len(study.get_trials(deepcopy=False, states=finished))
    if sampler == "grid":
        grid_size = math.prod(len(p.grid_values()) for p in spc.params)
        remaining = min(remaining, grid_size - len(study.get_trials(deepcopy=False,
                                                                      states=finished)))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, catch=(NonFiniteLossError,))
    return write_outputs(study, spc, out_dir, method)


def best_config_text(trial_config: Path) -> str:
    """The best trial's config for a full run: ``trainer.max_steps`` reset to -1, so the length
    is set by ``trainer.max_epochs`` (docs/SEARCH.md) rather than the search's short budget."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(trial_config)
    if "trainer" in cfg and cfg.trainer.get("max_steps", -1) != -1:
        cfg.trainer.max_steps = -1
    return ("# best trial's config; trainer.max_steps reset to -1: set trainer.max_epochs "
            "(or trainer.max_steps) for the full run\n" + OmegaConf.to_yaml(cfg))


def write_outputs(study: optuna.Study, space: Space, out_dir: Path, method: str) -> dict:
    """``trials.csv``, ``best.yaml``, plots, and the summary dict of :func:`run_search`."""
    write_trials_csv(study, space, out_dir / "trials.csv")
    plots = plot_objective(study, space, out_dir / "plots")
    states = [t.state for t in study.get_trials(deepcopy=False)]
    count = {s: states.count(s) for s in optuna.trial.TrialState}
    complete = count[optuna.trial.TrialState.COMPLETE]
    result: dict[str, Any] = {
        "complete": complete, "pruned": count[optuna.trial.TrialState.PRUNED],
        "failed": count[optuna.trial.TrialState.FAIL], "trials_csv": str(out_dir / "trials.csv"),
        "plots": [str(p) for p in plots], "best_yaml": None, "best_value": None,
        "best_params": {}, "best_trial": None,
    }
    if complete:
        best = study.best_trial
        best_cfg = out_dir / f"trial_{best.number}" / "config.yaml"
        write_text_atomic(out_dir / "best.yaml", best_config_text(best_cfg))
        result.update(best_value=float(best.value), best_params=dict(best.params),
                      best_trial=best.number, best_yaml=str(out_dir / "best.yaml"))
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in best.params.items())
        result["summary"] = (
            f"search {method}: {complete} complete, {result['pruned']} pruned, "
            f"{result['failed']} failed trials; best {OBJECTIVE}={best.value:.4f} (trial "
            f"{best.number}: {params}); config: {out_dir / 'best.yaml'} "
            f"(backbone-ssl pretrain {method} --config {out_dir / 'best.yaml'})"
        )
    else:
        result["summary"] = (f"search {method}: no trial completed ({result['failed']} failed, "
                             f"{result['pruned']} pruned); see {out_dir / 'trials.csv'}")
    return result
