"""Task weighting: how the per-task losses are combined into the one total that is backpropagated.

Strategies (all :class:`TaskWeighting` modules, built by name with :func:`build_weighting`):

- ``static``: fixed weights.
- ``uncertainty``: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).
- ``gradnorm``: gradient normalisation (Chen et al., ICML 2018).
- ``dwa``: dynamic weight average (Liu, Johns & Davison, CVPR 2019).

plus :class:`TaskEarlyStopping`, TCDCN's task-wise early stopping of auxiliary tasks (Zhang et al., ECCV
2014). A task missing from the ``losses`` dict of a step (no valid sample in the batch) is skipped in that
step. Every strategy keeps its state in parameters or buffers, so ``state_dict`` / ``load_state_dict``
resume a run exactly.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError, InvalidInputError
from ..registry import Registry

__all__ = [
    "TaskWeighting",
    "StaticWeighting",
    "UncertaintyWeighting",
    "GradNorm",
    "DynamicWeightAverage",
    "TaskEarlyStopping",
    "build_weighting",
]


WEIGHTINGS: Registry[type["TaskWeighting"]] = Registry("task weighting")


class TaskWeighting(nn.Module):
    """Base class: combines ``{task: scalar loss}`` into a total loss.

    Subclasses implement :meth:`combine` (the losses of the tasks present in a step, never none) and
    :meth:`weights`; :meth:`epoch_end` is a hook called once per epoch with the epoch's average training
    losses (a no-op unless the strategy needs it).
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__()
        tasks = tuple(tasks)
        if not tasks:
            raise ConfigError("task weighting needs at least one task")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"duplicate task names in {tasks}")
        self.tasks: tuple[str, ...] = tasks
        self._index = {t: i for i, t in enumerate(tasks)}

    def _present(self, losses: Mapping[str, torch.Tensor]) -> list[str]:
        """Configured tasks present in ``losses``, in configuration order; unknown names are an error."""
        unknown = set(losses) - set(self.tasks)
        if unknown:
            raise InvalidInputError(f"losses for unknown tasks {sorted(unknown)}; configured: {list(self.tasks)}")
        return [t for t in self.tasks if t in losses]

    @staticmethod
    def _no_loss() -> torch.Tensor:
        """Total for a step without any task loss: a zero leaf whose backward is a harmless no-op."""
        return torch.zeros((), requires_grad=True)

    def forward(
        self, losses: Mapping[str, torch.Tensor], shared_parameters: Sequence[nn.Parameter] | None = None
    ) -> torch.Tensor:
        """The total of one step: the configured tasks present in ``losses`` combined, or a harmless zero."""
        present = self._present(losses)
        if not present:
            return self._no_loss()
        return self.combine(losses, present, shared_parameters)

    def combine(self, losses: Mapping[str, torch.Tensor], present: list[str],
                shared_parameters: Sequence[nn.Parameter] | None) -> torch.Tensor:
        """The total of the ``present`` tasks' losses (at least one, in configuration order)."""
        raise NotImplementedError

    def weights(self) -> dict[str, float]:
        """Current effective weight of every task, for logging."""
        raise NotImplementedError

    def epoch_end(self, train_losses: Mapping[str, float]) -> None:
        """Called once per epoch with the epoch's average training loss of each task. Default: nothing."""


class _BufferWeights(TaskWeighting):
    """A weighted sum with the weights held in the buffer ``w`` (one per task, in ``tasks`` order)."""

    def combine(self, losses: Mapping[str, torch.Tensor], present: list[str],
                shared_parameters: Sequence[nn.Parameter] | None) -> torch.Tensor:
        return sum(float(self.w[self._index[t]]) * losses[t] for t in present)

    def weights(self) -> dict[str, float]:
        return {t: float(self.w[i]) for i, t in enumerate(self.tasks)}


@WEIGHTINGS.register("static")
class StaticWeighting(_BufferWeights):
    """Fixed weights: ``total = sum_i w_i * L_i``; a task missing from ``weights`` gets 1.0."""

    def __init__(self, tasks: Sequence[str], weights: Mapping[str, float] | None = None) -> None:
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise ConfigError(f"weights given for unknown tasks {sorted(unknown)}; configured: {list(self.tasks)}")
        self.register_buffer("w", torch.tensor([float(weights.get(t, 1.0)) for t in self.tasks]))



@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(TaskWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    One learnable ``s_i = log sigma_i^2`` per task (``log_vars``, initialised to 0);
    ``total = sum_i exp(-s_i) * L_i + s_i``, so ``d total / d s_i = 1 - exp(-s_i) * L_i``. The ``s_i`` are
    ordinary parameters: add ``weighting.parameters()`` to the main optimiser. :meth:`weights` reports
    ``exp(-s_i)``.
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def combine(self, losses: Mapping[str, torch.Tensor], present: list[str],
                shared_parameters: Sequence[nn.Parameter] | None) -> torch.Tensor:
        total = None
        for t in present:
            s = self.log_vars[self._index[t]]
            loss = losses[t]
            s = s.to(loss.device)
            term = torch.exp(-s) * loss + s
            total = term if total is None else total + term
        return total

    def weights(self) -> dict[str, float]:
        w = torch.exp(-self.log_vars.detach())
        return {t: float(w[i]) for i, t in enumerate(self.tasks)}


_MIN_GRADNORM_WEIGHT = 1e-4


@WEIGHTINGS.register("gradnorm")
class GradNorm(TaskWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

    Keeps weights ``w_i`` (initially 1) as buffers with their own Adam optimiser (learning rate ``lr``,
    default betas, state also in buffers so ``state_dict`` holds ``w``, ``L_i(0)`` and the Adam moments).
    Each :meth:`forward` call, with ``shared_parameters`` the last shared layer's weight(s) W:

    1. ``g_i = ||grad_W L_i||`` via :func:`torch.autograd.grad` (``retain_graph=True``; nothing is written
       to any ``.grad``), and ``G_i = |w_i| * g_i`` (= ``||grad_W (w_i L_i)||``: ``w_i`` scales the
       gradient linearly, so no second-order graph through the network is needed to differentiate
       ``G_i`` with respect to ``w_i``).
    2. ``r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0))`` over the tasks present, where ``L_i(0)`` is the
       task's loss the first time it is seen (normally the first step).
    3. ``target_i = mean_j(G_j) * r_i ** alpha`` (a constant), ``L_grad = sum_i |G_i - target_i|``.
    4. One Adam step on ``dL_grad/dw`` for the tasks present only (absent tasks keep their weight and
       their Adam moments), weights floored at 1e-4, then the present tasks' weights are rescaled so their
       sum is unchanged by the step. Since all weights start at 1, ``sum_i w_i`` stays equal to the number
       of tasks; in a step where every task is present that is the paper's renormalisation to
       ``sum_i w_i = T``.

    Returns ``sum_i w_i * L_i`` with the weights of *before* this step's update, detached (the paper's
    order: the network step uses ``w(t)``, then ``w(t+1)`` is computed). In ``eval()`` mode or under
    ``torch.no_grad()`` it only returns the weighted sum and updates nothing.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        alpha: float = 1.5,
        lr: float = 0.025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(tasks)
        if lr <= 0:
            raise ConfigError(f"GradNorm lr must be > 0, got {lr}")
        self.alpha = float(alpha)
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        k = len(self.tasks)
        self.register_buffer("w", torch.ones(k))
        self.register_buffer("initial_losses", torch.full((k,), float("nan")))
        self.register_buffer("adam_exp_avg", torch.zeros(k))
        self.register_buffer("adam_exp_avg_sq", torch.zeros(k))
        self.register_buffer("adam_step", torch.zeros(k, dtype=torch.long))
        self.last_grad_norms: dict[str, float] = {}

    def combine(self, losses: Mapping[str, torch.Tensor], present: list[str],
                shared_parameters: Sequence[nn.Parameter] | None) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            # evaluation: weight the losses, leave the weights alone
            return sum(float(self.w[self._index[t]]) * losses[t] for t in present)
        if shared_parameters is None:
            raise InvalidInputError("GradNorm needs shared_parameters (the last shared layer's weights)")
        params = [p for p in shared_parameters if p.requires_grad]
        if not params:
            raise InvalidInputError("GradNorm: no shared parameter requires grad")
        idx = torch.tensor([self._index[t] for t in present], device=self.w.device)
        w_before = self.w[idx].clone()
        dev = losses[present[0]].device
        total = sum(float(w_before[k]) * losses[t] for k, t in enumerate(present))

        with torch.no_grad():
            current = torch.stack([losses[t].detach().float().to(self.w.device) for t in present])
            init = self.initial_losses[idx]
            unseen = torch.isnan(init)
            init = torch.where(unseen, current, init)
            self.initial_losses[idx] = init

        norms = []
        for t in present:
            loss = losses[t]
            if not loss.requires_grad:
                norms.append(torch.zeros((), device=self.w.device))
                continue
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            sq = sum((g.detach().float() ** 2).sum() for g in grads if g is not None)
            norms.append(torch.sqrt(torch.as_tensor(sq, dtype=torch.float32)).to(self.w.device))
        gnorm = torch.stack(norms)

        w_leaf = w_before.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            big_g = w_leaf.abs() * gnorm
            ratio = current / init.clamp(min=1e-12)
            rel = ratio / ratio.mean().clamp(min=1e-12)
            target = (big_g.mean() * rel.pow(self.alpha)).detach()
            l_grad = (big_g - target).abs().sum()
            (grad_w,) = torch.autograd.grad(l_grad, w_leaf)
        self.last_grad_norms = {t: float(big_g[k].detach()) for k, t in enumerate(present)}
        self._adam_update(idx, grad_w.detach())
        return total.to(dev) if isinstance(total, torch.Tensor) else total

    @torch.no_grad()
    def _adam_update(self, idx: torch.Tensor, grad: torch.Tensor) -> None:
        """Adam step (as torch.optim.Adam, per weight) on the present weights, then rescale them."""
        b1, b2 = self.betas
        step = self.adam_step[idx] + 1
        m = self.adam_exp_avg[idx] * b1 + (1 - b1) * grad
        v = self.adam_exp_avg_sq[idx] * b2 + (1 - b2) * grad * grad
        bias1 = 1 - b1 ** step.double()
        bias2 = 1 - b2 ** step.double()
        denom = (v.double().sqrt() / bias2.sqrt()).float() + self.eps
        w_old = self.w[idx]
        w_new = w_old - (self.lr / bias1).float() * m / denom
        w_new = w_new.clamp(min=_MIN_GRADNORM_WEIGHT)
        w_new = w_new * (w_old.sum() / w_new.sum())
        self.adam_step[idx] = step
        self.adam_exp_avg[idx] = m
        self.adam_exp_avg_sq[idx] = v
        self.w[idx] = w_new

    def weights(self) -> dict[str, float]:
        return {t: float(self.w[i]) for i, t in enumerate(self.tasks)}


@WEIGHTINGS.register("dwa")
class DynamicWeightAverage(_BufferWeights):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

    For epoch ``t`` the weights are ``w_i = K * exp(r_i / T) / sum_j exp(r_j / T)`` with
    ``r_i = L_i(t-1) / L_i(t-2)`` the ratio of the task's average training losses over the two previous
    epochs, ``K`` the number of tasks and ``T`` the temperature. They are 1 until two epochs have been
    recorded with :meth:`epoch_end`. A task whose loss is missing from either of the two previous epochs
    gets ``r_i = 1``.
    """

    def __init__(self, tasks: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if temperature <= 0:
            raise ConfigError(f"DWA temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        k = len(self.tasks)
        # history[0] = epoch t-2, history[1] = epoch t-1; NaN where a task had no loss.
        self.register_buffer("history", torch.full((2, k), float("nan"), dtype=torch.float64))
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("w", torch.ones(k))

    def epoch_end(self, train_losses: Mapping[str, float]) -> None:
        unknown = set(train_losses) - set(self.tasks)
        if unknown:
            raise InvalidInputError(f"losses for unknown tasks {sorted(unknown)}; configured: {list(self.tasks)}")
        row = torch.tensor([float(train_losses.get(t, float("nan"))) for t in self.tasks], dtype=torch.float64)
        self.history[0] = self.history[1].clone()
        self.history[1] = row.to(self.history.device)
        self.epochs_seen += 1
        if int(self.epochs_seen) < 2:
            self.w.fill_(1.0)
            return
        ratio = self.history[1] / self.history[0]
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        k = len(self.tasks)
        self.w.copy_((k * torch.softmax(ratio / self.temperature, dim=0)).float())



class TaskEarlyStopping:
    """Task-wise early stopping of auxiliary tasks (TCDCN: Zhang, Luo, Loy & Tang, ECCV 2014, Eq. 3).

    Call :meth:`update` once per epoch ``t`` with each task's training and validation loss. An auxiliary
    task ``a`` is stopped when

        k * med_tr / (sum_{j=t-k..t} E_tr(j) - k * med_tr)  *  (E_val(t) - min_val) / (lambda_a * min_val)  >  eps

    with ``med_tr = median_{j=t-k..t} E_tr(j)`` over the last ``k + 1`` training losses (``k = window``),
    ``min_val = min_{j<=t} E_val(j)``, ``lambda_a`` the task's importance (``importance``) and ``eps`` the
    ``threshold``. The first factor measures the training-loss trend (small while the loss still drops fast,
    about ``k`` on a plateau); the second the rise of the validation loss above its best value, relative to
    that best value. Decisions start once ``k + 1`` epochs are recorded. Where the paper's formula is
    undefined: a non-positive trend denominator (the window's sum at most ``k * median``, which needs a sharp
    drop below the median) counts as "still improving" (no stop); ``min_val <= 0`` gives an infinite
    second factor if the validation loss rose above it, else 0. Once stopped, a task stays stopped.
    """

    def __init__(
        self,
        aux_tasks: Sequence[str],
        window: int = 5,
        threshold: float = 0.25,
        importance: float | Mapping[str, float] = 1.0,
    ) -> None:
        if window < 1:
            raise ConfigError(f"early-stopping window must be >= 1, got {window}")
        self.aux_tasks: tuple[str, ...] = tuple(aux_tasks)
        self.window = int(window)
        self.threshold = float(threshold)
        if isinstance(importance, Mapping):
            unknown = set(importance) - set(self.aux_tasks)
            if unknown:
                raise ConfigError(f"importance given for unknown tasks {sorted(unknown)}")
            self.importance = {t: float(importance.get(t, 1.0)) for t in self.aux_tasks}
        else:
            self.importance = {t: float(importance) for t in self.aux_tasks}
        if any(v <= 0 for v in self.importance.values()):
            raise ConfigError("task importance (lambda) must be > 0")
        self.train_history: dict[str, list[float]] = {t: [] for t in self.aux_tasks}
        self.val_history: dict[str, list[float]] = {t: [] for t in self.aux_tasks}
        self.stopped: set[str] = set()
        self.last_scores: dict[str, float] = {}

    def score(self, task: str) -> float:
        """The criterion's left-hand side for ``task`` now (NaN before ``window + 1`` epochs)."""
        tr, val = self.train_history[task], self.val_history[task]
        k = self.window
        if len(tr) < k + 1 or not val:
            return float("nan")
        recent = sorted(tr[-(k + 1):])
        med = _median(recent)
        denom = sum(recent) - k * med
        best = min(val)
        rise = val[-1] - best
        if rise <= 0:
            return 0.0
        if denom <= 0:
            return 0.0
        if best <= 0:
            return math.inf
        return (k * med / denom) * (rise / (self.importance[task] * best))

    def update(self, train_losses: Mapping[str, float], val_losses: Mapping[str, float]) -> set[str]:
        """Record one epoch's losses; return the set of auxiliary tasks stopped so far."""
        for t in self.aux_tasks:
            if t in self.stopped or t not in train_losses or t not in val_losses:
                continue
            self.train_history[t].append(float(train_losses[t]))
            self.val_history[t].append(float(val_losses[t]))
            s = self.score(t)
            self.last_scores[t] = s
            if s > self.threshold:
                self.stopped.add(t)
        return set(self.stopped)

    def state_dict(self) -> dict[str, Any]:
        return {
            "train_history": {t: list(v) for t, v in self.train_history.items()},
            "val_history": {t: list(v) for t, v in self.val_history.items()},
            "stopped": sorted(self.stopped),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("train_history", "val_history"):
            if set(state[key]) != set(self.aux_tasks):
                raise ConfigError(
                    f"early-stopping state is for tasks {sorted(state[key])}, not {sorted(self.aux_tasks)}"
                )
        self.train_history = {t: [float(x) for x in v] for t, v in state["train_history"].items()}
        self.val_history = {t: [float(x) for x in v] for t, v in state["val_history"].items()}
        self.stopped = set(state["stopped"])


def _median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])


def build_weighting(name: str, tasks: Sequence[str], **kwargs: Any) -> TaskWeighting:
    """Build a weighting strategy by name: ``static`` | ``uncertainty`` | ``gradnorm`` | ``dwa``."""
    return WEIGHTINGS.create(name, tasks, **kwargs)
