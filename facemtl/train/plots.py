"""Pictures of a finished run: validation curves per task, and the task-gradient cosine heat map."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate.plots import plot_heatmap


def cosine_matrix(row: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """A {"a/b": cosine} row -> (task names, symmetric matrix with ones on the diagonal)."""
    pairs = {k: v for k, v in row.items() if "/" in k}
    names = sorted({n for k in pairs for n in k.split("/")})
    m = np.eye(len(names))
    for key, value in pairs.items():
        a, b = key.split("/")
        m[names.index(a), names.index(b)] = m[names.index(b), names.index(a)] = value
    return names, m


def plot_training(history: list[dict[str, Any]], cosines: list[dict[str, Any]], out: Path) -> None:
    """Write ``curves.png`` (every validation metric and training loss by epoch) and ``grad_cosines.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({k for row in history for k in row if k.startswith("val_")})
    losses = sorted({k for row in history for k in row if k.startswith("loss_")})
    panels = metrics + (["losses"] if losses else [])
    if panels:
        cols = 3
        rows = (len(panels) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, name in zip(axes.flat, panels):
            keys = losses if name == "losses" else [name]
            for key in keys:
                pts = [(r["epoch"], r[key]) for r in history if key in r]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=key[5:] if name == "losses" else None)
            ax.set_title(name.replace("val_", "validation ") if name != "losses" else "training losses")
            ax.set_xlabel("epoch")
            if name == "losses":
                ax.set_yscale("log")
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=110)
        plt.close(fig)
    if cosines:
        names, m = cosine_matrix(cosines[-1])
        plot_heatmap(m, names, names, out / "grad_cosines.png",
                     title=f"task-gradient cosine on shared parameters (epoch {cosines[-1]['epoch']})")
