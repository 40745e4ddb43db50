"""How tasks share the network: a sharing design maps an input batch to one feature vector per task group.

Every design builds the same heads downstream and returns the same outputs, so the trainer, the
evaluators and ``FaceAnalyzer`` never depend on the choice. ``hard`` is one trunk and one neck for every
task (the DeepID2 / TCDCN arrangement).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .backbones import Trunk, create_trunk
from .heads import Neck

TASKS: tuple[str, ...] = ("identity", "verification", "landmarks", "attributes", "pose")

_DESIGNS: dict[str, Callable[..., "Sharing"]] = {}


def register_sharing(name: str) -> Callable[[Callable[..., "Sharing"]], Callable[..., "Sharing"]]:
    """Decorator adding a sharing design to the registry under ``name``."""
    def add(cls: Callable[..., "Sharing"]) -> Callable[..., "Sharing"]:
        _DESIGNS[name] = cls
        return cls
    return add


def list_sharing() -> list[str]:
    return sorted(_DESIGNS)


class Sharing(nn.Module):
    """Base of the sharing designs: ``forward(x)`` -> {group: (N, feature_dim)}; ``group_of[task]``."""

    group_of: dict[str, str]
    feature_dim: int

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's loss reaches (PCGrad and the gradient-cosine diagnostic act on them)."""
        raise NotImplementedError

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer's weights (GradNorm measures task gradient norms there)."""
        raise NotImplementedError

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Design-specific regularisers from the last forward pass (e.g. shared-private difference loss)."""
        return {}


def neck_input_features(trunk: Trunk, input_size: int, blocks: Sequence[int]) -> int:
    """Flattened size of the chosen blocks' outputs for this input size."""
    shapes = trunk.block_shapes(input_size)
    return sum(c * h * w for c, h, w in (shapes[b] for b in blocks))


@register_sharing("hard")
class HardSharing(Sharing):
    """One trunk and one neck shared by every task; the neck reads the deepest ``neck_blocks`` blocks.

    Reading the last two blocks is DeepID2's multi-scale feature layer.
    """

    def __init__(self, trunk: str, width: float, input_size: int, feature_dim: int, dropout: float,
                 tasks: Sequence[str], neck_blocks: int = 2) -> None:
        super().__init__()
        self.trunk = create_trunk(trunk, width)
        n_blocks = len(self.trunk.blocks)
        if not 1 <= neck_blocks <= n_blocks:
            raise ConfigError(f"neck_blocks must be in 1..{n_blocks}, got {neck_blocks}")
        self.read = list(range(n_blocks - neck_blocks, n_blocks))
        self.neck = Neck(neck_input_features(self.trunk, input_size, self.read), feature_dim, dropout)
        self.feature_dim = feature_dim
        self.group_of = {t: "shared" for t in tasks}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.trunk(x)
        return {"shared": self.neck([maps[b] for b in self.read])}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [self.neck.fc.weight]


def build_sharing(name: str, options: dict[str, Any], **common: Any) -> Sharing:
    """Instantiate a registered sharing design with the common arguments plus its own options."""
    if name not in _DESIGNS:
        raise ConfigError(f"unknown sharing design {name!r}; available: {', '.join(list_sharing())}")
    try:
        return _DESIGNS[name](**common, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for sharing design {name!r}: {exc}") from None
