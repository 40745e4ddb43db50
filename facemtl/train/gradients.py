"""Gradient-level multi-task methods: PCGrad (Yu et al., NeurIPS 2020) and task-gradient cosines.

:func:`pcgrad_backward` is the training-step helper: the shared parameters receive the PCGrad combination
of the per-task gradients, every other parameter the ordinary gradient of the weighted total.
:func:`gradient_cosines` gives the pairwise cosine matrix of task gradients, the per-epoch "which tasks
fight" diagnostic.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError

__all__ = ["pcgrad", "flat_task_grads", "pcgrad_backward", "gradient_cosines"]


def pcgrad(grads: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """Combine flat task gradients with PCGrad (Yu et al., NeurIPS 2020, Algorithm 1).

    For each task ``i``: start from ``g_i``; for every other task ``j`` in a random order (one shuffle per
    ``i``, drawn from ``generator``), if ``g_i_pc . g_j < 0`` then
    ``g_i_pc -= (g_i_pc . g_j / ||g_j||^2) g_j``, always projecting on the *original* ``g_j``. Returns
    ``sum_i g_i_pc``. A zero ``g_j`` is skipped (it cannot conflict).
    """
    if len(grads) == 0:
        raise InvalidInputError("pcgrad needs at least one gradient")
    shape = grads[0].shape
    if any(g.shape != shape for g in grads):
        shapes = [tuple(g.shape) for g in grads]
        raise InvalidInputError(f"pcgrad: all gradients must have the same shape, got {shapes}")
    g_all = torch.stack([g.detach() for g in grads])
    n = g_all.shape[0]
    sq_norms = (g_all * g_all).sum(dim=tuple(range(1, g_all.dim())))
    flat = g_all.reshape(n, -1)
    out = torch.zeros_like(flat[0])
    tiny = torch.finfo(flat.dtype).tiny
    for i in range(n):
        g = flat[i].clone()
        order = torch.randperm(n, generator=generator).tolist()
        for j in order:
            if j == i:
                continue
            dot = torch.dot(g, flat[j])
            conflict = (dot < 0) & (sq_norms[j] > 0)
            coef = torch.where(conflict, dot / sq_norms[j].clamp(min=tiny), torch.zeros_like(dot))
            g = g - coef * flat[j]
        out = out + g
    return out.reshape(shape)


def _task_grads(
    losses: Mapping[str, torch.Tensor], params: Sequence[nn.Parameter]
) -> tuple[dict[str, torch.Tensor], list[bool]]:
    """Flat per-task gradients on ``params`` and, per parameter, whether any task's loss reaches it."""
    params = list(params)
    used = [False] * len(params)
    out: dict[str, torch.Tensor] = {}
    for task, loss in losses.items():
        if loss.requires_grad:
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        else:
            grads = (None,) * len(params)
        pieces = []
        for k, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                pieces.append(torch.zeros(p.numel(), dtype=p.dtype, device=p.device))
            else:
                used[k] = True
                pieces.append(g.detach().reshape(-1))
        out[task] = torch.cat(pieces) if pieces else torch.zeros(0)
    return out, used


def flat_task_grads(losses: Mapping[str, torch.Tensor], params: Sequence[nn.Parameter]) -> dict[str, torch.Tensor]:
    """Per-task gradients on ``params``, each flattened into one vector (zeros where a loss does not reach).

    Uses :func:`torch.autograd.grad` with ``retain_graph=True``: nothing is written to ``.grad`` and the
    graph stays usable for a later backward.
    """
    return _task_grads(losses, params)[0]


def pcgrad_backward(
    losses: Mapping[str, torch.Tensor],
    weights: Mapping[str, float | torch.Tensor],
    shared_params: Sequence[nn.Parameter],
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Backward pass with PCGrad on the shared parameters.

    With ``L = sum_i w_i L_i`` (a task missing from ``weights`` gets 1.0):

    - each shared parameter's ``.grad`` gets the PCGrad combination of the per-task gradients
      ``grad(w_i L_i)``, *added* to any ``.grad`` already there (gradient accumulation works);
    - every other leaf that ``L`` reaches gets exactly the gradient of ``L``, as from ``L.backward()``.

    Implementation: the task gradients are taken with :func:`torch.autograd.grad`, the shared ``.grad``
    values set aside, ``L.backward()`` run (which frees the graph), and the shared ``.grad`` then
    overwritten with ``old + pcgrad``. A shared parameter no task reaches keeps its ``.grad`` untouched.
    Under DDP the shared gradients are local to the rank: combine with ``no_sync`` and an all-reduce.

    Returns the pairwise cosines of the weighted task gradients, keyed ``"a/b"`` (in the order of
    ``losses``), for logging.
    """
    if not losses:
        raise InvalidInputError("pcgrad_backward needs at least one task loss")
    shared_params = [p for p in shared_params if p.requires_grad]
    weighted = {t: _weighted(weights.get(t, 1.0), loss) for t, loss in losses.items()}
    task_grads, used = _task_grads(weighted, shared_params)
    combined = pcgrad([task_grads[t] for t in weighted], generator=generator) if shared_params else None

    saved = [p.grad for p in shared_params]
    for p in shared_params:
        p.grad = None
    total = sum(weighted.values())
    if isinstance(total, torch.Tensor) and total.requires_grad:
        total.backward()
    offset = 0
    for p, old, is_used in zip(shared_params, saved, used):
        n = p.numel()
        if is_used:
            piece = combined[offset:offset + n].view_as(p).to(p.dtype)
            p.grad = piece.clone() if old is None else old + piece
        else:
            p.grad = old
        offset += n

    names, matrix = gradient_cosines(task_grads)
    return {f"{names[a]}/{names[b]}": float(matrix[a, b]) for a in range(len(names)) for b in range(a + 1, len(names))}


def _weighted(weight: float | torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    if isinstance(weight, torch.Tensor):
        return weight.to(loss.device) * loss
    return float(weight) * loss


def gradient_cosines(grads: Mapping[str, torch.Tensor]) -> tuple[list[str], np.ndarray]:
    """Pairwise cosine similarity of task gradients: ``(task names, (T, T) float64 matrix)``.

    A zero gradient has cosine 0 with everything (itself included) instead of NaN; a non-zero one has 1
    on the diagonal.
    """
    names = list(grads)
    if not names:
        return names, np.zeros((0, 0), dtype=np.float64)
    g = torch.stack([grads[t].detach().reshape(-1).to(torch.float64).cpu() for t in names])
    dots = g @ g.t()
    norms = dots.diagonal().clamp(min=0).sqrt()
    denom = norms[:, None] * norms[None, :]
    cos = torch.where(denom > 0, dots / denom.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(dots))
    return names, cos.clamp(-1.0, 1.0).numpy()
