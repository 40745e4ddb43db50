"""MultiTaskNet: one shared network and a head per task; saved with its whole config.

Inputs are RGB crops aligned onto the five-point template (``facemtl.align``), pixel values 0..255, NCHW;
the network normalises them itself, so a model file is all one needs to run it.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..align import template
from ..errors import ConfigError, WeightsError
from ..serialization import load_file, save_file
from ..types import AGE_MAX, CELEBA_ATTRIBUTES, POSE_NAMES
from .heads import EmbeddingHead, IdentityHead, LandmarkHead, LinearHead, MLPHead
from .sharing import DEFAULT_TASKS, TASKS, Sharing, build_sharing

MODEL_FORMAT = "facemtl-model"
MODEL_VERSION = 1
TASK_OUTPUT = {"identity": "identity", "verification": "embedding", "landmarks": "landmarks",
               "attributes": "attributes", "pose": "pose", "age": "age"}
"""Which output of the network each task's loss reads."""
HIDDEN_HEAD_TASKS = ("attributes", "pose", "age")
"""Tasks whose head may have a hidden layer (``ModelConfig.head_hidden``)."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild a MultiTaskNet (travels inside every model file)."""

    trunk: str = "deepid2"
    width: float = 1.0
    input_size: int = 64
    feature_dim: int = 256
    embedding_dim: int = 128
    num_identities: int = 0
    identity_margin: float = 0.0
    identity_from: str = "features"
    """What the identity classifier reads: the shared "features", or the "embedding" (then identification
    and verification supervise the same L2-normalised feature, as in DeepID2)."""
    dropout: float = 0.0
    sharing: str = "hard"
    sharing_options: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] = DEFAULT_TASKS
    attribute_names: tuple[str, ...] = CELEBA_ATTRIBUTES
    pose_names: tuple[str, ...] = POSE_NAMES
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    head_hidden: dict[str, int] = field(default_factory=dict)
    """Width of a hidden layer in the heads of these tasks ("attributes", "pose", "age"; :class:`MLPHead`);
    the others stay linear."""
    verification_threshold: float | None = None
    """Cosine similarity above which two faces are called the same person (calibrated on evaluation pairs)."""

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.attribute_names = tuple(self.attribute_names)
        self.pose_names = tuple(self.pose_names)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ConfigError(f"unknown task(s) {sorted(unknown)}; tasks are {', '.join(TASKS)}")
        if self.input_size < 32:
            raise ConfigError(f"input_size must be >= 32, got {self.input_size}")
        if self.identity_from not in ("features", "embedding"):
            raise ConfigError(f"identity_from must be 'features' or 'embedding', got {self.identity_from!r}")
        bad = {task: width for task, width in self.head_hidden.items()
               if task not in HIDDEN_HEAD_TASKS or not isinstance(width, int) or width < 1}
        if bad:
            raise ConfigError(f"head_hidden: {bad} - tasks among {', '.join(HIDDEN_HEAD_TASKS)}, widths >= 1")
        if self.identity_from == "embedding" and "identity" in self.tasks and "verification" not in self.tasks:
            raise ConfigError("identity_from = 'embedding' needs the verification task (its embedding head)")

    @property
    def template(self) -> np.ndarray:
        """The five-point template at this model's input size (pixels)."""
        return template(self.input_size)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        return cls(**values)


class MultiTaskNet(nn.Module):
    """Shared network (any sharing design) plus the task heads; ``forward`` returns {output name: tensor}."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if "identity" in config.tasks and config.num_identities < 2:
            raise ConfigError("the identity task needs num_identities >= 2 (the trainer sets it from the data)")
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1) * 255.0)
        self.sharing: Sharing = build_sharing(
            config.sharing, config.sharing_options, trunk=config.trunk, width=config.width,
            input_size=config.input_size, feature_dim=config.feature_dim, dropout=config.dropout,
            tasks=config.tasks)
        dim = self.sharing.feature_dim
        group = self.sharing.group_of
        if config.identity_from == "embedding" and "identity" in group and group["identity"] != group["verification"]:
            raise ConfigError("identity_from = 'embedding': identity reads the verification embedding, so the sharing "
                              f"design must give both the same features (groups {group['identity']!r} and "
                              f"{group['verification']!r})")
        heads: dict[str, nn.Module] = {}
        if "identity" in config.tasks:
            in_dim = config.embedding_dim if config.identity_from == "embedding" else dim
            heads["identity"] = IdentityHead(in_dim, config.num_identities, config.identity_margin)
        if "verification" in config.tasks:
            heads["embedding"] = EmbeddingHead(dim, config.embedding_dim)
        if "landmarks" in config.tasks:
            heads["landmarks"] = LandmarkHead(dim, config.template)
        outputs = {"attributes": len(config.attribute_names), "pose": len(config.pose_names), "age": AGE_MAX + 1}
        for task, count in outputs.items():
            if task in config.tasks:
                hidden = config.head_hidden.get(task, 0)
                heads[task] = MLPHead(dim, hidden, count, config.dropout) if hidden else LinearHead(dim, count)
        self.heads = nn.ModuleDict(heads)
        self.head_group = {name: self.sharing.group_of[task] for task, name in TASK_OUTPUT.items()
                           if name in heads}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Crops (N,3,S,S) with pixel values 0..255 (any float or uint8 dtype) -> outputs by name."""
        return self.head_outputs(self.shared_features(x))

    def head_outputs(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The heads' outputs by name from the sharing design's feature vectors (:meth:`shared_features`)."""
        on_embedding = self.config.identity_from == "embedding"
        out = {name: head(features[self.head_group[name]]) for name, head in self.heads.items()
               if not (on_embedding and name == "identity")}
        if on_embedding and "identity" in self.heads:
            out["identity"] = self.heads["identity"](out["embedding"])
        if "embedding" in out:
            out["embedding"] = self.heads["embedding"].project(out["embedding"])
        return out

    def unprojected_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Crops (N,3,S,S) with pixel values 0..255 -> the embedding before any projection: what training, the
        teacher's term and the projection's fit see."""
        return self.heads["embedding"](self.shared_features(x)[self.head_group["embedding"]])

    def shared_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Crops (N,3,S,S) with pixel values 0..255 -> the sharing design's feature vector per head group."""
        return self.sharing((x.to(self.mean.dtype) - self.mean) / self.std)

    def save(self, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
        """Write the model (weights + config + optional metadata) as one checksummed facemtl file."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        save_file({"config": asdict(self.config), "state_dict": state, "meta": meta or {},
                   "facemtl_version": __version__}, path, MODEL_FORMAT, MODEL_VERSION)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> MultiTaskNet:
    """Rebuild a MultiTaskNet from a model file alone, in eval mode; ``model.model_id`` names its weights."""
    body = load_file(path, MODEL_FORMAT, MODEL_VERSION)
    try:
        config = ModelConfig.from_dict(body["config"])
        model = MultiTaskNet(config)
        model.load_state_dict(body["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, ConfigError) as exc:
        raise WeightsError(f"{path}: model file does not match this facemtl's networks: {exc}") from None
    model.meta = body.get("meta", {})
    model.model_id = f"{config.trunk}-{config.sharing}/{body['sha256'][:12]}"
    return model.to(device).eval()
