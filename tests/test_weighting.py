"""Task weighting strategies and TCDCN task-wise early stopping, on hand-made losses and a tiny model."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from facemtl.errors import ConfigError, InvalidInputError
from facemtl.train.weighting import (
    DynamicWeightAverage,
    GradNorm,
    StaticWeighting,
    TaskEarlyStopping,
    UncertaintyWeighting,
    build_weighting,
)


def _t(x: float) -> torch.Tensor:
    return torch.tensor(float(x))


# ---------------------------------------------------------------- static


def test_static_weighted_sum_and_skipped_tasks():
    w = StaticWeighting(["a", "b"], {"a": 2.0})
    # 2*3 + 1*5 = 11
    assert w({"a": _t(3), "b": _t(5)}).item() == pytest.approx(11.0)
    # "a" absent this step: only 1*5
    assert w({"b": _t(5)}).item() == pytest.approx(5.0)
    assert w.weights() == {"a": 2.0, "b": 1.0}


def test_static_errors_and_empty_step():
    with pytest.raises(ConfigError):
        StaticWeighting(["a"], {"zzz": 1.0})
    w = StaticWeighting(["a"])
    with pytest.raises(InvalidInputError):
        w({"zzz": _t(1)})
    total = w({})
    assert total.item() == 0.0
    total.backward()  # a harmless no-op


# ---------------------------------------------------------------- uncertainty


def test_uncertainty_total_and_gradient_by_hand():
    w = UncertaintyWeighting(["a", "b"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.0, math.log(2.0)]))
    # total = exp(0)*3 + 0 + exp(-ln 2)*4 + ln 2 = 3 + 2 + ln 2
    total = w({"a": _t(3), "b": _t(4)})
    assert total.item() == pytest.approx(5 + math.log(2), rel=1e-6)
    total.backward()
    # d/ds = -exp(-s) L + 1: a -> -3 + 1 = -2; b -> -0.5*4 + 1 = -1
    torch.testing.assert_close(w.log_vars.grad, torch.tensor([-2.0, -1.0]))
    assert w.weights() == pytest.approx({"a": 1.0, "b": 0.5})


def test_uncertainty_absent_task_gets_no_gradient_and_state_round_trip():
    w = UncertaintyWeighting(["a", "b"])
    w({"b": _t(4)}).backward()
    assert w.log_vars.grad[0].item() == 0.0 and w.log_vars.grad[1].item() == pytest.approx(-3.0)
    with torch.no_grad():
        w.log_vars.add_(0.7)
    w2 = UncertaintyWeighting(["a", "b"])
    w2.load_state_dict(w.state_dict())
    assert w2.weights() == w.weights()


# ---------------------------------------------------------------- GradNorm


class _TwoTask(nn.Module):
    """Shared linear layer and two scalar heads; task "a" is scaled so its gradient norm is larger."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(3, 4)
        self.head_a = nn.Linear(4, 1)
        self.head_b = nn.Linear(4, 1)

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.shared(x))
        return {"a": 10.0 * self.head_a(h).pow(2).mean(), "b": self.head_b(h).pow(2).mean()}


def _grad_norm(loss: torch.Tensor, params) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    return math.sqrt(sum(float((g**2).sum()) for g in grads))


def test_gradnorm_first_step_moves_toward_equal_gradient_norms():
    model, x = _TwoTask(), torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    gn = GradNorm(["a", "b"], alpha=1.5, lr=0.025)
    losses = model.losses(x)
    shared = [model.shared.weight]
    ga, gb = _grad_norm(losses["a"], shared), _grad_norm(losses["b"], shared)
    assert ga > gb  # the setup: task a has the larger gradient norm
    total = gn(losses, shared)
    # weights used for the returned total are those before the update (1, 1)
    assert total.item() == pytest.approx(losses["a"].item() + losses["b"].item(), rel=1e-6)
    # first step: r_i = 1, target = mean(G); dL_grad/dw_a = +g_a > 0, dL_grad/dw_b = -g_b < 0.
    # Adam's first step moves each weight by lr * sign(grad): (0.975, 1.025), sum already 2.
    w = gn.weights()
    assert w["a"] == pytest.approx(0.975, abs=1e-6) and w["b"] == pytest.approx(1.025, abs=1e-6)
    assert sum(w.values()) == pytest.approx(2.0, abs=1e-6)
    # no stray gradients from the GradNorm computation
    assert all(p.grad is None for p in model.parameters())
    # the network's backward is an ordinary one
    total.backward()
    assert model.shared.weight.grad is not None


def test_gradnorm_equalises_gradient_norms_over_steps():
    model, x = _TwoTask(), torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    gn = GradNorm(["a", "b"], alpha=1.5, lr=0.05)
    shared = [model.shared.weight]
    gaps = []
    for _ in range(60):  # model frozen: only the task weights move
        gn(model.losses(x), shared)
        gaps.append(abs(gn.last_grad_norms["a"] - gn.last_grad_norms["b"]))
        assert sum(gn.weights().values()) == pytest.approx(2.0, abs=1e-5)
    assert gaps[-1] < 0.2 * gaps[0]
    assert gn.weights()["a"] < gn.weights()["b"]
    assert all(p.grad is None for p in model.parameters())


def test_gradnorm_absent_task_keeps_weight_and_sum():
    model, x = _TwoTask(), torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    gn = GradNorm(["a", "b", "c"])
    shared = [model.shared.weight]
    gn(model.losses(x), shared)  # "c" absent
    w1 = gn.weights()
    assert w1["c"] == 1.0 and sum(w1.values()) == pytest.approx(3.0, abs=1e-6)
    gn({"b": model.losses(x)["b"]}, shared)  # a single task: L_grad = 0, its weight cannot change
    w2 = gn.weights()
    assert w2 == pytest.approx(w1, abs=1e-6)
    with pytest.raises(InvalidInputError):
        gn(model.losses(x))  # shared parameters are required


def test_gradnorm_state_dict_round_trip_continues_identically():
    model, x = _TwoTask(), torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    shared = [model.shared.weight]
    gn = GradNorm(["a", "b"], lr=0.05)
    for _ in range(3):
        gn(model.losses(x), shared)
    state = {k: v.clone() for k, v in gn.state_dict().items()}
    assert {"w", "initial_losses", "adam_exp_avg", "adam_exp_avg_sq", "adam_step"} <= set(state)
    resumed = GradNorm(["a", "b"], lr=0.05)
    resumed.load_state_dict(state)
    for _ in range(3):
        gn(model.losses(x), shared)
        resumed(model.losses(x), shared)
        assert resumed.weights() == gn.weights()


def test_gradnorm_internal_adam_matches_torch_adam():
    # antisymmetric gradients keep the sum fixed, so the renormalisation is the identity
    gn = GradNorm(["a", "b"], lr=0.1)
    ref = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([ref], lr=0.1)
    idx = torch.tensor([0, 1])
    for g in (0.3, -1.2, 0.05, 2.0):
        grad = torch.tensor([g, -g])
        gn._adam_update(idx, grad)
        ref.grad = grad.clone()
        opt.step()
        torch.testing.assert_close(gn.w, ref.detach(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- DWA


def test_dwa_weights_from_loss_history():
    dwa = DynamicWeightAverage(["a", "b"], temperature=2.0)
    assert dwa.weights() == {"a": 1.0, "b": 1.0}
    dwa.epoch_end({"a": 1.0, "b": 1.0})
    assert dwa.weights() == {"a": 1.0, "b": 1.0}  # epochs 1 and 2 use weight 1
    dwa.epoch_end({"a": 0.5, "b": 1.0})
    # r = (0.5, 1) -> w = 2 * exp(r/2) / (exp(0.25) + exp(0.5))
    z = math.exp(0.25) + math.exp(0.5)
    want = {"a": 2 * math.exp(0.25) / z, "b": 2 * math.exp(0.5) / z}
    assert dwa.weights() == pytest.approx(want, rel=1e-6)
    total = dwa({"a": _t(1.0), "b": _t(2.0)})
    assert total.item() == pytest.approx(want["a"] + 2 * want["b"], rel=1e-6)
    dwa.epoch_end({"a": 0.5, "b": 0.5})
    # r = (1, 0.5): the weights swap
    assert dwa.weights() == pytest.approx({"a": want["b"], "b": want["a"]}, rel=1e-6)
    resumed = DynamicWeightAverage(["a", "b"], temperature=2.0)
    resumed.load_state_dict(dwa.state_dict())
    dwa.epoch_end({"a": 0.25, "b": 0.5})
    resumed.epoch_end({"a": 0.25, "b": 0.5})
    assert resumed.weights() == dwa.weights()


def test_dwa_missing_task_in_history_gets_ratio_one():
    dwa = DynamicWeightAverage(["a", "b"], temperature=1.0)
    dwa.epoch_end({"a": 1.0})
    dwa.epoch_end({"a": 1.0, "b": 3.0})
    assert dwa.weights() == pytest.approx({"a": 1.0, "b": 1.0})


# ---------------------------------------------------------------- TCDCN task-wise early stopping


def test_early_stopping_hand_value():
    # k = 2: train (1, 1, 1): med 1, sum 3 -> k*med / (sum - k*med) = 2 / 1 = 2
    # val (1.0, 0.8, 1.0): (1.0 - 0.8) / (lambda * 0.8) = 0.25 -> score 0.5 (lambda = 1), 0.125 (lambda = 4)
    es = TaskEarlyStopping(["pose"], window=2, threshold=0.25)
    es4 = TaskEarlyStopping(["pose"], window=2, threshold=0.25, importance={"pose": 4.0})
    for tr, val in zip((1.0, 1.0, 1.0), (1.0, 0.8, 1.0)):
        stopped = es.update({"pose": tr}, {"pose": val})
        stopped4 = es4.update({"pose": tr}, {"pose": val})
    assert es.score("pose") == pytest.approx(0.5)
    assert es4.score("pose") == pytest.approx(0.125)
    assert stopped == {"pose"} and stopped4 == set()


def test_early_stopping_stops_overfitting_task_and_keeps_it_stopped():
    es = TaskEarlyStopping(["pose", "attributes"], window=5, threshold=0.25)
    train_plateau = [1.0, 0.7, 0.55, 0.5, 0.48, 0.47, 0.47, 0.465, 0.46, 0.46, 0.46, 0.46]
    val_rising = [1.0, 0.8, 0.7, 0.68, 0.7, 0.74, 0.8, 0.86, 0.92, 0.98, 1.05, 1.1]
    stopped_at = None
    for epoch, (tr, val) in enumerate(zip(train_plateau, val_rising)):
        # "attributes" improves steadily on both sets
        stopped = es.update(
            {"pose": tr, "attributes": 2.0 * 0.8**epoch}, {"pose": val, "attributes": 2.1 * 0.8**epoch}
        )
        if stopped and stopped_at is None:
            stopped_at = epoch
    assert stopped == {"pose"}
    assert stopped_at is not None and stopped_at >= 5
    # once stopped, a recovery does not restart it
    assert es.update({"pose": 0.1, "attributes": 0.01}, {"pose": 0.1, "attributes": 0.01}) == {"pose"}


def test_early_stopping_never_stops_steadily_improving_task():
    es = TaskEarlyStopping(["landmarks_aux"], window=3, threshold=0.01)
    for epoch in range(40):
        loss = 1.0 / (1 + epoch)
        assert es.update({"landmarks_aux": loss}, {"landmarks_aux": 1.1 * loss}) == set()


def test_early_stopping_state_round_trip():
    es = TaskEarlyStopping(["pose"], window=2)
    for tr, val in zip((1.0, 1.0, 1.0), (1.0, 0.8, 1.0)):
        es.update({"pose": tr}, {"pose": val})
    other = TaskEarlyStopping(["pose"], window=2)
    other.load_state_dict(es.state_dict())
    assert other.stopped == {"pose"} and other.train_history == es.train_history
    with pytest.raises(ConfigError):
        TaskEarlyStopping(["x"]).load_state_dict(es.state_dict())


# ---------------------------------------------------------------- factory


@pytest.mark.parametrize(
    "name,cls",
    [("static", StaticWeighting), ("uncertainty", UncertaintyWeighting), ("gradnorm", GradNorm),
     ("dwa", DynamicWeightAverage)],
)
def test_build_weighting(name, cls):
    assert isinstance(build_weighting(name, ["a", "b"]), cls)


def test_build_weighting_errors():
    with pytest.raises(ConfigError):
        build_weighting("nope", ["a"])
    with pytest.raises(ConfigError):
        build_weighting("dwa", ["a"], alpha=1.0)
    assert build_weighting("gradnorm", ["a"], alpha=0.5).alpha == 0.5


def test_gradnorm_does_not_update_in_eval_or_no_grad():
    model, x = _TwoTask(), torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    gn = GradNorm(["a", "b"])
    with torch.no_grad():
        losses = model.losses(x)
        total = gn(losses, [model.shared.weight])
    assert total.item() == pytest.approx(losses["a"].item() + losses["b"].item(), rel=1e-6)
    gn.eval()
    gn(model.losses(x), [model.shared.weight])
    assert gn.weights() == {"a": 1.0, "b": 1.0}
    assert torch.isnan(gn.initial_losses).all()  # L(0) is taken from the first training step
