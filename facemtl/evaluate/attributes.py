"""Attribute metrics: per-attribute accuracy and balanced accuracy with validity masks, and a plain accuracy helper."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from facemtl.errors import InvalidInputError, check_mask


def _ratio(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """Element-wise num / den with NaN where den is 0 (no division warnings)."""
    return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den > 0)


def _json_float(value: float) -> float | None:
    """A float for JSON: NaN becomes None."""
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class AttributeResult:
    """Per-attribute accuracy, the rate on each class and their mean (balanced accuracy), the means over
    attributes, and the label counts behind them."""

    names: tuple[str, ...]
    accuracy: NDArray[np.float64]
    balanced_accuracy: NDArray[np.float64]
    positive_rate: NDArray[np.float64]
    negative_rate: NDArray[np.float64]
    n_valid: NDArray[np.int64]
    n_positive: NDArray[np.int64]
    mean_accuracy: float
    mean_balanced_accuracy: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; an attribute without valid labels has null accuracies."""
        return {
            "mean_accuracy": _json_float(self.mean_accuracy),
            "mean_balanced_accuracy": _json_float(self.mean_balanced_accuracy),
            "threshold": self.threshold,
            "per_attribute": {
                name: {
                    "accuracy": _json_float(float(self.accuracy[i])),
                    "balanced_accuracy": _json_float(float(self.balanced_accuracy[i])),
                    "positive_rate": _json_float(float(self.positive_rate[i])),
                    "negative_rate": _json_float(float(self.negative_rate[i])),
                    "n": int(self.n_valid[i]),
                    "n_positive": int(self.n_positive[i]),
                }
                for i, name in enumerate(self.names)
            },
        }


def attribute_accuracy(
    probs: ArrayLike,
    targets: ArrayLike,
    names: Sequence[str],
    mask: ArrayLike | None = None,
    threshold: float = 0.5,
) -> AttributeResult:
    """Score (N, A) attribute probabilities against {0,1} targets, ignoring entries where mask is False.

    An attribute is predicted present when ``prob >= threshold``. Balanced accuracy is the mean of the true
    positive and true negative rates (``positive_rate``, ``negative_rate``: NaN where a class has no label);
    when only one class occurs among an attribute's valid labels it is that class's rate alone, and NaN when
    the attribute has no valid label. Means run over the attributes with at least one valid label. Target values under a False mask are never read (NaN is fine there).
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if p.ndim != 2 or t.shape != p.shape:
        raise InvalidInputError(f"probs and targets must both be (N, A), got {p.shape} and {t.shape}")
    names = tuple(names)
    if len(names) != p.shape[1]:
        raise InvalidInputError(f"{len(names)} names given for {p.shape[1]} attributes")
    m = np.ones(p.shape, dtype=bool) if mask is None else check_mask(np.asarray(mask), p.shape)
    if not np.isin(t[m], (0.0, 1.0)).all():
        raise InvalidInputError("targets must be 0 or 1 wherever the mask is True")
    if np.isnan(p[m]).any():
        raise InvalidInputError("probs contain NaN at valid entries")
    pred = p >= threshold
    truth = t == 1.0
    pos = m & truth
    neg = m & ~truth
    n_pos = pos.sum(axis=0)
    n_neg = neg.sum(axis=0)
    tp = (pos & pred).sum(axis=0)
    tn = (neg & ~pred).sum(axis=0)
    n_valid = n_pos + n_neg
    accuracy = _ratio((tp + tn).astype(np.float64), n_valid.astype(np.float64))
    rates = np.stack([_ratio(tp.astype(np.float64), n_pos.astype(np.float64)),
                      _ratio(tn.astype(np.float64), n_neg.astype(np.float64))])
    n_rates = np.isfinite(rates).sum(axis=0)
    balanced = _ratio(np.nansum(rates, axis=0), n_rates.astype(np.float64))
    has = n_valid > 0
    return AttributeResult(
        names=names,
        accuracy=accuracy,
        balanced_accuracy=balanced,
        positive_rate=rates[0],
        negative_rate=rates[1],
        n_valid=n_valid.astype(np.int64),
        n_positive=n_pos.astype(np.int64),
        mean_accuracy=float(accuracy[has].mean()) if has.any() else math.nan,
        mean_balanced_accuracy=float(balanced[has].mean()) if has.any() else math.nan,
        threshold=float(threshold),
    )


def classification_accuracy(pred_labels: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Fraction of valid samples whose predicted class equals the label (NaN when none is valid).

    ``pred_labels`` may be class indices (N,) or class scores (N, C), in which case the arg-max is used.
    """
    pred = np.asarray(pred_labels)
    y = np.asarray(labels)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.ndim != 1 or y.shape != pred.shape:
        raise InvalidInputError(f"pred_labels and labels must describe the same N samples, got {pred.shape}, {y.shape}")
    m = np.ones(y.shape, dtype=bool) if mask is None else check_mask(np.asarray(mask), y.shape)
    if not m.any():
        return math.nan
    return float(np.mean(pred[m] == y[m]))
