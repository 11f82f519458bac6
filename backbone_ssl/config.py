"""Configs: dataclass schema <- ``configs/<method>.yaml`` <- ``key=value`` overrides (OmegaConf).

Every method shares the sections ``data``, ``model``, ``optim``, ``trainer`` and the key ``seed``;
each method adds its own section named after it (``dino:``, ``byol:``, ...). The schema is the
dataclass, so an unknown key or a value of the wrong type is caught at load time and reported as
one :class:`~backbone_ssl.errors.UserError` line naming the key (and the closest valid key).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from backbone_ssl.errors import UserError

#: Folder holding the shipped YAML configs (``configs/`` at the repository root).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class DataConfig:
    """Where images come from and how they are batched."""

    path: Optional[str] = None  # image folder / iCartoonFace root / `golden prepare` output
    batch_size: int = 64  # per device; the effective batch is batch_size x devices x nodes
    image_size: int = 64  # input size of the encoder (global crops for DINO)
    num_workers: int = 2  # DataLoader worker processes per device
    val_train: Optional[str] = None  # labelled identity folder: gallery of the online kNN monitor
    val_test: Optional[str] = None  # labelled identity folder: queries of the online kNN monitor
    val_every_n_epochs: int = 1  # run the online kNN monitor every N epochs
    max_images: Optional[int] = None  # use only the first N images (quick experiments)
    cache: bool = False  # decode each image once into a memory-mapped uint8 file (data/cache.py)
    batch_augment: bool = False  # render views per batch with tensor ops (data/batch_views.py)
    # SSL views only: probability that a view keeps a centred disk and takes the rest from
    # another image of the batch (data/context_swap.py), and the disk radius range (half-sides)
    context_swap: float = 0.0
    context_swap_radius: list[float] = field(default_factory=lambda: [0.55, 0.8])
    # SSL views on a `golden prepare` output: probability that view 1 comes from another face of
    # the same book at most `sequence_window` panels away, kept when the two are mutual nearest
    # neighbours in the current embedding (`sequence_mutual_nn`; refreshed every epoch) -
    # data/sequence_positives.py
    sequence_positives: float = 0.0
    sequence_window: int = 2
    sequence_mutual_nn: bool = True


@dataclass
class ModelConfig:
    """The backbone: any timm architecture, created with ``pretrained=False``."""

    arch: str = "resnet18"
    weights: Optional[str] = None  # optional local .safetensors file / encoder folder to start from


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warm-up, then cosine decay; per step)."""

    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3  # for the per-device batch above; scaled by `lr_scaling`
    lr_scaling: str = "none"  # none | linear | sqrt : scale lr by effective_batch / batch_size
    weight_decay: float = 0.04
    momentum: float = 0.9  # sgd only
    warmup_fraction: float = 0.05  # fraction of all steps spent in linear warm-up
    min_lr_fraction: float = 0.01  # final lr = lr x min_lr_fraction


@dataclass
class TrainerConfig:
    """Passed to ``lightning.Trainer`` (the names are Lightning's)."""

    max_epochs: int = 20
    max_steps: int = -1  # -1 = bounded by max_epochs
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = "auto"  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_find_unused_parameters_true | ...
    precision: str = "auto"  # auto = bf16-mixed on GPU, 32-true on CPU; or any Lightning value
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 100  # last.ckpt is rewritten (atomically) this often
    gradient_clip_val: Optional[float] = None
    deterministic: bool = False
    enable_progress_bar: bool = True
    limit_train_batches: Optional[float] = None
    channels_last: bool = False  # NHWC model + batches (faster convs on GPU and oneDNN CPUs)
    sync_batchnorm: bool = False  # DDP: BatchNorm statistics over all processes (Lightning's)
    stop_on_collapse: bool = False  # end the run when the collapse monitor fires (monitors.py)
    logger: str = "csv"  # csv: RUN/metrics.csv + plots/ | tensorboard: RUN/tensorboard/ only | both


@dataclass
class ExportConfig:
    """What ``RUN/encoder/`` (and ``export CKPT``) holds and the online kNN monitor measures."""

    network: str = "student"  # teacher | student: the methods' own defaults say which they have


@dataclass
class RunConfig:
    """Sections shared by every method. Method configs subclass this and add their section."""

    method: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> None:
        """One-line errors for shared keys with a fixed set of values (method configs that
        override this call it first)."""
        check_choice(self.optim.name, ("adamw", "sgd"), "optim.name")
        check_choice(self.optim.lr_scaling, ("none", "linear", "sqrt"), "optim.lr_scaling")
        validate_shared(self)


@dataclass
class SSLSection:
    """Settings every self-supervised method shares (``ssl.*``)."""

    # KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search";
    # used by DINOv2, Oquab et al. 2023, Sec. 4, weight 0.1 there): loss += weight x KoLeo of the
    # L2-normalised backbone features of the first view [B,F]; it spreads the batch on the
    # sphere, which the cosine kNN evaluation reads. 0 = off.
    koleo_weight: float = 0.0


@dataclass
class SSLConfig(RunConfig):
    """The config of a self-supervised method on augmented views (methods.base.SSLMethod)."""

    ssl: SSLSection = field(default_factory=SSLSection)

    def validate(self) -> None:
        super().validate()
        check_range(self.ssl.koleo_weight, "ssl.koleo_weight", 0)


C = TypeVar("C")


def flat_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """All dotted leaf and section keys of ``cfg`` (``data``, ``data.batch_size``, ...)."""
    keys: list[str] = []
    for k in cfg.keys():
        full = f"{prefix}{k}"
        keys.append(full)
        node = cfg._get_node(k)
        if isinstance(node, DictConfig):
            keys.extend(flat_keys(node, prefix=f"{full}."))
    return keys


def closest_key(key: str, valid: Sequence[str]) -> str | None:
    """The valid dotted key closest to ``key`` (or None when nothing is close)."""
    hits = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not hits:
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in valid}
        leaf_hits = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
        hits = [by_leaf[leaf_hits[0]]] if leaf_hits else []
    return hits[0] if hits else None


def _full_key(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or ""
    return str(key)


def _merge(schema: DictConfig, other: DictConfig | dict, source: str) -> DictConfig:
    """Merge ``other`` into ``schema``, turning OmegaConf errors into one-line UserErrors."""
    try:
        return OmegaConf.merge(schema, other)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = _full_key(exc)
        hint = closest_key(key, flat_keys(schema))
        near = f"; did you mean '{hint}'?" if hint else ""
        raise UserError(f"unknown config key '{key}' in {source}{near}") from None
    except OmegaConfBaseException as exc:
        key = _full_key(exc)
        msg = str(exc).splitlines()[0]
        raise UserError(f"bad value for config key '{key}' in {source}: {msg}") from None


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    """``["optim.lr=0.1", "trainer.devices=2"]`` -> DictConfig; malformed items are UserErrors."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise UserError(
                f"bad override {item!r}: expected key=value, e.g. trainer.max_steps=100"
            )
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:  # OmegaConf and yaml errors (e.g. control characters in a value)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"bad override list {list(overrides)}: {first}") from None


def default_config_file(name: str) -> Path | None:
    """``configs/<name>.yaml`` when it ships with this checkout, else None."""
    path = CONFIG_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def load_config(
    schema_cls: type[C],
    name: str,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    **set_keys: Any,
) -> C:
    """Build a validated config object.

    Order (later wins): dataclass defaults, ``configs/<name>.yaml`` (or ``config_file``),
    ``set_keys`` given as dotted names with ``__`` (e.g. ``data__path="X"``), then ``overrides``.
    """
    cfg: DictConfig = OmegaConf.structured(schema_cls)
    path = Path(config_file) if config_file else default_config_file(name)
    if config_file and not Path(config_file).is_file():
        raise UserError(f"config file not found: {config_file}")
    if path is not None:
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml parse errors come in many types
            first = str(exc).splitlines()[0]
            raise UserError(f"cannot parse config file {path}: {first}") from None
        if not isinstance(loaded, DictConfig):
            raise UserError(f"config file {path} must be a mapping of sections (data:, model:, "
                            f"optim:, trainer:, ...), not a list")
        cfg = _merge(cfg, loaded, str(path))
    for dotted, value in set_keys.items():
        if value is not None:
            nested: dict = {}
            node = nested
            *parents, leaf = dotted.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
            cfg = _merge(cfg, nested, "command line")
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), "overrides")
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:  # e.g. an interpolation ${...} naming no key
        key = _full_key(exc)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"bad value for config key '{key}': {first}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict:
    """A plain-python (JSON/YAML-safe) copy of a config object."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (what ``RUN/config.yaml`` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def check_choice(value: str, allowed: Sequence[str], key: str) -> None:
    """Raise a UserError naming ``key`` and the allowed values unless ``value in allowed``."""
    if value not in allowed:
        raise UserError(f"config key '{key}' must be one of {', '.join(allowed)}, got '{value}'")


def check_range(value: Any, key: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False,
                allow: Sequence[Any] = ()) -> None:
    """Raise a UserError naming ``key`` unless ``low <= value <= high`` (or open ends), or
    ``value in allow`` (e.g. ``None`` or ``-1`` meaning "unbounded")."""
    if value in allow:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        rule = " and ".join(x for x in (lo, hi) if x)
        extra = f" (or {', '.join(repr(a) for a in allow)})" if allow else ""
        raise UserError(f"config key '{key}' must be {rule}{extra}, got {value!r}")


#: Lightning's precision names (``trainer.precision``) plus ``auto``.
PRECISIONS = ("auto", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true",
              "bf16-true", "64-true", "64", "transformer-engine", "transformer-engine-float16")
#: Lightning's accelerator names (``trainer.accelerator``).
#: ``trainer.logger``: RUN/metrics.csv, RUN/tensorboard/ event files, or both (same metric names)
LOGGERS = ("csv", "tensorboard", "both")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def _visible_devices(accelerator: str) -> int | None:
    """How many devices of ``accelerator`` this machine has (None: not checked)."""
    import torch

    if accelerator in ("gpu", "cuda"):
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator == "mps":
        return 1 if torch.backends.mps.is_available() else 0
    return None


def check_trainer_devices(accelerator: str, devices: Any) -> None:
    """``trainer.accelerator`` / ``trainer.devices``: valid names, and the devices exist here."""
    check_choice(str(accelerator), ACCELERATORS, "trainer.accelerator")
    if isinstance(devices, str) and devices != "auto":
        try:
            devices = int(devices)
        except ValueError:
            raise UserError(f"config key 'trainer.devices' must be an int, a list of device ids "
                            f"or 'auto', got '{devices}'") from None
    if isinstance(devices, int) and not isinstance(devices, bool):
        check_range(devices, "trainer.devices", 1, allow=(-1,))
    have = _visible_devices(str(accelerator))
    if have is None:
        return
    if have == 0:
        raise UserError(f"config key 'trainer.accelerator={accelerator}': no {accelerator} "
                        "device on this machine (use trainer.accelerator=cpu or auto)")
    wanted = len(devices) if isinstance(devices, list) else devices
    if isinstance(wanted, int) and wanted > have:
        raise UserError(f"config key 'trainer.devices={devices}': this machine has only {have} "
                        f"{accelerator} device(s)")


def resolve_precision(cfg: Any) -> str:
    """``cfg.trainer.precision`` for Lightning (``cfg``: any config with a ``trainer`` section
    holding ``precision`` and ``accelerator``): ``auto`` -> ``bf16-mixed`` on a GPU, ``32-true``
    on CPU (bf16 autocast is slow on CPU); any other value as given."""
    import torch

    t = cfg.trainer
    if t.precision != "auto":
        return t.precision
    acc = t.accelerator
    on_gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


#: data keys only the view-based methods (methods/base.py SSLMethod) read
VIEW_KEYS = ("cache", "batch_augment", "context_swap", "sequence_positives")


def refuse_view_keys(cfg: RunConfig) -> None:
    """UserError when a method that reads its images directly (identity, person, inpaint) is
    given a view-pipeline key (:data:`VIEW_KEYS`) it would otherwise silently ignore."""
    on = [k for k in VIEW_KEYS if getattr(cfg.data, k)]
    if on:
        raise UserError(f"config key 'data.{on[0]}' is for the view-based methods (dino, byol, "
                        f"simclr, ...); {cfg.method} reads its images directly: leave it at its "
                        "default")


def validate_shared(cfg: RunConfig) -> None:
    """Ranges and choices of the shared sections, checked at load (before any data is read)."""
    d, o, t = cfg.data, cfg.optim, cfg.trainer
    check_range(d.batch_size, "data.batch_size", 1)
    check_range(d.image_size, "data.image_size", 8)
    check_range(d.num_workers, "data.num_workers", 0)
    check_range(d.val_every_n_epochs, "data.val_every_n_epochs", 1)
    check_range(d.max_images, "data.max_images", 1, allow=(None,))
    check_range(d.context_swap, "data.context_swap", 0, 1)
    check_range(d.sequence_positives, "data.sequence_positives", 0, 1)
    check_range(d.sequence_window, "data.sequence_window", 1)
    if d.sequence_positives > 0 and (d.cache or d.batch_augment):
        raise UserError("data.sequence_positives works on the plain data path: set "
                        "data.cache=false and data.batch_augment=false")
    if len(d.context_swap_radius) != 2 or not 0 < d.context_swap_radius[0] <= \
            d.context_swap_radius[1] <= 1.5:
        raise UserError("config key 'data.context_swap_radius' takes two numbers "
                        f"0 < min <= max <= 1.5 (half-sides), got {list(d.context_swap_radius)}")
    check_range(o.lr, "optim.lr", 0)  # 0 is allowed: a frozen-weights check
    check_range(o.weight_decay, "optim.weight_decay", 0)
    check_range(o.momentum, "optim.momentum", 0, 1, high_open=True)
    check_range(o.warmup_fraction, "optim.warmup_fraction", 0, 1, high_open=True)
    check_range(o.min_lr_fraction, "optim.min_lr_fraction", 0, 1)
    check_range(t.max_epochs, "trainer.max_epochs", 1, allow=(-1,))
    # max_steps=0 would export an untrained encoder labelled with the method
    check_range(t.max_steps, "trainer.max_steps", 1, allow=(-1,))
    check_range(t.num_nodes, "trainer.num_nodes", 1)
    check_range(t.log_every_n_steps, "trainer.log_every_n_steps", 1)
    check_range(t.checkpoint_every_n_steps, "trainer.checkpoint_every_n_steps", 1)
    check_range(t.gradient_clip_val, "trainer.gradient_clip_val", 0, allow=(None,))
    check_range(t.limit_train_batches, "trainer.limit_train_batches", 0, low_open=True,
                allow=(None,))
    check_choice(str(t.precision), PRECISIONS, "trainer.precision")
    check_choice(str(t.logger), LOGGERS, "trainer.logger")
    check_trainer_devices(str(t.accelerator), t.devices)


def check_positive(value: float, key: str) -> None:
    """Raise a UserError naming ``key`` unless ``value > 0``."""
    if value <= 0:
        raise UserError(f"config key '{key}' must be > 0, got {value}")
