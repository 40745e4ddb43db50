"""Age and gender by group: mean absolute age error and gender accuracy overall and within each age band,
gender and (UTKFace's) race group. Race labels are used to measure only; no model predicts them."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

AGE_BANDS: tuple[tuple[str, int, int], ...] = (("0-12", 0, 12), ("13-19", 13, 19), ("20-39", 20, 39),
                                              ("40-59", 40, 59), ("60+", 60, 1000))
"""Age bands as (name, first year, last year)."""


def band_of(ages: np.ndarray) -> np.ndarray:
    """The index into AGE_BANDS of each whole age."""
    ages = np.asarray(ages)
    out = np.full(ages.shape, -1, np.int64)
    for k, (_, lo, hi) in enumerate(AGE_BANDS):
        out[(ages >= lo) & (ages <= hi)] = k
    return out


def _cell(here: np.ndarray, abs_error: np.ndarray | None, right: np.ndarray | None) -> dict[str, float]:
    cell: dict[str, float] = {"faces": int(here.sum())}
    if abs_error is not None:
        cell["age_mae"] = float(abs_error[here].mean()) if here.any() else float("nan")
    if right is not None:
        cell["gender_accuracy"] = float(right[here].mean()) if here.any() else float("nan")
    return cell


def group_table(ages: np.ndarray, male: np.ndarray, race: np.ndarray, race_names: Sequence[str],
                predicted_age: np.ndarray | None = None, male_probability: np.ndarray | None = None
                ) -> dict[str, Any]:
    """Overall and per-group figures: {"all": cell, "age_band": {band: cell}, "gender": {...}, "race": {...}};
    each cell holds the face count, ``age_mae`` (years) and ``gender_accuracy`` for what was predicted."""
    ages, male, race = np.asarray(ages), np.asarray(male), np.asarray(race)
    abs_error = None if predicted_age is None else np.abs(np.asarray(predicted_age, np.float64) - ages)
    right = None if male_probability is None else (np.asarray(male_probability) >= 0.5) == (male == 1)
    bands = band_of(ages)
    return {
        "all": _cell(np.ones(len(ages), bool), abs_error, right),
        "age_band": {name: _cell(bands == k, abs_error, right) for k, (name, _, _) in enumerate(AGE_BANDS)},
        "gender": {name: _cell(male == v, abs_error, right) for name, v in (("men", 1), ("women", 0))},
        "race": {name: _cell(race == k, abs_error, right) for k, name in enumerate(race_names)},
    }


def error_by_age(ages: np.ndarray, predicted_age: np.ndarray, width: int = 5) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(bin start, mean absolute error, faces) over true-age bins ``width`` years wide (empty bins left out)."""
    ages = np.asarray(ages)
    starts = (ages // width) * width
    bins = np.unique(starts)
    err = np.abs(np.asarray(predicted_age) - ages)
    return bins, np.array([err[starts == b].mean() for b in bins]), np.array([(starts == b).sum() for b in bins])
