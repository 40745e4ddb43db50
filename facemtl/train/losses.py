"""Masked multi-task losses (identity CE plain or ArcFace margin, DeepID2 contrastive, landmarks, attributes,
age, distillation) and the per-task losses of one batch (:func:`task_losses`).

Every task loss takes a validity mask, so one batch can mix datasets that label different tasks. The rule
all of them keep: **a masked-out sample changes neither the loss value nor any gradient**, even when its
label or target is garbage (NaN, -1, out of range). They therefore *select* the valid rows (boolean
indexing) before computing anything, instead of multiplying a per-sample loss by the mask (``0 * NaN`` is
NaN). The gradient that reaches a masked-out input is exactly zero.

When no sample is valid, a loss returns ``selected.sum() * 0.0`` computed on the *selected, empty* tensor:
a float zero that is still part of the autograd graph, so ``backward()`` works and gives zero gradients
(never NaN). Losses are computed in float32 whatever the input dtype (mixed precision safe).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, check_mask
from ..model.multitask import ModelConfig

__all__ = [
    "task_losses",
    "masked_cross_entropy",
    "margin_logits",
    "contrastive_loss",
    "pair_counts",
    "landmark_loss",
    "attribute_loss",
    "distill_loss",
    "keep_loss",
    "age_loss",
]


def _empty_zero(selected: torch.Tensor) -> torch.Tensor:
    """A float32 zero connected to the graph of ``selected`` (an empty selection)."""
    return selected.float().sum() * 0.0


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Softmax cross-entropy of ``logits (N, C)`` against ``labels (N,)``, averaged over valid samples.

    Labels of masked-out samples are never read (they may be -1 or out of range).
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise InvalidInputError(
            f"logits (N,C) and labels (N,) expected, got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    check_mask(mask, (logits.shape[0],))
    sel_logits = logits[mask].float()
    if sel_logits.shape[0] == 0:
        return _empty_zero(sel_logits)
    return F.cross_entropy(sel_logits, labels[mask].long(), label_smoothing=label_smoothing)


def margin_logits(
    cosine: torch.Tensor, labels: torch.Tensor, margin: float = 0.5, scale: float = 32.0
) -> torch.Tensor:
    """Additive angular margin (ArcFace) logits from ``cosine (N, C)`` similarities to class centres.

    Returns ``scale * cos(theta + margin)`` at each sample's true class and ``scale * cos(theta)`` elsewhere.
    Where ``theta + margin`` would pass pi (``cos theta <= cos(pi - m)``) the monotone ArcFace fallback
    ``cos theta - m * sin(pi - m)`` is used instead, so the target logit keeps decreasing with theta. The
    sine is computed as ``sqrt(clamp(1 - cos^2, min=1e-12))`` and the cosine clamped to [-1, 1], so the
    gradient stays finite at theta = 0. A label outside ``[0, C)`` (e.g. -1 for a sample without an
    identity) gets no margin: its row is ``scale * cosine`` unchanged. Feed the result to
    :func:`masked_cross_entropy`.
    """
    if cosine.dim() != 2 or labels.shape != cosine.shape[:1]:
        raise InvalidInputError(
            f"cosine (N,C) and labels (N,) expected, got {tuple(cosine.shape)}, {tuple(labels.shape)}"
        )
    n_classes = cosine.shape[1]
    labels = labels.long()
    has_label = (labels >= 0) & (labels < n_classes)
    index = torch.where(has_label, labels, torch.zeros_like(labels)).unsqueeze(1)
    target = cosine.gather(1, index).squeeze(1)
    t = target.float().clamp(-1.0, 1.0)
    sin_t = torch.sqrt((1.0 - t * t).clamp(min=1e-12))
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    threshold = math.cos(math.pi - margin)
    fallback_shift = math.sin(math.pi - margin) * margin
    phi = torch.where(t > threshold, t * cos_m - sin_t * sin_m, t - fallback_shift)
    new_target = torch.where(has_label, phi.to(cosine.dtype), target)
    return cosine.scatter(1, index, new_target.unsqueeze(1)) * scale


def _pair_masks(identities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices ``(i, j)`` of all pairs i < j and a bool tensor marking same-identity pairs."""
    n = identities.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=identities.device)
    return i, j, identities[i] == identities[j]


def pair_counts(identities: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """Numbers of (same-identity, different-identity) pairs i < j among the valid samples, for logging."""
    check_mask(mask, (identities.shape[0],))
    ids = identities[mask]
    n = int(ids.shape[0])
    if n < 2:
        return 0, 0
    _, _, same = _pair_masks(ids)
    n_pos = int(same.sum().item())
    return n_pos, n * (n - 1) // 2 - n_pos


def contrastive_loss(
    embeddings: torch.Tensor, identities: torch.Tensor, mask: torch.Tensor, margin: float
) -> torch.Tensor:
    """DeepID2 verification loss over all pairs i < j of valid samples in the batch.

    For a pair at distance ``d = ||f_i - f_j||``: ``0.5 * d^2`` if the identities match, else
    ``0.5 * max(0, margin - d)^2``. The result is ``0.5 * (mean over positive pairs + mean over negative
    pairs)``, so the balance does not depend on the batch composition; when one kind of pair is absent the
    other kind's mean is returned alone, and with no pair at all a graph-connected zero.

    Squared distances come from the Gram matrix (clamped at 0). The positive branch uses ``d^2`` directly;
    the negative branch takes ``sqrt(clamp(d^2, min=1e-12))``, so coincident embeddings give a finite
    (zero) gradient instead of NaN.
    """
    if embeddings.dim() != 2 or identities.shape != embeddings.shape[:1]:
        raise InvalidInputError(
            f"embeddings (N,D) and identities (N,) expected, got {tuple(embeddings.shape)}, {tuple(identities.shape)}"
        )
    check_mask(mask, (embeddings.shape[0],))
    emb = embeddings[mask].float()
    ids = identities[mask]
    if emb.shape[0] < 2:
        return _empty_zero(emb)
    sq_norm = (emb * emb).sum(dim=1)
    gram = emb @ emb.t()
    i, j, same = _pair_masks(ids)
    d2 = (sq_norm[i] + sq_norm[j] - 2.0 * gram[i, j]).clamp(min=0.0)
    parts = []
    if bool(same.any()):
        parts.append(0.5 * d2[same].mean())
    diff = ~same
    if bool(diff.any()):
        d = torch.sqrt(d2[diff].clamp(min=1e-12))
        parts.append(0.5 * F.relu(margin - d).pow(2).mean())
    if len(parts) == 2:
        return 0.5 * (parts[0] + parts[1])
    return parts[0]


def landmark_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    kind: Literal["l2", "wing"] = "l2",
    wing_w: float = 0.04,
    wing_eps: float = 0.008,
) -> torch.Tensor:
    """Landmark regression loss on ``(N, 5, 2)`` coordinates normalised to [0, 1] of the crop.

    ``"l2"``: mean squared error over the valid samples' coordinates (= per-sample sum of squared errors
    over the 10 coordinates / 10, averaged over valid samples). ``"wing"`` (Feng et al., CVPR 2018): per
    coordinate error ``x``, ``w * ln(1 + |x| / eps)`` if ``|x| < w`` else ``|x| - C`` with
    ``C = w - w * ln(1 + w / eps)`` (continuous at ``|x| = w``), averaged over the valid coordinates.
    """
    if pred.shape != target.shape or pred.dim() < 2:
        raise InvalidInputError(
            f"pred and target must have the same (N, ...) shape, got {tuple(pred.shape)}, {tuple(target.shape)}"
        )
    check_mask(mask, (pred.shape[0],))
    p = pred[mask].float()
    if p.shape[0] == 0:
        return _empty_zero(p)
    err = p - target[mask].float()
    if kind == "l2":
        return (err * err).mean()
    if kind == "wing":
        a = err.abs()
        c = wing_w - wing_w * math.log1p(wing_w / wing_eps)
        return torch.where(a < wing_w, wing_w * torch.log1p(a / wing_eps), a - c).mean()
    raise InvalidInputError(f"unknown landmark loss kind {kind!r} (expected 'l2' or 'wing')")


def attribute_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy with logits for ``(N, A)`` attributes, averaged over the valid *entries*.

    ``mask`` is ``(N, A)`` bool (a dataset may label only some attributes, e.g. MTFL labels 3 of CelebA's
    40); a ``(N,)`` per-sample mask is broadcast over the attributes. ``pos_weight (A,)`` weighs the
    positive term per attribute, as in :func:`torch.nn.functional.binary_cross_entropy_with_logits`;
    ``weight (N, A)`` weighs each entry (``facemtl.data.mixed.attribute_balance``).
    """
    if logits.dim() != 2 or targets.shape != logits.shape:
        raise InvalidInputError(
            f"logits and targets must both be (N,A), got {tuple(logits.shape)}, {tuple(targets.shape)}"
        )
    if isinstance(mask, torch.Tensor) and mask.shape == logits.shape[:1]:
        mask = mask.unsqueeze(1).expand_as(logits)
    check_mask(mask, logits.shape)
    sel = logits[mask].float()
    if sel.shape[0] == 0:
        return _empty_zero(sel)
    pw = None
    if pos_weight is not None:
        if pos_weight.shape != logits.shape[1:]:
            raise InvalidInputError(f"pos_weight must have shape ({logits.shape[1]},), got {tuple(pos_weight.shape)}")
        pw = pos_weight.float().to(sel.device).expand(logits.shape)[mask]
    if weight is not None and weight.shape != logits.shape:
        raise InvalidInputError(f"weight must be (N,A) like the logits, got {tuple(weight.shape)}")
    return F.binary_cross_entropy_with_logits(sel, targets[mask].float(), pos_weight=pw,
                                              weight=None if weight is None else weight[mask].float())


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                 relation_weight: float = 1.0) -> torch.Tensor:
    """Embedding distillation: ``mean(1 - cos(s_i, t_i)) + relation_weight * mean((s_i.s_j - t_i.t_j)^2)``.

    ``student`` and ``teacher`` are ``(N, D)`` L2-normalised embeddings; the first term pulls each face onto
    its target, the second (over pairs i != j of valid faces) makes the batch's similarity matrix the
    teacher's, which is what verification reads. Teacher rows of masked-out faces may be NaN.
    """
    if student.dim() != 2 or teacher.shape != student.shape:
        raise InvalidInputError(f"student and teacher must both be (N,D), got {tuple(student.shape)}, "
                                f"{tuple(teacher.shape)}")
    check_mask(mask, (student.shape[0],))
    s, t = student[mask].float(), teacher[mask].float()
    if s.shape[0] == 0:
        return _empty_zero(s)
    loss = (1.0 - (s * t).sum(1)).mean()
    n = s.shape[0]
    if n >= 2 and relation_weight > 0:
        off = ~torch.eye(n, dtype=torch.bool, device=s.device)
        loss = loss + relation_weight * ((s @ s.t() - t @ t.t())[off] ** 2).mean()
    return loss


KEPT_OUTPUTS = ("landmarks", "attributes", "pose")
"""The outputs :func:`keep_loss` holds near the frozen model's."""


def keep_loss(out: dict[str, torch.Tensor], old: dict[str, torch.Tensor]) -> torch.Tensor:
    """Learning without forgetting: the mean squared landmark difference in crop pixels, plus the KL
    divergence of the attribute probabilities (summed over the attributes) and of the pose distribution from
    the old model's, averaged over every face of the batch (each term where both models have that output; 0
    when the outputs are the old ones)."""
    terms = []
    if "landmarks" in out and "landmarks" in old:
        terms.append(((out["landmarks"].float() - old["landmarks"].float()) ** 2).mean())
    if "attributes" in out and "attributes" in old:
        logits, target = out["attributes"].float(), torch.sigmoid(old["attributes"].float())
        kl = (F.binary_cross_entropy_with_logits(logits, target, reduction="none")
              - F.binary_cross_entropy_with_logits(old["attributes"].float(), target, reduction="none"))
        terms.append(kl.sum(1).mean())
    if "pose" in out and "pose" in old:
        terms.append(F.kl_div(F.log_softmax(out["pose"].float(), 1), F.log_softmax(old["pose"].float(), 1),
                              reduction="batchmean", log_target=True))
    if not terms:
        raise InvalidInputError(f"keep_loss: none of {KEPT_OUTPUTS} is in both models' outputs")
    return torch.stack(terms).sum()


def age_loss(logits: torch.Tensor, ages: torch.Tensor, mask: torch.Tensor, sigma: float = 2.0,
             l1_weight: float = 0.1) -> torch.Tensor:
    """Label-distribution age loss (DLDL-v2, Gao et al. 2018) over whole years ``0..K-1``.

    Cross-entropy of the softmax over years against a Gaussian of width ``sigma`` years centred on the true
    age (clipped to the last year), plus ``l1_weight`` times the absolute error of the expected age, the
    figure that is reported. ``ages`` of masked-out faces may be NaN.
    """
    if logits.dim() != 2 or ages.shape != logits.shape[:1]:
        raise InvalidInputError(f"logits (N,K) and ages (N,) expected, got {tuple(logits.shape)}, {tuple(ages.shape)}")
    check_mask(mask, (logits.shape[0],))
    sel = logits[mask].float()
    if sel.shape[0] == 0:
        return _empty_zero(sel)
    years = torch.arange(sel.shape[1], dtype=torch.float32, device=sel.device)
    y = ages[mask].float().clamp(0, sel.shape[1] - 1)
    target = torch.softmax(-0.5 * ((years[None] - y[:, None]) / sigma) ** 2, dim=1)
    log_p = torch.log_softmax(sel, dim=1)
    expected = log_p.exp() @ years
    return -(target * log_p).sum(1).mean() + l1_weight * (expected - y).abs().mean()


IDENTITY_MARGIN_SCALE = 32.0
LANDMARK_WING_W = 0.04
LANDMARK_WING_EPS = 0.008
"""Wing loss shape in units of the crop size (about 2.6 px and 0.5 px on a 64 px crop)."""


def task_losses(out: dict[str, torch.Tensor], tg: dict[str, torch.Tensor], config: ModelConfig,
                margin: float = 1.0, landmark_kind: str = "l2") -> dict[str, torch.Tensor]:
    """Loss of every task that has at least one valid label in this batch (others are left out).

    Landmarks are in crop pixels (outputs and targets), so the landmark loss (a few px^2, or its wing
    variant) sits on the same scale as the others and the loss weightings need not bridge four orders of
    magnitude.

    ``tg["pair_id"]``/``tg["pair_mask"]`` label the verification pairs (identities, plus one id per face
    for samples whose views are paired); they default to the identities. ``tg["distill"]`` (with
    ``distill_mask``), when a run learns from a teacher, is each face's target for the embedding.
    """
    losses: dict[str, torch.Tensor] = {}
    if "identity" in out and bool(tg["identity_mask"].any()):
        logits = out["identity"]
        if config.identity_margin > 0:
            logits = margin_logits(logits, tg["identity"], config.identity_margin, IDENTITY_MARGIN_SCALE)
        losses["identity"] = masked_cross_entropy(logits, tg["identity"], tg["identity_mask"])
    if "embedding" in out:
        pair_id = tg.get("pair_id", tg["identity"])
        pair_mask = tg.get("pair_mask", tg["identity_mask"])
        if int(pair_mask.sum()) >= 2:
            losses["verification"] = contrastive_loss(out["embedding"], pair_id, pair_mask, margin)
    if "landmarks" in out and bool(tg["landmarks_mask"].any()):
        size = float(config.input_size)
        losses["landmarks"] = landmark_loss(out["landmarks"], tg["landmarks"], tg["landmarks_mask"], landmark_kind,
                                            wing_w=LANDMARK_WING_W * size, wing_eps=LANDMARK_WING_EPS * size)
    if "attributes" in out and bool(tg["attr_mask"].any()):
        losses["attributes"] = attribute_loss(out["attributes"], tg["attributes"], tg["attr_mask"],
                                              weight=tg.get("attr_weight"))
    if "pose" in out and bool(tg["pose_mask"].any()):
        losses["pose"] = masked_cross_entropy(out["pose"], tg["pose"], tg["pose_mask"])
    if "age" in out and "age_mask" in tg and bool(tg["age_mask"].any()):
        losses["age"] = age_loss(out["age"], tg["age"], tg["age_mask"])
    if "embedding" in out and "distill_mask" in tg and bool(tg["distill_mask"].any()):
        losses["distill"] = distill_loss(out["embedding"], tg["distill"], tg["distill_mask"])
    return losses
