"""Training configuration: dataclasses, loadable from TOML (sections [model] [data] [train] [augment])."""
from __future__ import annotations

import os
import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.mixed import SOURCES
from ..data.pairs import BatchPlan
from ..data.transforms import AugmentConfig
from ..errors import ConfigError
from ..model.backbones import TRUNKS
from ..model.multitask import ModelConfig
from ..model.sharing import SHARING_DESIGNS
from .weighting import WEIGHTINGS


@dataclass
class DataConfig:
    """Which datasets to mix, and the validation hold-outs."""

    root: str = ""
    """Data folder; empty means ``$FACEMTL_DATA`` or ``../shared/data`` beside the checkout."""
    celeba: bool = True
    wild: bool = True
    mtfl: bool = True
    utkface: bool = False
    """UTKFace's training split (age, gender; no identity): stage it under the data root first."""
    teacher: str = ""
    """Learn from a teacher (``dlib_face_recognition_resnet_model_v1``): its targets, from ``facemtl teach``
    with the same config, join the run as the masked task ``distill`` on the embedding; empty = none."""
    teacher_sources: list[str] = field(default_factory=list)
    """The sources whose faces learn from the teacher ("celeba", "wild", "mtfl", "utkface"; empty = all with a
    target): a run stays the same when the cache later holds targets for more faces."""
    cache_dir: str = ""
    """Derived data (detector landmarks, crop tables); empty means ``$FACEMTL_CACHE`` or ~/.cache/facemtl."""
    padding: int = 16
    limit: int = 0
    """Use about this many images per dataset (whole identities; 0 = all): quick runs and tests."""
    mtfl_val_fraction: float = 0.05
    identity_val_per_id: int = 2
    mtfl_verification: str = "views"
    """How MTFL faces (no identity) join the verification loss: "views" (two augmented views of a face
    are a positive pair, other faces negatives), "negatives" (one view, negatives only) or "off"."""


@dataclass
class OptimConfig:
    """Optimiser, schedule and loss settings."""

    epochs: int = 30
    identities_per_batch: int = 16
    images_per_identity: int = 4
    others_per_batch: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    weighting: str = "uncertainty"
    weighting_options: dict[str, Any] = field(default_factory=dict)
    gradient: str = "sum"
    """How task gradients combine on the shared parameters: "sum" or "pcgrad"."""
    task_early_stopping: list[str] = field(default_factory=list)
    """Auxiliary tasks that TCDCN-style task-wise early stopping may switch off."""
    verification_margin: float = 1.0
    landmark_loss: str = "l2"
    difference_loss_weight: float = 0.0
    grad_clip: float = 5.0
    seed: int = 0
    init: str = ""
    """A model file to start from, or "shipped" (fine-tuning; ``facemtl.model.transfer``): its shared network
    must fit [model]; heads are copied where they still mean the same. Empty: random initialisation."""
    keep_init: bool = False
    """Learning without forgetting (Li & Hoiem, 2016): the task ``keep`` holds the landmark, attribute and pose
    outputs near those of the frozen ``init`` model on every training crop, so a fine-tune that reshapes the
    shared network (a teacher, new data) does not lose what the heads knew. Needs ``init``."""
    train_only: list[str] = field(default_factory=list)
    """Tasks whose heads alone learn (a linear probe): the shared network and every other head stay exactly as
    ``init`` had them, BatchNorm statistics and dropout included, so a new head joins a model without changing
    any answer it already gives. Empty: everything learns."""
    balanced_attributes: list[str] = field(default_factory=list)
    """Attributes whose two labels weigh the same in the loss within each training set (e.g. ["Male"]: no
    set's share of men or women moves the decision; ``facemtl.data.mixed.attribute_balance``)."""
    feature_epochs: int = 0
    """With ``train_only``: the frozen network's features of this many epochs of augmented batches are
    computed once, then every epoch trains the heads on one of them in turn (epoch e on cached epoch
    e mod n), so a head can train for many epochs at the cost of a few. 0: every step runs the network."""
    checkpoint_every: int = 100
    steps_per_epoch: int = 0
    """0 = a full pass over the identity data; otherwise a fixed number of steps (quick runs, ablations)."""
    num_workers: int = 1
    threads: int = 0
    amp: str = "auto"
    device: str = "auto"
    nan_patience: int = 10
    grad_cosine_batches: int = 2
    """Batches per epoch on which the task-gradient cosines are measured (0 = off)."""
    cross_stitch_lr: float = 0.0
    """Learning rate of cross-stitch units (0 = the main lr); Misra et al. train them faster."""

    @property
    def plan(self) -> BatchPlan:
        return BatchPlan(self.identities_per_batch, self.images_per_identity, self.others_per_batch,
                         2 if self.others_per_batch else 1)


@dataclass
class RunConfig:
    """A whole training run."""

    out_dir: str = "runs/facemtl"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def weighted_tasks(self) -> list[str]:
        """Every task the loss weighting combines: the model's, plus ``distill`` with a teacher and ``keep``
        with ``train.keep_init``."""
        return [*self.model.tasks, *(["distill"] if self.data.teacher else []),
                *(["keep"] if self.train.keep_init else [])]


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a field's annotation (int accepted for float; lists for tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) if args else True
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _build(cls: type, values: Any, section: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table of options, got {values!r}")
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise ConfigError(f"[{section}]: unknown option(s) {', '.join(sorted(unknown))}")
    for key, value in values.items():
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"[{section}] {key} = {value!r}: expected {hints[key]}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from None


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    """A RunConfig from nested dicts (TOML tables), refusing unknown keys."""
    values = dict(values)
    sections = {"model": ModelConfig, "data": DataConfig, "train": OptimConfig, "augment": AugmentConfig}
    built = {name: _build(cls, values.pop(name, {}), name) for name, cls in sections.items()}
    unknown = set(values) - {"out_dir"}
    if unknown:
        raise ConfigError(f"unknown top-level option(s) {', '.join(sorted(unknown))}")
    cfg = RunConfig(out_dir=str(values.get("out_dir", RunConfig.out_dir)), **built)
    _validate(cfg)
    return cfg


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's values, on top of the file its ``base`` names (relative to it), if any.

    Each section of the file replaces the base's options one by one; an option's value (a table such as
    ``weighting_options`` included) is replaced whole, so a file reads as "the base, but these options".
    """
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: config bases form a cycle ({' -> '.join(p.name for p in (*seen, path))})")
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a config file name, got {base!r}")
    merged = _read_toml(path.parent / base, (*seen, path))
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a TOML config file (and the ``base`` it builds on), then apply ``{"section.key": value}`` overrides."""
    values = _read_toml(Path(path))
    for dotted, value in (overrides or {}).items():
        if dotted == "out_dir":
            values["out_dir"] = value
            continue
        *parents, key = dotted.split(".")
        node = values
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {p} is not a table of options")
        node[key] = value
    return config_from_dict(values)


def _validate(cfg: RunConfig) -> None:
    TRUNKS.check(cfg.model.trunk)
    SHARING_DESIGNS.check(cfg.model.sharing)
    WEIGHTINGS.check(cfg.train.weighting)
    t = cfg.train
    checks = [
        (t.epochs >= 1, "train.epochs must be >= 1"),
        (t.lr > 0, "train.lr must be > 0"),
        (t.optimizer in ("sgd", "adamw"), "train.optimizer must be 'sgd' or 'adamw'"),
        (t.gradient in ("sum", "pcgrad"), "train.gradient must be 'sum' or 'pcgrad'"),
        (t.amp in ("auto", "on", "off"), "train.amp must be 'auto', 'on' or 'off'"),
        (t.landmark_loss in ("l2", "wing"), "train.landmark_loss must be 'l2' or 'wing'"),
        (cfg.data.mtfl_verification in ("views", "negatives", "off"),
         "data.mtfl_verification must be 'views', 'negatives' or 'off'"),
        (t.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
        (not t.keep_init or bool(t.init), "train.keep_init needs train.init (the model whose outputs to keep)"),
        (set(t.train_only) <= set(cfg.model.tasks),
         f"train.train_only: {sorted(set(t.train_only) - set(cfg.model.tasks))} not among model.tasks"),
        (not t.train_only or bool(t.init), "train.train_only needs train.init (the model whose features to keep)"),
        (not t.train_only or (t.weighting != "gradnorm" and t.gradient == "sum"),
         "train.train_only trains heads alone: gradnorm and pcgrad act on shared parameters it freezes"),
        (set(t.balanced_attributes) <= set(cfg.model.attribute_names),
         f"train.balanced_attributes: {sorted(set(t.balanced_attributes) - set(cfg.model.attribute_names))} "
         "not among model.attribute_names"),
        (t.feature_epochs >= 0, "train.feature_epochs must be >= 0"),
        (not t.feature_epochs or (bool(t.train_only) and not t.keep_init),
         "train.feature_epochs caches the frozen network's features: it needs train.train_only, and not keep_init"),
        (cfg.data.celeba or cfg.data.wild or cfg.data.mtfl or cfg.data.utkface, "data: select at least one dataset"),
        (cfg.data.teacher in ("", "dlib_face_recognition_resnet_model_v1"),
         "data.teacher must be '' or 'dlib_face_recognition_resnet_model_v1'"),
        (not cfg.data.teacher or ("verification" in cfg.model.tasks and cfg.model.embedding_dim == 128),
         "data.teacher needs the verification task's embedding with model.embedding_dim = 128 (the teacher's)"),
        (set(cfg.data.teacher_sources) <= set(SOURCES),
         f"data.teacher_sources: {sorted(set(cfg.data.teacher_sources) - set(SOURCES))} not among {', '.join(SOURCES)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
