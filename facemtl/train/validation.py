"""Per-epoch validation: one metric and one loss per task, on held-out data the training never sees.

- identity: top-1 accuracy on held-out images of the training identities;
- verification: 10-fold accuracy on same/different pairs of unseen people (CelebA's val identities);
- landmarks: inter-ocular NME on held-out MTFL faces, crops jittered as a detector would misplace them;
- attributes: mean accuracy over the labelled attributes (CelebA val);
- pose: accuracy on held-out MTFL faces;
- age: mean absolute error in years on UTKFace's val split.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch

from ..data.mixed import MultiTaskDataset, collate
from ..evaluate.attributes import attribute_accuracy
from ..evaluate.landmarks import landmark_errors
from ..evaluate.verification import cosine_scores, make_identity_pairs, verification_accuracy
from ..model.heads import attribute_probabilities, expected_age
from ..model.multitask import MultiTaskNet
from .losses import task_losses

METRIC_OF_TASK = {"identity": "identity_top1", "verification": "verification_acc", "landmarks": "landmarks_nme",
                  "attributes": "attributes_acc", "pose": "pose_acc", "age": "age_mae"}
LOWER_IS_BETTER = {"landmarks_nme", "age_mae"}


@dataclass
class ValidationSet:
    """A held-out dataset with fixed per-sample seeds (so jittered crops are the same every epoch)."""

    dataset: MultiTaskDataset
    indices: np.ndarray
    cached: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] | None = None
    """The frozen network's features and the targets of each batch (:func:`with_features`): ``predict`` then
    runs the heads alone on them, without reading the crops again."""


def _batches(vset: ValidationSet, batch: int) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The set's crops and targets in batches, each crop with its fixed seed."""
    for start in range(0, len(vset.indices), batch):
        idx = vset.indices[start:start + batch]
        yield collate([vset.dataset.get(int(i), seed=int(i) + 1_000_003) for i in idx])


@torch.no_grad()
def with_features(model: MultiTaskNet, vset: ValidationSet, device: torch.device, batch: int = 256
                  ) -> ValidationSet:
    """The set with the frozen network's features of its crops computed once (for head-only training)."""
    cached = [({k: v.float() for k, v in model.shared_features(images.to(device)).items()}, tg)
              for images, tg in _batches(vset, batch)]
    return replace(vset, cached=cached)


@torch.no_grad()
def predict(model: MultiTaskNet, vset: ValidationSet, device: torch.device, batch: int = 256,
            margin: float = 1.0) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    """Outputs, targets and mean task losses of ``model`` over a validation set."""
    outputs: dict[str, list[np.ndarray]] = {}
    targets: dict[str, list[np.ndarray]] = {}
    loss_sums: dict[str, float] = {}
    batches = 0
    for inputs, tg in vset.cached if vset.cached is not None else _batches(vset, batch):
        out = model.head_outputs(inputs) if vset.cached is not None else model(inputs.to(device))
        tg_dev = {k: v.to(device) for k, v in tg.items()}
        tg_dev["pair_id"] = tg_dev["identity"]
        for task, value in task_losses(out, tg_dev, model.config, margin=margin).items():
            loss_sums[task] = loss_sums.get(task, 0.0) + float(value)
        batches += 1
        for k, v in out.items():
            outputs.setdefault(k, []).append(v.float().cpu().numpy())
        for k, v in tg.items():
            targets.setdefault(k, []).append(v.numpy())
    cat_out = {k: np.concatenate(v) for k, v in outputs.items()}
    cat_tg = {k: np.concatenate(v) for k, v in targets.items()}
    return cat_out, cat_tg, {k: v / max(1, batches) for k, v in loss_sums.items()}


def validate(model: MultiTaskNet, sets: dict[str, ValidationSet], device: torch.device,
             margin: float = 1.0) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, validation losses) for every task the model has and a validation set exists for."""
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    losses: dict[str, float] = {}
    tasks = set(model.config.tasks)
    if "identity" in tasks and "identity" in sets:
        out, tg, ls = predict(model, sets["identity"], device, margin=margin)
        metrics["identity_top1"] = float((out["identity"].argmax(1) == tg["identity"]).mean())
        losses["identity"] = ls["identity"]
    if "verification" in tasks and "verification" in sets:
        out, tg, ls = predict(model, sets["verification"], device, margin=margin)
        a, b, same, fold = make_identity_pairs(tg["identity"], seed=1)
        result = verification_accuracy(cosine_scores(out["embedding"][a], out["embedding"][b]), same, fold)
        metrics["verification_acc"] = float(result.accuracy)
        losses["verification"] = ls.get("verification", float("nan"))
    if "attributes" in tasks and "attributes" in sets:
        out, tg, ls = predict(model, sets["attributes"], device, margin=margin)
        names = list(model.config.attribute_names)
        probs = attribute_probabilities(out["attributes"])
        res = attribute_accuracy(probs, tg["attributes"], names, mask=tg["attr_mask"])
        metrics["attributes_acc"] = float(res.mean_accuracy)
        losses["attributes"] = ls["attributes"]
    if tasks & {"landmarks", "pose"} and "landmarks" in sets:
        out, tg, ls = predict(model, sets["landmarks"], device, margin=margin)
        if "landmarks" in tasks:
            metrics["landmarks_nme"] = float(landmark_errors(out["landmarks"], tg["landmarks"]).mean())
            losses["landmarks"] = ls["landmarks"]
        if "pose" in tasks:
            metrics["pose_acc"] = float((out["pose"].argmax(1) == tg["pose"]).mean())
            losses["pose"] = ls["pose"]
    if "age" in tasks and "age" in sets:
        out, tg, ls = predict(model, sets["age"], device, margin=margin)
        years = expected_age(torch.from_numpy(out["age"])).numpy()
        metrics["age_mae"] = float(np.abs(years - tg["age"])[tg["age_mask"]].mean())
        losses["age"] = ls["age"]
    model.train(was_training)
    return metrics, losses


def improved(metric: str, new: float, old: float) -> bool:
    """Whether ``new`` is better than ``old`` for this metric."""
    return new < old if metric in LOWER_IS_BETTER else new > old
