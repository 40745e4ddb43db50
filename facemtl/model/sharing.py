"""How tasks share the network: a sharing design maps an input batch to one feature vector per task group.

Every design builds the same heads downstream and returns the same outputs, so the trainer, the
evaluators and ``FaceAnalyzer`` never depend on the choice. The designs:

- ``hard``: one trunk and one neck for every task (the DeepID2 / TCDCN arrangement), optionally a
  second neck on the same maps for some tasks (``split_neck``);
- ``hierarchical``: one trunk, each task reads the block suited to it (geometry low, identity high);
- ``cross_stitch``: one trunk copy per task group, mixed after every block (Misra et al., CVPR 2016);
- ``shared_private``: a shared trunk plus a small private trunk per task group, kept apart by a
  difference loss (Bousmalis et al., 2016).

Per-sample computations never mix samples except through BatchNorm's batch statistics in train mode, so
in eval mode a sample whose label is masked out sends no gradient anywhere.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InvalidInputError
from ..registry import Registry
from .backbones import Trunk, create_trunk
from .heads import Neck

TASKS: tuple[str, ...] = ("identity", "verification", "landmarks", "attributes", "pose", "age")
DEFAULT_TASKS: tuple[str, ...] = TASKS[:5]
"""The tasks a model config has unless it lists its own (age needs UTKFace's labels)."""

SHARING_DESIGNS: Registry[Callable[..., "Sharing"]] = Registry("sharing design")


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

    def special_parameters(self) -> list[nn.Parameter]:
        """Parameters trained with their own learning rate (``train.cross_stitch_lr``); none by default."""
        return []


def neck_input_features(trunk: Trunk, input_size: int, blocks: Sequence[int]) -> int:
    """Flattened size of the chosen blocks' outputs for this input size."""
    shapes = trunk.block_shapes(input_size)
    return sum(c * h * w for c, h, w in (shapes[b] for b in blocks))


@SHARING_DESIGNS.register("hard")
class HardSharing(Sharing):
    """One trunk and one neck shared by every task; the neck reads the deepest ``neck_blocks`` blocks.

    Reading the last two blocks is DeepID2's multi-scale feature layer. ``split_neck`` names tasks that read a
    second neck of their own on the same maps (group ``split``): the trunk stays shared, but those tasks no
    longer compete with the others for the neck's few features. A model file without that neck starts it as
    a copy of the shared one (``facemtl.model.transfer``), so the split network begins with the same outputs.
    """

    def __init__(self, trunk: str, width: float, input_size: int, feature_dim: int, dropout: float,
                 tasks: Sequence[str], neck_blocks: int = 2, split_neck: Sequence[str] = ()) -> None:
        super().__init__()
        self.trunk = create_trunk(trunk, width)
        n_blocks = len(self.trunk.blocks)
        if not 1 <= neck_blocks <= n_blocks:
            raise ConfigError(f"neck_blocks must be in 1..{n_blocks}, got {neck_blocks}")
        self.read = list(range(n_blocks - neck_blocks, n_blocks))
        in_features = neck_input_features(self.trunk, input_size, self.read)
        self.neck = Neck(in_features, feature_dim, dropout)
        self.feature_dim = feature_dim
        split = _split_tasks(split_neck, tasks)
        self.split_neck = Neck(in_features, feature_dim, dropout) if split else None
        self.group_of = {t: "split" if t in split else "shared" for t in tasks}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.trunk(x)
        read = [maps[b] for b in self.read]
        out = {"shared": self.neck(read)}
        if self.split_neck is not None:
            out["split"] = self.split_neck(read)
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        if self.split_neck is None:
            return [p for p in self.parameters() if p.requires_grad]
        return [p for p in self.trunk.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        if self.split_neck is None:
            return [self.neck.fc.weight]
        return [_last_conv_weight(self.trunk.blocks[-1])]


def _split_tasks(split_neck: Sequence[str], tasks: Sequence[str]) -> set[str]:
    """The model's tasks that read the split neck; refuses unknown names and a split that leaves none shared."""
    if isinstance(split_neck, str) or not isinstance(split_neck, Sequence):
        raise ConfigError(f"split_neck must be a list of task names, got {split_neck!r}")
    unknown = set(split_neck) - set(TASKS)
    if unknown:
        raise ConfigError(f"split_neck: unknown task(s) {sorted(unknown)}; tasks are {', '.join(TASKS)}")
    split = set(split_neck) & set(tasks)
    if split and split == set(tasks):
        raise ConfigError("split_neck names every task: nothing would read the shared neck")
    return split


def _last_conv_weight(module: nn.Module) -> nn.Parameter:
    """Weight of the last ``nn.Conv2d`` registered in ``module`` (GradNorm's "last shared layer")."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"no convolution in {type(module).__name__}")
    return convs[-1].weight


def _neck_read(n_blocks: int, neck_blocks: int) -> list[int]:
    """Indices of the deepest ``neck_blocks`` blocks, checked against the trunk's depth."""
    if isinstance(neck_blocks, bool) or not isinstance(neck_blocks, int) or not 1 <= neck_blocks <= n_blocks:
        raise ConfigError(f"neck_blocks must be an integer in 1..{n_blocks}, got {neck_blocks!r}")
    return list(range(n_blocks - neck_blocks, n_blocks))


def _require_tasks(tasks: Sequence[str], design: str) -> None:
    if not tasks:
        raise ConfigError(f"sharing design {design!r} needs at least one task")


DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "geometry": ("landmarks", "pose"),
    "identity": ("identity", "verification", "attributes", "age"),
}
"""Task groups of ``cross_stitch`` and ``shared_private``: where a face is vs who it is."""


def task_groups(groups: Mapping[str, Sequence[str]] | None, tasks: Sequence[str]) -> dict[str, list[str]]:
    """Resolve the ``groups`` option against the model's tasks.

    Only tasks in ``tasks`` count; a task in no group joins the last group; a group left empty is dropped.
    Group names must be Python identifiers (they name sub-modules); a task may be in one group only.
    """
    groups = DEFAULT_GROUPS if groups is None else groups
    if not isinstance(groups, Mapping) or not groups:
        raise ConfigError(f"groups must be a non-empty mapping of group name -> task list, got {groups!r}")
    placed: dict[str, str] = {}
    resolved: dict[str, list[str]] = {}
    for name, members in groups.items():
        if not isinstance(name, str) or not name.isidentifier() or hasattr(nn.ModuleDict, name):
            raise ConfigError(f"group name {name!r} must be a Python identifier (and not a ModuleDict method)")
        if isinstance(members, str) or not isinstance(members, Sequence):
            raise ConfigError(f"group {name!r}: expected a list of task names, got {members!r}")
        for task in members:
            if task not in TASKS:
                raise ConfigError(f"group {name!r}: unknown task {task!r}; tasks are {', '.join(TASKS)}")
            if task in placed:
                raise ConfigError(f"task {task!r} is in two groups ({placed[task]!r} and {name!r})")
            placed[task] = name
        resolved[name] = [t for t in members if t in tasks]
    resolved[name] += [t for t in tasks if t not in placed]
    return {g: members for g, members in resolved.items() if members}


@SHARING_DESIGNS.register("hierarchical")
class HierarchicalSharing(Sharing):
    """One trunk; each task reads one block through a neck (tasks reading the same block share it).

    ``read_blocks`` maps task -> block index (negative counts from the end) and overrides the default
    ``landmarks, pose -> n-3; attributes, age -> n-2; identity, verification -> n-1`` for ``n`` blocks, so
    geometry reads finer, less invariant maps than identity. Groups are named ``block<i>``. Blocks deeper
    than any task reads are not built (they would get no gradient). Shared parameters: the blocks up to the
    lowest block read, which every task's gradient passes through.
    """

    def __init__(self, trunk: str, width: float, input_size: int, feature_dim: int, dropout: float,
                 tasks: Sequence[str], read_blocks: Mapping[str, int] | None = None) -> None:
        super().__init__()
        _require_tasks(tasks, "hierarchical")
        self.trunk = create_trunk(trunk, width)
        n = len(self.trunk.blocks)
        chosen = {t: max(0, b) for t, b in {"landmarks": n - 3, "pose": n - 3, "attributes": n - 2, "age": n - 2,
                                               "identity": n - 1, "verification": n - 1}.items()}
        if not isinstance(read_blocks or {}, Mapping):
            raise ConfigError(f"read_blocks must map task -> block index, got {read_blocks!r}")
        for task, block in (read_blocks or {}).items():
            if task not in TASKS:
                raise ConfigError(f"read_blocks: unknown task {task!r}; tasks are {', '.join(TASKS)}")
            if isinstance(block, bool) or not isinstance(block, int) or not -n <= block < n:
                raise ConfigError(f"read_blocks[{task!r}] must be a block index in {-n}..{n - 1}, got {block!r}")
            chosen[task] = block % n
        self.read_block = {t: chosen[t] for t in tasks}
        del self.trunk.blocks[max(self.read_block.values()) + 1:]
        self.blocks_read = sorted(set(self.read_block.values()))
        self.necks = nn.ModuleDict({
            f"block{b}": Neck(neck_input_features(self.trunk, input_size, [b]), feature_dim, dropout)
            for b in self.blocks_read})
        self.feature_dim = feature_dim
        self.group_of = {t: f"block{b}" for t, b in self.read_block.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.trunk(x)
        return {f"block{b}": self.necks[f"block{b}"]([maps[b]]) for b in self.blocks_read}

    def _lowest(self) -> int:
        return self.blocks_read[0]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for block in self.trunk.blocks[:self._lowest() + 1] for p in block.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [_last_conv_weight(self.trunk.blocks[self._lowest()])]


class CrossStitchUnit(nn.Module):
    """Channel-wise cross-stitch: ``out_i[:, c] = sum_j alpha[i, j, c] * in_j[:, c]`` over K columns."""

    def __init__(self, columns: int, channels: int, self_weight: float = 0.9) -> None:
        super().__init__()
        diag, other = (self_weight, (1.0 - self_weight) / (columns - 1)) if columns > 1 else (1.0, 0.0)
        alpha = torch.full((columns, columns, channels), other)
        idx = torch.arange(columns)
        alpha[idx, idx] = diag
        self.alpha = nn.Parameter(alpha)

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # Elementwise products and sums, not a matmul: an identity alpha then returns its inputs bit for bit
        # (no TF32 or blocked-reduction rounding), which the "separate columns" test relies on.
        k = len(xs)
        w = self.alpha.to(xs[0].dtype).view(k, k, 1, -1, 1, 1)
        outs = []
        for i in range(k):
            out = w[i, 0] * xs[0]
            for j in range(1, k):
                out = out + w[i, j] * xs[j]
            outs.append(out)
        return outs

    @torch.no_grad()
    def fix_identity(self) -> None:
        """Set alpha to the identity mix (columns kept apart) and stop learning it."""
        k = self.alpha.shape[0]
        self.alpha.copy_(torch.eye(k, dtype=self.alpha.dtype, device=self.alpha.device)
                         .unsqueeze(-1).expand_as(self.alpha))
        self.alpha.requires_grad_(False)


@SHARING_DESIGNS.register("cross_stitch")
class CrossStitchSharing(Sharing):
    """One full trunk ("column") per task group; after every block but the last a cross-stitch unit mixes
    the columns' activations channel by channel (Misra et al., CVPR 2016).

    ``groups`` (default :data:`DEFAULT_GROUPS`; see :func:`task_groups`) picks the columns. The units start
    near the identity mix: ``self_weight`` on the diagonal and ``(1 - self_weight) / (K - 1)`` elsewhere.
    Each column's neck reads its last ``neck_blocks`` (mixed) block outputs. ``special_parameters()`` are the
    units' alphas (the trainer gives them ``train.cross_stitch_lr``).

    No column parameter is shared: a column gets other groups' gradients only through the units. So the
    shared parameters are the alphas, and PCGrad / the gradient-cosine diagnostic act on the units alone;
    GradNorm measures on the last unit's alpha. :meth:`fix_identity` turns the units into the identity mix
    (separate columns, nothing shared).
    """

    def __init__(self, trunk: str, width: float, input_size: int, feature_dim: int, dropout: float,
                 tasks: Sequence[str], groups: Mapping[str, Sequence[str]] | None = None,
                 self_weight: float = 0.9, neck_blocks: int = 2) -> None:
        super().__init__()
        _require_tasks(tasks, "cross_stitch")
        if not 0.0 <= self_weight <= 1.0:
            raise ConfigError(f"self_weight must be in [0, 1], got {self_weight}")
        members = task_groups(groups, tasks)
        self.columns = nn.ModuleDict({g: create_trunk(trunk, width) for g in members})
        first = next(iter(self.columns.values()))
        n_blocks = len(first.blocks)
        self.read = _neck_read(n_blocks, neck_blocks)
        shapes = first.block_shapes(input_size)
        self.units = nn.ModuleList([CrossStitchUnit(len(members), shapes[b][0], self_weight)
                                    for b in range(n_blocks - 1)])
        in_features = neck_input_features(first, input_size, self.read)
        self.necks = nn.ModuleDict({g: Neck(in_features, feature_dim, dropout) for g in members})
        self.feature_dim = feature_dim
        self.group_of = {t: g for g, ts in members.items() for t in ts}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        columns = list(self.columns.values())
        xs = [x] * len(columns)
        maps: list[list[torch.Tensor]] = []
        for b in range(len(columns[0].blocks)):
            xs = [col.blocks[b](xi) for col, xi in zip(columns, xs)]
            if b < len(self.units):
                xs = self.units[b](xs)
            maps.append(xs)
        return {g: self.necks[g]([maps[b][i] for b in self.read]) for i, g in enumerate(self.columns)}

    def fix_identity(self) -> None:
        """Fix every unit to the identity mix: the network then computes the separate columns exactly."""
        for unit in self.units:
            unit.fix_identity()

    def special_parameters(self) -> list[nn.Parameter]:
        return [unit.alpha for unit in self.units]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [unit.alpha for unit in self.units if unit.alpha.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [unit.alpha for unit in self.units[-1:] if unit.alpha.requires_grad]


def difference_loss(shared: torch.Tensor, private: torch.Tensor) -> torch.Tensor:
    """Soft orthogonality ("difference") loss between shared and private features (Bousmalis et al., 2016).

    Each row (sample) of ``shared (N, D1)`` and ``private (N, D2)`` is L2-normalised (no centring; an
    all-zero row stays zero), then ``loss = ||S_hat^T P_hat||_F^2 / N^2``. ``S_hat^T P_hat`` is the
    ``(D1, D2)`` batch cross-correlation of the features, so the loss is zero exactly when every shared
    feature column is orthogonal, over the batch, to every private feature column.
    """
    if shared.dim() != 2 or private.dim() != 2 or shared.shape[0] != private.shape[0]:
        raise InvalidInputError(
            f"shared (N,D1) and private (N,D2) expected, got {tuple(shared.shape)}, {tuple(private.shape)}"
        )
    n = shared.shape[0]
    if n == 0:
        return shared.float().sum() * 0.0 + private.float().sum() * 0.0
    s = F.normalize(shared.float(), dim=1)
    p = F.normalize(private.float(), dim=1)
    corr = s.t() @ p
    return (corr * corr).sum() / float(n * n)


@SHARING_DESIGNS.register("shared_private")
class SharedPrivateSharing(Sharing):
    """A shared trunk plus a small private trunk per task group (Bousmalis et al., 2016).

    The private trunks are the same family at ``private_width`` (default ``0.5 * width``), so their maps
    have the shared trunk's spatial sizes; each group's neck reads the shared trunk's last ``neck_blocks``
    maps and its private trunk's last ``neck_blocks`` maps. ``groups`` as in ``cross_stitch``.

    ``extra_losses()`` returns ``{"difference": ...}``, the mean over groups of
    :func:`difference_loss` between the globally average-pooled last maps of the shared and
    the private trunk, ``(N, C_shared)`` and ``(N, C_private)``, from the last forward, each centred on its
    batch mean first. Pooling keeps the cross-correlation small (channels, not channels x positions) and
    asks the two trunks for different channels rather than different positions. Centring is needed because
    the last maps come after a ReLU: non-negative vectors have a cross-correlation that vanishes only where
    every sample's shared or private vector is all zero, so the uncentred loss could not reach zero; centred,
    it measures how far the two feature sets are correlated over the batch (as in the authors' own
    implementation). Shared parameters: the shared trunk.
    """

    def __init__(self, trunk: str, width: float, input_size: int, feature_dim: int, dropout: float,
                 tasks: Sequence[str], groups: Mapping[str, Sequence[str]] | None = None,
                 private_width: float | None = None, neck_blocks: int = 2) -> None:
        super().__init__()
        _require_tasks(tasks, "shared_private")
        private_width = 0.5 * width if private_width is None else private_width
        if not private_width > 0:
            raise ConfigError(f"private_width must be > 0, got {private_width}")
        members = task_groups(groups, tasks)
        self.shared = create_trunk(trunk, width)
        self.read = _neck_read(len(self.shared.blocks), neck_blocks)
        shared_in = neck_input_features(self.shared, input_size, self.read)
        self.private = nn.ModuleDict({g: create_trunk(trunk, private_width) for g in members})
        self.necks = nn.ModuleDict({
            g: Neck(shared_in + neck_input_features(self.private[g], input_size, self.read), feature_dim, dropout)
            for g in members})
        self.feature_dim = feature_dim
        self.group_of = {t: g for g, ts in members.items() for t in ts}
        self._pooled: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared_maps = self.shared(x)
        shared_read = [shared_maps[b] for b in self.read]
        shared_vec = shared_maps[-1].mean(dim=(2, 3))
        out, pooled = {}, []
        for g, private in self.private.items():
            private_maps = private(x)
            out[g] = self.necks[g](shared_read + [private_maps[b] for b in self.read])
            pooled.append((shared_vec, private_maps[-1].mean(dim=(2, 3))))
        self._pooled = pooled
        return out

    def extra_losses(self) -> dict[str, torch.Tensor]:
        if not self._pooled:
            return {}
        return {"difference": torch.stack([difference_loss(s - s.mean(dim=0), p - p.mean(dim=0))
                                           for s, p in self._pooled]).mean()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.shared.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [_last_conv_weight(self.shared.blocks[-1])]


def build_sharing(name: str, options: dict[str, Any], **common: Any) -> Sharing:
    """Instantiate a registered sharing design with the common arguments plus its own options."""
    return SHARING_DESIGNS.create(name, **common, **options)
