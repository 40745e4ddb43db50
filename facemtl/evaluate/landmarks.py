"""Landmark metrics: inter-ocular normalised error (NME), failure rate and the cumulative error distribution."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from facemtl.errors import InvalidInputError
from facemtl.types import LANDMARK_NAMES


def _check_points(pred: ArrayLike, gt: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate two (N, 5, 2) finite landmark arrays of equal shape and return them as float64."""
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if p.ndim != 3 or p.shape[1:] != (5, 2) or p.shape != g.shape:
        raise InvalidInputError(f"pred and gt must both be (N, 5, 2), got {p.shape} and {g.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(g))):
        raise InvalidInputError("landmarks contain NaN or infinite values")
    return p, g


def landmark_point_errors(pred: ArrayLike, gt: ArrayLike) -> NDArray[np.float64]:
    """Per-point error (N, 5): distance to the ground truth divided by the inter-ocular distance of gt."""
    p, g = _check_points(pred, gt)
    iod = np.linalg.norm(g[:, 0] - g[:, 1], axis=1)
    bad = np.flatnonzero(iod <= 0)
    if bad.size:
        raise InvalidInputError(f"zero inter-ocular distance in ground truth for faces {bad[:10].tolist()}")
    return np.linalg.norm(p - g, axis=2) / iod[:, None]


def landmark_errors(pred: ArrayLike, gt: ArrayLike) -> NDArray[np.float64]:
    """Per-face NME (N,): mean point-to-point error over the 5 points / distance between the gt eye centres."""
    return landmark_point_errors(pred, gt).mean(axis=1)


@dataclass(frozen=True)
class LandmarkResult:
    """Summary of landmark errors: NME as fractions of the inter-ocular distance, failures and the CED curve."""

    n: int
    mean_nme: float
    median_nme: float
    failure_rate: float
    failure_threshold: float
    per_point_nme: NDArray[np.float64] | None
    ced_x: NDArray[np.float64]
    ced_y: NDArray[np.float64]
    ced_auc: float
    ced_auc_limit: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with NME and failure rate in percent (curves left out)."""
        out: dict[str, Any] = {
            "n": self.n,
            "mean_nme_percent": 100.0 * self.mean_nme,
            "median_nme_percent": 100.0 * self.median_nme,
            "failure_rate_percent": 100.0 * self.failure_rate,
            "failure_threshold_percent": 100.0 * self.failure_threshold,
            "ced_auc": self.ced_auc,
            "ced_auc_limit_percent": 100.0 * self.ced_auc_limit,
        }
        if self.per_point_nme is not None:
            out["per_point_nme_percent"] = {
                name: 100.0 * float(v) for name, v in zip(LANDMARK_NAMES, self.per_point_nme, strict=True)
            }
        return out


def landmark_metrics(
    errors: ArrayLike,
    failure_threshold: float = 0.10,
    auc_limit: float = 0.10,
    ced_max: float = 0.20,
    ced_steps: int = 200,
) -> LandmarkResult:
    """Summarise NME values: mean, failure rate (error > threshold), per-point means, CED curve and its AUC.

    ``errors`` is either (N,) per-face NME or (N, 5) per-point errors (from ``landmark_point_errors``), in
    which case the per-point means are reported too and the per-face error is the mean over the points.
    The CED curve is sampled at ``ced_steps`` equal steps from 0 to ``ced_max`` (201 points by default) and
    gives the fraction of faces with error <= x. ``ced_auc`` is the exact area under the empirical CED from
    0 to ``auc_limit`` divided by ``auc_limit`` (1 = every face perfect, 0 = every face beyond the limit).
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim == 2 and e.shape[1] == 5:
        per_point: NDArray[np.float64] | None = e.mean(axis=0)
        e = e.mean(axis=1)
    elif e.ndim == 1:
        per_point = None
    else:
        raise InvalidInputError(f"errors must be (N,) or (N, 5), got {e.shape}")
    if e.size == 0:
        raise InvalidInputError("no errors to summarise")
    if not np.all(np.isfinite(e)) or np.any(e < 0):
        raise InvalidInputError("errors must be finite and non-negative")
    if failure_threshold <= 0 or auc_limit <= 0 or ced_max <= 0 or ced_steps < 1:
        raise InvalidInputError("failure_threshold, auc_limit, ced_max and ced_steps must be positive")
    x = np.linspace(0.0, ced_max, ced_steps + 1)
    y = np.searchsorted(np.sort(e), x, side="right") / e.size
    # Area of the step CDF on [0, L] = mean over faces of (L - e) clipped at 0.
    area = np.clip(auc_limit - e, 0.0, None).mean() / auc_limit
    return LandmarkResult(
        n=int(e.size),
        mean_nme=float(e.mean()),
        median_nme=float(np.median(e)),
        failure_rate=float(np.mean(e > failure_threshold)),
        failure_threshold=float(failure_threshold),
        per_point_nme=per_point,
        ced_x=x,
        ced_y=y,
        ced_auc=float(area),
        ced_auc_limit=float(auc_limit),
    )
