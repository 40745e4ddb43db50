"""Start a network from another model file's weights (fine-tuning): what still means the same is copied,
the rest starts fresh."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .._resources import DEFAULT_MODEL, weights_path
from ..errors import ConfigError
from .multitask import MultiTaskNet, load_model

FIXED_AFTER_TRAINING = ("heads.embedding.center", "heads.embedding.projection")
"""The embedding's projection was fit on the old network's embeddings: a network being trained starts without
one (``facemtl ship`` fits a new one)."""
INPUT_NORMALISATION = ("mean", "std")
SHIPPED = "shipped"
"""``init_from``'s name for the multi-task model installed with facemtl."""


@dataclass(frozen=True)
class Transfer:
    """What ``init_from`` did: the source model's id, and the tensors copied and left fresh."""

    source: str
    copied: tuple[str, ...]
    fresh: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "copied": len(self.copied), "fresh": list(self.fresh)}


def _meaning_changed(model: MultiTaskNet, source: MultiTaskNet, identity_names: Sequence[str] | None) -> set[str]:
    """Heads whose outputs name other things in the two models: same shapes would copy the wrong classes."""
    changed = set()
    if identity_names is None or json.loads(source.meta.get("identity_names", "null")) != list(identity_names):
        changed.add("heads.identity.")
    if source.config.attribute_names != model.config.attribute_names:
        changed.add("heads.attributes.")
    if source.config.pose_names != model.config.pose_names:
        changed.add("heads.pose.")
    return changed


SPLIT_NECK, SHARED_NECK = "sharing.split_neck.", "sharing.neck."


def _with_split_neck(theirs: dict[str, torch.Tensor], mine: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A source without the ``hard`` design's split neck gives it a copy of its shared neck: the split tasks
    then start from exactly the features they read before."""
    twin = {k: SHARED_NECK + k.removeprefix(SPLIT_NECK) for k in mine if k.startswith(SPLIT_NECK) and k not in theirs}
    return {**theirs, **{k: theirs[shared].clone() for k, shared in twin.items() if shared in theirs}}


def _misfit(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> list[str]:
    """Tensors of the shared network, and the input normalisation, that the source lacks or holds otherwise."""
    out = []
    for k, v in mine.items():
        if k.startswith("sharing.") or k in INPUT_NORMALISATION:
            other = theirs.get(k)
            if other is None or other.shape != v.shape or (k in INPUT_NORMALISATION and not other.equal(v)):
                out.append(k)
    return out


def init_from(model: MultiTaskNet, path: str | os.PathLike[str],
              identity_names: Sequence[str] | None = None) -> Transfer:
    """Copy into ``model`` every tensor of the model file at ``path`` (``"shipped"``: the installed model) that
    has its name and shape and still means the same (an identity classifier only over the same people,
    ``identity_names``; attribute and pose heads only over the same names); the projection is never copied.

    The shared network must fit whole: a file of another trunk, width or input size raises ``ConfigError``
    rather than leaving the run to train from scratch unnoticed. A split neck the file lacks starts as a copy of
    its shared neck.
    """
    if str(path) == SHIPPED:
        path = weights_path(DEFAULT_MODEL)
    if not Path(path).is_file():
        raise ConfigError(f"train.init: no model file at {path}")
    source = load_model(path)
    mine = model.state_dict()
    theirs = _with_split_neck(source.state_dict(), mine)
    misfit = _misfit(mine, theirs)
    if misfit:
        c = source.config
        raise ConfigError(f"train.init: {path} (trunk {c.trunk}, width {c.width}, input_size {c.input_size}, "
                          f"feature_dim {c.feature_dim}, sharing {c.sharing}) does not fit the config's [model]: "
                          f"{len(misfit)} tensor(s) differ, the first {misfit[0]}")
    changed = _meaning_changed(model, source, identity_names)
    take = {k: v for k, v in theirs.items()
            if k in mine and v.shape == mine[k].shape and k not in FIXED_AFTER_TRAINING
            and not any(k.startswith(prefix) for prefix in changed)}
    model.load_state_dict(take, strict=False)
    fresh = tuple(k for k in mine if k not in take and not k.endswith("num_batches_tracked"))
    return Transfer(source.model_id, tuple(take), fresh)
