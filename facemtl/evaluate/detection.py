"""Face detection metrics: VOC-style AP (overall, per size band) and detector agreement; the ground truth comes
from ``facemtl.data.widerface``.

Boxes are ``x1, y1, x2, y2`` in pixels; a box's area and height are ``(x2 - x1) * (y2 - y1)`` and ``y2 - y1``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..data.widerface import WiderFaces
from ..errors import InvalidInputError

SIZE_BANDS: dict[str, tuple[float, float]] = {
    "<32 px": (0.0, 32.0),
    "32-96 px": (32.0, 96.0),
    ">96 px": (96.0, math.inf),
}
"""Face-height bands of ``detection_report``: [lo, hi) in pixels of box height."""


GroundTruth = Mapping[str, Union[WiderFaces, ArrayLike]]
Detections = Mapping[str, tuple[ArrayLike, ArrayLike]]


def _nan_to_none(value: float) -> float | None:
    """A float for JSON: NaN becomes None."""
    return None if math.isnan(value) else float(value)


def box_iou(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """Pairwise IoU (k, n) of two box arrays (k, 4) and (n, 4); 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0.0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0.0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0.0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _gt_arrays(value: WiderFaces | ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """(boxes, invalid) of one image's ground truth: WiderFaces, or a plain (n, 4) box array (all valid)."""
    if isinstance(value, WiderFaces):
        return value.boxes, value.invalid
    boxes = np.asarray(value, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidInputError(f"ground-truth boxes must be (n, 4), got {boxes.shape}")
    return boxes, np.zeros(len(boxes), dtype=bool)


def _det_arrays(name: str, value: Any) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(boxes (k, 4), scores (k,)) of one image's detections, validated."""
    try:
        boxes, scores = value
    except (TypeError, ValueError):
        raise InvalidInputError(f"detections[{name!r}] must be a (boxes, scores) pair") from None
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(scores) != len(boxes):
        raise InvalidInputError(
            f"detections[{name!r}]: boxes must be (k, 4) with k scores, got {boxes.shape}, {scores.shape}"
        )
    if not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
        raise InvalidInputError(f"detections[{name!r}] contain NaN or infinite values")
    return boxes, scores


def _in_band(heights: NDArray[np.float64], band: tuple[float, float] | None) -> NDArray[np.bool_]:
    """Which heights fall in [lo, hi) (all of them when band is None)."""
    if band is None:
        return np.ones(heights.shape, dtype=bool)
    return (heights >= band[0]) & (heights < band[1])


def _scorable(boxes: NDArray[np.float64], invalid: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Faces that can be positives: not marked invalid and of non-zero width and height (IoU needs area)."""
    return ~invalid & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _label_image(
    boxes: NDArray[np.float64],
    scores: NDArray[np.float64],
    gt_boxes: NDArray[np.float64],
    gt_counted: NDArray[np.bool_],
    iou_threshold: float,
    band: tuple[float, float] | None,
) -> tuple[NDArray[np.int8], int]:
    """Label one image's detections +1 TP, 0 FP, -1 ignored (VOC matching, vectorised); also count positives.

    Each detection is tied to its highest-IoU ground-truth face. If that IoU reaches the threshold: the
    detection is ignored when the face is not counted (invalid or outside the band); otherwise the
    highest-scoring such detection is the TP and the others are duplicates (FP). Below the threshold the
    detection is an FP when its own height lies in the band, else ignored.
    """
    labels = np.zeros(len(boxes), dtype=np.int8)
    if len(boxes) == 0:
        return labels, int(gt_counted.sum())
    if len(gt_boxes):
        iou = box_iou(boxes, gt_boxes)
        best = iou.argmax(axis=1)
        hit = iou[np.arange(len(boxes)), best] >= iou_threshold
    else:
        best = np.zeros(len(boxes), dtype=np.int64)
        hit = np.zeros(len(boxes), dtype=bool)
    counted_hit = hit & gt_counted[best] if len(gt_boxes) else hit
    order = np.argsort(-scores, kind="stable")
    hit_idx = order[counted_hit[order]]  # counted hits in descending score order
    _, first = np.unique(best[hit_idx], return_index=True)
    labels[hit_idx[first]] = 1
    labels[hit & ~counted_hit] = -1
    own_height = boxes[:, 3] - boxes[:, 1]
    labels[~hit & ~_in_band(own_height, band)] = -1
    return labels, int(gt_counted.sum())


def _voc_ap(recall: NDArray[np.float64], precision: NDArray[np.float64]) -> float:
    """All-point interpolated AP: area under the PR curve after making precision monotone non-increasing."""
    mrec = np.r_[0.0, recall, 1.0]
    mpre = np.r_[0.0, precision, 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


@dataclass(frozen=True)
class DetectionResult:
    """AP and the precision-recall curve of a detector against ground truth (one point per counted detection)."""

    ap: float
    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    scores: NDArray[np.float64]
    n_positives: int
    n_detections: int
    n_ignored: int
    tp: int
    fp: int
    iou_threshold: float
    height_band: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (curves left out; NaN AP and infinite band ends become None)."""
        band = None
        if self.height_band is not None:
            band = [None if math.isinf(v) else float(v) for v in self.height_band]
        return {
            "ap": _nan_to_none(self.ap),
            "n_positives": self.n_positives,
            "n_detections": self.n_detections,
            "n_ignored": self.n_ignored,
            "tp": self.tp,
            "fp": self.fp,
            "recall": float(self.recall[-1]) if len(self.recall) else 0.0,
            "iou_threshold": self.iou_threshold,
            "height_band": band,
        }


def average_precision(
    detections: Detections,
    ground_truth: GroundTruth,
    iou_threshold: float = 0.5,
    height_band: tuple[float, float] | None = None,
) -> DetectionResult:
    """PASCAL-VOC-style AP: detections ranked by score over all images, greedy matching, all-point envelope AP.

    Matching is the VOC devkit's: each detection goes to the ground-truth face it overlaps most; at IoU >=
    ``iou_threshold`` the highest-scoring detection of a face is a TP and later ones are duplicates (FP).
    Faces marked invalid are not positives, and detections on them are ignored (neither TP nor FP); so are
    degenerate faces of zero width or height, which no box can overlap (the WIDER val file has two).
    With ``height_band = (lo, hi)`` only valid faces of box height in [lo, hi) are positives; detections on
    faces outside the band are ignored, and an unmatched detection is an FP only if its own height is in the
    band (the usual way to score a size subset without penalising correct finds of other sizes). Images in
    ``ground_truth`` without detections count as missed; detections on images absent from the ground truth
    raise InvalidInputError (almost always a key mismatch). AP is NaN when there is no positive.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise InvalidInputError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if height_band is not None and not height_band[0] < height_band[1]:
        raise InvalidInputError(f"height_band must be (lo, hi) with lo < hi, got {height_band}")
    unknown = [k for k in detections if k not in ground_truth]
    if unknown:
        raise InvalidInputError(
            f"detections for {len(unknown)} images missing from the ground truth, e.g. {unknown[0]!r}"
        )
    all_scores: list[NDArray[np.float64]] = []
    all_labels: list[NDArray[np.int8]] = []
    n_pos = 0
    for name, gt_value in ground_truth.items():
        gt_boxes, invalid = _gt_arrays(gt_value)
        counted = _scorable(gt_boxes, invalid) & _in_band(gt_boxes[:, 3] - gt_boxes[:, 1], height_band)
        if name in detections:
            boxes, scores = _det_arrays(name, detections[name])
        else:
            boxes, scores = np.zeros((0, 4)), np.zeros(0)
        labels, pos = _label_image(boxes, scores, gt_boxes, counted, iou_threshold, height_band)
        n_pos += pos
        all_scores.append(scores)
        all_labels.append(labels)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, dtype=np.int8)
    kept = labels >= 0
    order = np.argsort(-scores[kept], kind="stable")
    tp_flags = labels[kept][order] == 1
    ctp = np.cumsum(tp_flags)
    cfp = np.cumsum(~tp_flags)
    precision = ctp / np.maximum(ctp + cfp, 1)
    recall = ctp / n_pos if n_pos else np.zeros(len(ctp))
    ap = _voc_ap(recall, precision) if n_pos else math.nan
    return DetectionResult(
        ap=ap,
        precision=precision.astype(np.float64),
        recall=recall.astype(np.float64),
        scores=scores[kept][order],
        n_positives=n_pos,
        n_detections=int(kept.sum()),
        n_ignored=int((~kept).sum()),
        tp=int(ctp[-1]) if len(ctp) else 0,
        fp=int(cfp[-1]) if len(cfp) else 0,
        iou_threshold=float(iou_threshold),
        height_band=height_band,
    )


def detection_report(detections: Detections, gt: GroundTruth, iou_threshold: float = 0.5) -> dict[str, Any]:
    """AP overall and per face-height band (<32, 32-96, >96 px) with face counts, as a JSON-ready dict.

    ``n_ignored_faces`` counts the faces that are never positives: marked invalid, or of zero width/height.
    """
    bands: dict[str, tuple[float, float] | None] = {"overall": None, **SIZE_BANDS}
    report: dict[str, Any] = {
        name: average_precision(detections, gt, iou_threshold, band).to_dict() for name, band in bands.items()
    }
    n_faces = 0
    n_invalid = 0
    n_ignored = 0
    for value in gt.values():
        boxes, invalid = _gt_arrays(value)
        n_faces += len(invalid)
        n_invalid += int(invalid.sum())
        n_ignored += int((~_scorable(boxes, invalid)).sum())
    report["n_images"] = len(gt)
    report["n_faces"] = n_faces
    report["n_invalid_faces"] = n_invalid
    report["n_ignored_faces"] = n_ignored
    report["n_detections"] = int(sum(len(_det_arrays(k, v)[1]) for k, v in detections.items()))
    report["iou_threshold"] = float(iou_threshold)
    return report


@dataclass(frozen=True)
class MatchResult:
    """How far two detectors find the same faces: hits in each direction and pooled over both."""

    n_a: int
    n_b: int
    a_in_b: float
    b_in_a: float
    rate: float
    iou: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN rates become None)."""
        return {
            "n_a": self.n_a,
            "n_b": self.n_b,
            "a_in_b": _nan_to_none(self.a_in_b),
            "b_in_a": _nan_to_none(self.b_in_a),
            "rate": _nan_to_none(self.rate),
            "iou": self.iou,
        }


def _boxes_only(value: Any) -> NDArray[np.float64]:
    """The (k, 4) boxes of a dict value that is either a box array or a (boxes, scores) tuple."""
    if isinstance(value, tuple) and len(value) == 2:
        value = value[0]
    boxes = np.asarray(value, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InvalidInputError(f"boxes must be (k, 4), got {boxes.shape}")
    return boxes


def match_rate(boxes_a: Mapping[str, Any], boxes_b: Mapping[str, Any], iou: float = 0.9) -> MatchResult:
    """Agreement of two detectors: fraction of boxes for which the other detector has a box with IoU >= iou.

    Values are (k, 4) box arrays or (boxes, scores) tuples, keyed by image; a missing key means no box.
    ``a_in_b`` is the fraction of A's boxes that B also has, ``b_in_a`` the reverse, and ``rate`` pools
    both: (A's boxes found by B + B's boxes found by A) / (all boxes of A and B). NaN where nothing is counted.
    """
    if not 0.0 < iou <= 1.0:
        raise InvalidInputError(f"iou must be in (0, 1], got {iou}")
    n_a = n_b = hit_a = hit_b = 0
    for name in dict.fromkeys([*boxes_a, *boxes_b]):
        a = _boxes_only(boxes_a.get(name, np.zeros((0, 4))))
        b = _boxes_only(boxes_b.get(name, np.zeros((0, 4))))
        n_a += len(a)
        n_b += len(b)
        if len(a) and len(b):
            close = box_iou(a, b) >= iou
            hit_a += int(close.any(axis=1).sum())
            hit_b += int(close.any(axis=0).sum())
    return MatchResult(
        n_a=n_a,
        n_b=n_b,
        a_in_b=hit_a / n_a if n_a else math.nan,
        b_in_a=hit_b / n_b if n_b else math.nan,
        rate=(hit_a + hit_b) / (n_a + n_b) if n_a + n_b else math.nan,
        iou=float(iou),
    )
