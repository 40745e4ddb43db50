"""The per-task losses of one batch, from the network's outputs and the masked targets."""
from __future__ import annotations

import torch

from ..losses import (age_loss, attribute_loss, contrastive_loss, distill_loss, landmark_loss, margin_logits,
                      masked_cross_entropy)
from ..model.multitask import ModelConfig

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
        losses["attributes"] = attribute_loss(out["attributes"], tg["attributes"], tg["attr_mask"])
    if "pose" in out and bool(tg["pose_mask"].any()):
        losses["pose"] = masked_cross_entropy(out["pose"], tg["pose"], tg["pose_mask"])
    if "age" in out and "age_mask" in tg and bool(tg["age_mask"].any()):
        losses["age"] = age_loss(out["age"], tg["age"], tg["age_mask"])
    if "embedding" in out and "distill_mask" in tg and bool(tg["distill_mask"].any()):
        losses["distill"] = distill_loss(out["embedding"], tg["distill"], tg["distill_mask"])
    return losses
