"""PCGrad on hand-made gradients and a tiny model; task-gradient cosine diagnostics."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from facemtl.train.gradients import flat_task_grads, gradient_cosines, pcgrad, pcgrad_backward


def test_pcgrad_two_conflicting_gradients_by_hand():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g1.g2 = -1 < 0
    # g1_pc = g1 - (-1 / ||g2||^2) g2 = (1,0) + 0.5 * (-1,1) = (0.5, 0.5)
    # g2_pc = g2 - (-1 / ||g1||^2) g1 = (-1,1) + (1,0)      = (0, 1)
    # sum = (0.5, 1.5)
    torch.testing.assert_close(pcgrad([g1, g2]), torch.tensor([0.5, 1.5]))


def test_pcgrad_non_conflicting_is_plain_sum():
    grads = [torch.tensor([1.0, 0.0, 2.0]), torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 3.0, 1.0])]
    torch.testing.assert_close(pcgrad(grads), grads[0] + grads[1] + grads[2])


def test_pcgrad_zero_gradient_and_single_task():
    g = torch.tensor([1.0, -2.0])
    out = pcgrad([g, torch.zeros(2)])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, g)
    torch.testing.assert_close(pcgrad([g]), g)


def _reference_pcgrad(grads, generator):
    """Algorithm 1 written out with Python floats, drawing the same shuffles as the implementation."""
    vecs = [g.tolist() for g in grads]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    total = [0.0] * len(vecs[0])
    for i in range(len(vecs)):
        gi = list(vecs[i])
        for j in torch.randperm(len(vecs), generator=generator).tolist():
            if j == i:
                continue
            d = dot(gi, vecs[j])
            if d < 0:
                c = d / dot(vecs[j], vecs[j])
                gi = [a - c * b for a, b in zip(gi, vecs[j])]
        total = [a + b for a, b in zip(total, gi)]
    return torch.tensor(total)


def test_pcgrad_three_tasks_matches_algorithm_and_is_seeded():
    grads = [torch.tensor([1.0, 0.0, 0.5]), torch.tensor([-1.0, 1.0, 0.0]), torch.tensor([0.2, -1.0, -1.0])]
    got = pcgrad(grads, generator=torch.Generator().manual_seed(3))
    want = _reference_pcgrad(grads, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want)
    again = pcgrad(grads, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, again)


def test_pcgrad_projects_on_original_gradients():
    # with three tasks, task 0 projected first on g1 and then on g2: each projection uses the original g_j
    g0, g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.tensor([-1.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    out = pcgrad([g0, g1, g2], generator=gen)
    torch.testing.assert_close(out, _reference_pcgrad([g0, g1, g2], torch.Generator().manual_seed(0)))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Linear(3, 4)
        self.head_a = nn.Linear(4, 1)
        self.head_b = nn.Linear(4, 1)
        with torch.no_grad():  # make the two tasks pull the trunk in opposite directions
            self.head_b.weight.copy_(-self.head_a.weight)

    def losses(self, x):
        h = self.trunk(x)
        return {"a": self.head_a(h).mean(), "b": 0.5 * self.head_b(h).pow(2).mean() + self.head_b(h).mean()}


def test_pcgrad_backward_shared_gets_pcgrad_heads_get_plain_grads():
    net = _Net()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    weights = {"a": 2.0, "b": 0.5}
    shared = list(net.trunk.parameters())

    # expected: per-task weighted grads on the trunk, combined by PCGrad
    ref = copy.deepcopy(net)
    ref_losses = ref.losses(x)
    per_task = flat_task_grads({t: weights[t] * l for t, l in ref_losses.items()}, list(ref.trunk.parameters()))
    assert torch.dot(per_task["a"], per_task["b"]) < 0  # the setup really conflicts
    expected_shared = pcgrad([per_task["a"], per_task["b"]])
    # expected head grads: those of the plain weighted total
    sum(weights[t] * l for t, l in ref_losses.items()).backward()

    cos = pcgrad_backward(net.losses(x), weights, shared)
    got_shared = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got_shared, expected_shared)
    for name in ("head_a", "head_b"):
        for p, q in zip(getattr(net, name).parameters(), getattr(ref, name).parameters()):
            torch.testing.assert_close(p.grad, q.grad)
    assert set(cos) == {"a/b"} and cos["a/b"] < 0


def test_pcgrad_backward_accumulates_into_existing_grads():
    net = _Net()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    shared = list(net.trunk.parameters())
    pcgrad_backward(net.losses(x), {"a": 1.0, "b": 1.0}, shared)
    once = [p.grad.clone() for p in net.parameters()]
    pcgrad_backward(net.losses(x), {"a": 1.0, "b": 1.0}, shared)
    for p, g in zip(net.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g)


def test_flat_task_grads_unused_params_are_zero_and_no_grad_written():
    a = nn.Parameter(torch.tensor([1.0, 2.0]))
    b = nn.Parameter(torch.tensor([3.0]))
    losses = {"x": (a**2).sum(), "y": 4.0 * b.sum()}
    grads = flat_task_grads(losses, [a, b])
    torch.testing.assert_close(grads["x"], torch.tensor([2.0, 4.0, 0.0]))
    torch.testing.assert_close(grads["y"], torch.tensor([0.0, 0.0, 4.0]))
    assert a.grad is None and b.grad is None


def test_gradient_cosines_hand_values():
    grads = {
        "a": torch.tensor([1.0, 0.0]),
        "b": torch.tensor([0.0, 2.0]),
        "c": torch.tensor([-3.0, 0.0]),
        "z": torch.tensor([0.0, 0.0]),
    }
    names, m = gradient_cosines(grads)
    assert names == ["a", "b", "c", "z"]
    expected = np.array(
        [
            [1.0, 0.0, -1.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [-1.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],  # a zero gradient: 0, not NaN
        ]
    )
    np.testing.assert_allclose(m, expected, atol=1e-12)
    # (1,1) vs (1,0): cos 45 degrees
    _, m2 = gradient_cosines({"p": torch.tensor([1.0, 1.0]), "q": torch.tensor([1.0, 0.0])})
    assert m2[0, 1] == pytest.approx(2**-0.5)
