"""Evaluation charts written as PNG files: ROC, CED, precision-recall, per-attribute accuracy bars, heatmaps,
image grids of failure cases."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402

from facemtl.errors import InvalidInputError  # noqa: E402


def _save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG to path (creating parent folders), close it, and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def _require_curves(curves: Mapping[str, object], what: str) -> None:
    """Reject an empty mapping of curves with a clear error."""
    if not curves:
        raise InvalidInputError(f"no {what} curves to plot")


def _xy(name: str, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Two equal-length 1-D float arrays for one curve."""
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise InvalidInputError(f"curve {name!r}: x and y differ in length ({xa.size} vs {ya.size})")
    return xa, ya


def plot_roc(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], path: str | Path, title: str = "ROC") -> Path:
    """Plot ROC curves (TAR against FAR on a log axis) for several models into one PNG."""
    _require_curves(curves, "ROC")
    data = {name: _xy(name, far, tar) for name, (far, tar) in curves.items()}
    positive = [far[far > 0].min() for far, _ in data.values() if np.any(far > 0)]
    floor = max(min(positive) if positive else 1e-4, 1e-6)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (far, tar) in data.items():
        ax.plot(np.clip(far, floor, 1.0), tar, label=name, linewidth=1.5)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_ced(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path,
    title: str = "Cumulative error distribution",
) -> Path:
    """Plot cumulative landmark-error curves (fraction of faces against NME in % of inter-ocular distance)."""
    _require_curves(curves, "CED")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (x, y) in curves.items():
        xa, ya = _xy(name, x, y)
        ax.plot(100.0 * xa, ya, label=name, linewidth=1.5)
    ax.set_xlabel("NME (% of inter-ocular distance)")
    ax.set_ylabel("fraction of faces")
    ax.set_ylim(0.0, 1.01)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_pr(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike, float]],
    path: str | Path,
    title: str = "Precision-recall",
) -> Path:
    """Plot precision-recall curves with each model's AP in the legend."""
    _require_curves(curves, "precision-recall")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (recall, precision, ap) in curves.items():
        r, p = _xy(name, recall, precision)
        ax.plot(r, p, label=f"{name} (AP {float(ap):.3f})", linewidth=1.5)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_attribute_bars(
    names: Sequence[str],
    accuracies: Mapping[str, ArrayLike],
    path: str | Path,
    title: str = "Attribute accuracy",
) -> Path:
    """Horizontal grouped bars of per-attribute accuracy, one series per model, tall enough for 40 names."""
    _require_curves(accuracies, "attribute accuracy")
    names = list(names)
    series = {}
    for model, acc in accuracies.items():
        values = np.asarray(acc, dtype=np.float64).ravel()
        if values.size != len(names):
            raise InvalidInputError(f"{model!r}: {values.size} accuracies for {len(names)} attribute names")
        series[model] = values
    n_models = len(series)
    bar = 0.8 / n_models
    rows = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.28 * len(names) * max(1.0, 0.6 * n_models)) + 1.0))
    for k, (model, values) in enumerate(series.items()):
        ax.barh(rows - 0.4 + bar * (k + 0.5), np.nan_to_num(values, nan=0.0), height=bar, label=model)
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()])
    low = float(finite.min()) if finite.size else 0.0
    ax.set_xlim(max(0.0, np.floor(low * 10.0) / 10.0 - 0.05), 1.0)
    ax.set_yticks(rows)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_heatmap(
    matrix: ArrayLike,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    title: str = "",
    fmt: str = "{:.2f}",
) -> Path:
    """Annotated heatmap on a diverging colour map centred at 0 (task-gradient cosines, task affinity)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape != (len(row_labels), len(col_labels)):
        raise InvalidInputError(f"matrix of shape {m.shape} does not fit {len(row_labels)}x{len(col_labels)} labels")
    finite = m[np.isfinite(m)]
    limit = float(np.abs(finite).max()) if finite.size else 1.0
    limit = limit if limit > 0 else 1.0
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * m.shape[1], 1.0 + 0.7 * m.shape[0]))
    image = ax.imshow(np.ma.masked_invalid(m), cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(np.arange(m.shape[1]))
    ax.set_xticklabels(list(col_labels), rotation=45, ha="right")
    ax.set_yticks(np.arange(m.shape[0]))
    ax.set_yticklabels(list(row_labels))
    for (i, j), value in np.ndenumerate(m):
        text = fmt.format(value) if np.isfinite(value) else "–"
        colour = "white" if np.isfinite(value) and abs(value) > 0.6 * limit else "black"
        ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_image_grid(images: Sequence[np.ndarray], captions: Sequence[str], path: str | Path, title: str = "",
                    columns: int = 8) -> Path:
    """RGB uint8 images (each HxWx3) in a grid, each with its caption above it: failure cases to look at."""
    if not images:
        raise InvalidInputError("no images to plot")
    if len(captions) != len(images):
        raise InvalidInputError(f"{len(captions)} captions for {len(images)} images")
    if columns < 1:
        raise InvalidInputError(f"columns must be >= 1, got {columns}")
    for k, image in enumerate(images):
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise InvalidInputError(f"image {k} must be an RGB uint8 HxWx3 array")
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.55 * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=6)
    fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def plot_age_groups(bins: ArrayLike, mae: ArrayLike, band_names: Sequence[str], band_gender_accuracy: ArrayLike,
                    path: str | Path, title: str = "") -> Path:
    """Two panels: mean absolute age error by true age (bins), and gender accuracy by age band."""
    bins, mae = np.asarray(bins, float), np.asarray(mae, float)
    acc = np.asarray(band_gender_accuracy, float)
    if len(bins) != len(mae) or len(band_names) != len(acc):
        raise InvalidInputError("plot_age_groups: each series needs one value per bin / band")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if len(bins):
        left.plot(bins + (bins[1] - bins[0] if len(bins) > 1 else 1) / 2, mae, marker="o")
    else:
        left.text(0.5, 0.5, "the model has no age output", ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("true age (years)")
    left.set_ylabel("mean absolute error (years)")
    left.grid(alpha=0.3)
    right.bar(list(band_names), 100 * acc, color="tab:orange")
    right.set_ylim(0, 100)
    right.set_xlabel("age band")
    right.set_ylabel("gender accuracy (%)")
    for k, v in enumerate(acc):
        if np.isfinite(v):
            right.text(k, 100 * v + 1, f"{100 * v:.1f}", ha="center", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
