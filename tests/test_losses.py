"""Masked multi-task losses: hand-computed values and the masking contract (garbage in masked rows is inert)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facemtl.errors import InvalidInputError
from facemtl.model.sharing import difference_loss
from facemtl.train.losses import (
    age_loss,
    distill_loss,
    attribute_loss,
    contrastive_loss,
    landmark_loss,
    margin_logits,
    masked_cross_entropy,
    pair_counts,
)


def _check_masked_sample_inert(loss_fn, x_valid, args_valid, x_garbage, args_garbage, at=1):
    """A masked sample inserted at row ``at`` leaves the loss and the valid rows' gradients unchanged.

    ``loss_fn(x, *args, mask)``; ``x`` is the differentiable input. The masked row's gradient must be 0.
    """
    n = x_valid.shape[0]
    xa = x_valid.clone().requires_grad_(True)
    la = loss_fn(xa, *args_valid, torch.ones(n, dtype=torch.bool))
    la.backward()

    def insert(valid, garbage):
        return torch.cat([valid[:at], garbage.unsqueeze(0), valid[at:]])

    xb = insert(x_valid, x_garbage).clone().requires_grad_(True)
    args_b = [insert(a, g) for a, g in zip(args_valid, args_garbage)]
    mask_b = torch.ones(n + 1, dtype=torch.bool)
    mask_b[at] = False
    lb = loss_fn(xb, *args_b, mask_b)
    lb.backward()

    assert torch.isfinite(lb)
    torch.testing.assert_close(lb, la, rtol=1e-6, atol=1e-7)
    keep = torch.arange(n + 1) != at
    torch.testing.assert_close(xb.grad[keep], xa.grad, rtol=1e-6, atol=1e-7)
    assert torch.equal(xb.grad[at], torch.zeros_like(xb.grad[at]))


def _check_all_masked(loss_fn, x, args):
    x = x.clone().requires_grad_(True)
    loss = loss_fn(x, *args, torch.zeros(x.shape[0], dtype=torch.bool))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


# ---------------------------------------------------------------- cross-entropy


def test_cross_entropy_hand_value():
    # row 0: logits (0, ln 3), label 1 -> p = 3/4, CE = ln(4/3)
    # row 1: logits (0, 0),   label 0 -> p = 1/2, CE = ln 2
    # mean = (ln(4/3) + ln 2) / 2 = ln(8/3) / 2
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    loss = masked_cross_entropy(logits, torch.tensor([1, 0]), torch.tensor([True, True]))
    assert loss.item() == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)


def test_cross_entropy_label_smoothing_matches_torch_on_valid_rows():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 5), torch.tensor([0, 4, -1, 2])
    mask = labels >= 0
    got = masked_cross_entropy(logits, labels, mask, label_smoothing=0.1)
    want = F.cross_entropy(logits[mask], labels[mask], label_smoothing=0.1)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("garbage_label", [-1, 99])
def test_cross_entropy_masked_sample_inert(garbage_label):
    torch.manual_seed(1)
    x = torch.randn(3, 4)
    labels = torch.tensor([0, 3, 1])
    _check_masked_sample_inert(
        masked_cross_entropy, x, [labels], torch.full((4,), float("nan")), [torch.tensor(garbage_label)]
    )


def test_cross_entropy_all_masked():
    _check_all_masked(masked_cross_entropy, torch.randn(2, 3), [torch.tensor([-1, 7])])


# ---------------------------------------------------------------- ArcFace margin


def test_margin_logits_hand_values():
    m, s = 0.5, 32.0
    cosine = torch.tensor([[0.6, 0.2], [-0.95, 0.1], [0.3, 0.4], [0.3, 0.4]])
    labels = torch.tensor([0, 0, -1, 5])
    out = margin_logits(cosine, labels, margin=m, scale=s)
    # row 0: cos(theta + m) = cos theta cos m - sin theta sin m with sin theta = 0.8
    want0 = 0.6 * math.cos(m) - 0.8 * math.sin(m)
    # row 1: cos theta = -0.95 <= cos(pi - m) = -0.8776 -> fallback cos theta - sin(pi - m) * m
    want1 = -0.95 - math.sin(math.pi - m) * m
    expected = torch.tensor([[want0, 0.2], [want1, 0.1], [0.3, 0.4], [0.3, 0.4]]) * s
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_margin_logits_finite_gradient_at_zero_angle_and_masked_rows_inert():
    cosine = torch.tensor([[1.0, 0.0], [0.5, 0.5]], requires_grad=True)
    labels = torch.tensor([0, -1])
    out = margin_logits(cosine, labels)
    loss = masked_cross_entropy(out, labels, labels >= 0)
    loss.backward()
    assert torch.isfinite(cosine.grad).all()
    assert torch.equal(cosine.grad[1], torch.zeros(2))


# ---------------------------------------------------------------- contrastive (DeepID2)


def test_contrastive_hand_value_mixed():
    # A=(0,0), B=(3,4) same identity: d=5 -> 0.5*25 = 12.5 (mean_pos = 12.5)
    # C=(0,1) other identity, margin 2: (A,C) d=1 -> 0.5*(2-1)^2 = 0.5; (B,C) d=sqrt(18) > 2 -> 0
    # mean_neg = 0.25; loss = 0.5 * (12.5 + 0.25) = 6.375
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    loss = contrastive_loss(emb, torch.tensor([0, 0, 1]), torch.ones(3, dtype=torch.bool), margin=2.0)
    assert loss.item() == pytest.approx(6.375, rel=1e-6)


def test_contrastive_positive_only_value_and_gradient():
    # one positive pair at d=5 -> 12.5; d(0.5 d^2)/dA = A - B = (-3,-4), d/dB = (3,4)
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    loss = contrastive_loss(emb, torch.tensor([7, 7]), torch.ones(2, dtype=torch.bool), margin=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(12.5)
    torch.testing.assert_close(emb.grad, torch.tensor([[-3.0, -4.0], [3.0, 4.0]]))


def test_contrastive_negative_only_value_and_gradient():
    # one negative pair at d=1, margin 2: 0.5*(2-1)^2 = 0.5
    # dL/dA = -(m - d) * (A - C)/d = -(1) * (0,-1) = (0, 1); dL/dC = (0, -1)
    emb = torch.tensor([[0.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = contrastive_loss(emb, torch.tensor([0, 1]), torch.ones(2, dtype=torch.bool), margin=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.5)
    torch.testing.assert_close(emb.grad, torch.tensor([[0.0, 1.0], [0.0, -1.0]]))


def test_contrastive_margin_boundary():
    # negative pair at d = 5 = margin -> loss 0 and zero gradient; just inside -> positive loss
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    loss = contrastive_loss(emb, torch.tensor([0, 1]), torch.ones(2, dtype=torch.bool), margin=5.0)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(emb.grad, torch.zeros(2, 2))
    inside = contrastive_loss(emb.detach(), torch.tensor([0, 1]), torch.ones(2, dtype=torch.bool), margin=5.5)
    assert inside.item() == pytest.approx(0.5 * 0.5**2)


@pytest.mark.parametrize("ids", [[0, 1], [0, 0]])
def test_contrastive_zero_distance_has_finite_gradient(ids):
    # coincident embeddings: negative pair -> 0.5*m^2 = 0.5; positive pair -> 0; gradient finite, no NaN
    emb = torch.tensor([[0.3, 0.4], [0.3, 0.4]], requires_grad=True)
    loss = contrastive_loss(emb, torch.tensor(ids), torch.ones(2, dtype=torch.bool), margin=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 if ids[0] != ids[1] else 0.0, abs=1e-5)  # d clamped at 1e-6
    assert torch.isfinite(emb.grad).all()


def test_contrastive_masked_sample_inert():
    torch.manual_seed(2)
    emb = torch.randn(4, 3)
    ids = torch.tensor([0, 0, 1, 2])
    # garbage sample: NaN embedding, identity -1 (would pair with nothing valid anyway)
    _check_masked_sample_inert(
        lambda x, i, m: contrastive_loss(x, i, m, margin=3.0),
        emb, [ids], torch.full((3,), float("nan")), [torch.tensor(-1)], at=2,
    )
    # garbage sample sharing a valid identity: would add a positive pair if it were not masked
    _check_masked_sample_inert(
        lambda x, i, m: contrastive_loss(x, i, m, margin=3.0),
        emb, [ids], torch.tensor([9.0, 9.0, 9.0]), [torch.tensor(0)], at=0,
    )


def test_contrastive_all_masked_and_single_valid():
    _check_all_masked(
        lambda x, i, m: contrastive_loss(x, i, m, margin=1.0), torch.randn(3, 2), [torch.tensor([0, 0, 1])]
    )
    emb = torch.randn(3, 2, requires_grad=True)
    loss = contrastive_loss(emb, torch.tensor([0, 0, 1]), torch.tensor([True, False, False]), margin=1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(emb.grad, torch.zeros(3, 2))


def test_pair_counts():
    ids = torch.tensor([0, 0, 1, 1, 2])
    # 10 pairs: (0,1) and (2,3) positive
    assert pair_counts(ids, torch.ones(5, dtype=torch.bool)) == (2, 8)
    # without sample 3: 6 pairs, only (0,1) positive
    assert pair_counts(ids, torch.tensor([True, True, True, False, True])) == (1, 5)
    assert pair_counts(ids, torch.zeros(5, dtype=torch.bool)) == (0, 0)


# ---------------------------------------------------------------- landmarks


def test_landmark_l2_hand_value():
    # sample 0: all 10 errors 0.1 -> MSE 0.01; sample 1: all errors 0.2 -> 0.04; mean 0.025
    pred = torch.zeros(2, 5, 2)
    target = torch.stack([torch.full((5, 2), 0.1), torch.full((5, 2), 0.2)])
    loss = landmark_loss(pred, target, torch.ones(2, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.025, rel=1e-6)


def test_landmark_wing_both_branches():
    w, eps = 0.04, 0.008
    c = w - w * math.log(1 + w / eps)  # = 0.04 - 0.04 ln 6
    pred = torch.zeros(1, 5, 2)
    target = torch.zeros(1, 5, 2)
    target[0, 0, 0] = 0.02   # |x| < w: w ln(1 + 0.02/0.008) = 0.04 ln 3.5
    target[0, 1, 1] = -0.1   # |x| >= w: 0.1 - C
    loss = landmark_loss(pred, target, torch.ones(1, dtype=torch.bool), kind="wing", wing_w=w, wing_eps=eps)
    expected = (0.04 * math.log(3.5) + (0.1 - c)) / 10  # the other 8 coordinates contribute 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_landmark_wing_continuous_at_w():
    w = 0.04
    vals = []
    for x in (w - 1e-6, w, w + 1e-6):
        target = torch.zeros(1, 5, 2)
        target[0, 2, 0] = x
        loss = landmark_loss(torch.zeros(1, 5, 2), target, torch.ones(1, dtype=torch.bool), kind="wing")
        vals.append(10 * loss.item())
    assert vals[0] == pytest.approx(vals[1], abs=1e-6) and vals[2] == pytest.approx(vals[1], abs=1e-6)
    # both sides are w ln(1 + w/eps) = 0.04 ln 6 at |x| = w
    assert vals[1] == pytest.approx(0.04 * math.log(6.0), rel=1e-4)


@pytest.mark.parametrize("kind", ["l2", "wing"])
def test_landmark_masked_sample_inert(kind):
    torch.manual_seed(3)
    pred, target = torch.rand(3, 5, 2), torch.rand(3, 5, 2)
    _check_masked_sample_inert(
        lambda x, t, m: landmark_loss(x, t, m, kind=kind),
        pred, [target], torch.full((5, 2), float("nan")), [torch.full((5, 2), float("nan"))],
    )


@pytest.mark.parametrize("kind", ["l2", "wing"])
def test_landmark_all_masked(kind):
    _check_all_masked(
        lambda x, t, m: landmark_loss(x, t, m, kind=kind), torch.rand(2, 5, 2), [torch.full((2, 5, 2), float("nan"))]
    )


def test_landmark_unknown_kind():
    with pytest.raises(InvalidInputError):
        z, ones = torch.zeros(1, 5, 2), torch.ones(1, dtype=torch.bool)
        landmark_loss(z, z, ones, kind="l1")  # type: ignore[arg-type]


# ---------------------------------------------------------------- attributes


def test_attribute_hand_value_per_entry_mask():
    # valid entries: (x=0, y=1) -> ln 2; (x=2, y=0) -> ln(1+e^2); (x=-1, y=1) -> ln(1+e)
    # entry (1,1) is masked and its target is NaN
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, float("nan")]])
    mask = torch.tensor([[True, True], [True, False]])
    loss = attribute_loss(logits, targets, mask)
    expected = (math.log(2) + math.log(1 + math.e**2) + math.log(1 + math.e)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_attribute_pos_weight_hand_value():
    # pos_weight (3, 1): positives of attribute 0 count 3 times
    # (x=0,y=1,pw=3) -> 3 ln 2; (x=2,y=0) -> ln(1+e^2); (x=-1,y=1,pw=3) -> 3 ln(1+e)
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, float("nan")]])
    mask = torch.tensor([[True, True], [True, False]])
    loss = attribute_loss(logits, targets, mask, pos_weight=torch.tensor([3.0, 1.0]))
    expected = (3 * math.log(2) + math.log(1 + math.e**2) + 3 * math.log(1 + math.e)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_attribute_masked_sample_inert():
    torch.manual_seed(4)
    logits = torch.randn(3, 4)
    targets = (torch.rand(3, 4) > 0.5).float()
    ent_mask = torch.tensor([[True] * 4, [True, False, True, False], [False, True, True, True]])
    targets[~ent_mask] = float("nan")

    def fn(x, t, m_entries, m_rows):
        return attribute_loss(x, t, m_entries & m_rows.unsqueeze(1))

    _check_masked_sample_inert(
        fn, logits, [targets, ent_mask], torch.full((4,), float("nan")),
        [torch.full((4,), float("nan")), torch.ones(4, dtype=torch.bool)],
    )


def test_attribute_sample_mask_broadcast_and_all_masked():
    logits = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    targets = torch.tensor([[1.0, 0.0], [float("nan"), float("nan")]])
    loss = attribute_loss(logits, targets, torch.tensor([True, False]))
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    _check_all_masked(
        lambda x, t, m: attribute_loss(x, t, m), torch.randn(2, 3), [torch.full((2, 3), float("nan"))]
    )


# ---------------------------------------------------------------- difference (orthogonality) loss


def test_difference_loss_hand_value():
    # S rows normalised: (1,0), (0,1); P rows normalised: (0.6,0.8), (1,0)
    # S^T P = P_hat -> ||.||_F^2 = 0.36 + 0.64 + 1 = 2; / N^2 = 4 -> 0.5
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert difference_loss(s, p).item() == pytest.approx(0.5, rel=1e-6)


def test_difference_loss_zero_for_orthogonal_features():
    # shared feature columns (1,1), (1,1) are orthogonal over the batch to the private column (1,-1)
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0]], requires_grad=True)
    p = torch.tensor([[1.0], [-1.0]], requires_grad=True)
    loss = difference_loss(s, p)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(s.grad).all() and torch.isfinite(p.grad).all()


def test_bad_mask_dtype_rejected():
    with pytest.raises(InvalidInputError):
        masked_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.ones(2))


def test_distill_hand_value_and_zero_at_the_target():
    t = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    s = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]]), dim=1)
    mask = torch.ones(3, dtype=torch.bool)
    assert float(distill_loss(t, t, mask)) == pytest.approx(0.0, abs=1e-7)
    r = 1 / math.sqrt(2)                                    # cosines to the targets: 1, 0, 1
    student_sim = torch.tensor([[1, 1, r], [1, 1, r], [r, r, 1]])
    teacher_sim = torch.tensor([[1, 0, r], [0, 1, r], [r, r, 1]])
    off = ~torch.eye(3, dtype=torch.bool)
    want = (1 / 3) + float(((student_sim - teacher_sim)[off] ** 2).mean())
    assert float(distill_loss(s, t, mask)) == pytest.approx(want, rel=1e-6)
    assert float(distill_loss(s, t, mask, relation_weight=0.0)) == pytest.approx(1 / 3, rel=1e-6)


def test_distill_masked_faces_inert_even_with_nan_targets():
    s = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1).requires_grad_()
    t = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    t[2] = float("nan")
    mask = torch.tensor([True, True, False, True])
    loss = distill_loss(s, t, mask)
    loss.backward()
    keep = torch.tensor([0, 1, 3])
    alone = distill_loss(s[keep].detach(), t[keep], torch.ones(3, dtype=torch.bool))
    assert float(loss.detach()) == pytest.approx(float(alone))
    assert torch.isfinite(s.grad).all() and torch.equal(s.grad[2], torch.zeros(8))
    none = distill_loss(s, t, torch.zeros(4, dtype=torch.bool))
    none.backward()
    assert float(none.detach()) == 0.0


def test_age_loss_is_smallest_at_the_true_age_and_ignores_masked_faces():
    years = torch.arange(101.0)
    def peaked(age: float) -> torch.Tensor:
        return (-0.5 * ((years - age) / 2.0) ** 2).unsqueeze(0)
    ages, mask = torch.tensor([30.0]), torch.tensor([True])
    at = float(age_loss(peaked(30), ages, mask))
    assert at < float(age_loss(peaked(34), ages, mask)) < float(age_loss(peaked(50), ages, mask))
    logits = torch.cat([peaked(30), peaked(70)]).requires_grad_()
    loss = age_loss(logits, torch.tensor([30.0, float("nan")]), torch.tensor([True, False]))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(at, rel=1e-6) and torch.equal(logits.grad[1], torch.zeros(101))
    assert float(age_loss(peaked(100), torch.tensor([116.0]), mask)) == pytest.approx(
        float(age_loss(peaked(100), torch.tensor([100.0]), mask)))                 # ages past the last year clip


@pytest.mark.parametrize("bad", [torch.ones(4), torch.ones(3, dtype=torch.bool), [True] * 4])
def test_every_masked_loss_and_metric_refuses_the_same_bad_masks(bad) -> None:
    from facemtl.evaluate.attributes import classification_accuracy
    logits, labels = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(InvalidInputError, match="mask must be a boolean array of shape"):
        masked_cross_entropy(logits, labels, bad)
    with pytest.raises(InvalidInputError, match="mask must be a boolean array of shape"):
        attribute_loss(logits, torch.zeros(4, 3), bad)
    if isinstance(bad, torch.Tensor):                                     # a list is a fine NumPy mask
        with pytest.raises(InvalidInputError, match="mask must be a boolean array of shape"):
            classification_accuracy(np.zeros(4), np.zeros(4), bad.numpy())


def test_keep_loss_is_zero_on_the_old_outputs_and_grows_away_from_them() -> None:
    from facemtl.train.losses import keep_loss
    g = torch.Generator().manual_seed(0)
    old = {"landmarks": torch.rand(4, 5, 2, generator=g) * 64, "attributes": torch.randn(4, 40, generator=g),
           "pose": torch.randn(4, 5, generator=g), "embedding": torch.randn(4, 8, generator=g)}
    assert float(keep_loss(dict(old), old)) == pytest.approx(0.0, abs=1e-6)
    moved = {k: (v + torch.linspace(0, 3, v.shape[-1])).requires_grad_() for k, v in old.items() if k != "embedding"}
    loss = keep_loss(moved, old)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in moved.values())
    only = keep_loss({"landmarks": moved["landmarks"]}, old)           # a head missing on one side is left out
    assert float(only.detach()) == pytest.approx(3.0 ** 2 / 2, rel=1e-4)  # x moves 0 px, y 3 px: mean of 0 and 9
    with pytest.raises(InvalidInputError, match="keep_loss"):
        keep_loss({"embedding": old["embedding"]}, old)
