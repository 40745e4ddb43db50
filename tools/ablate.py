"""Ablations with one budget: does joint training help, which weighting, which sharing design, which tasks help
which.

Every variant trains from the same base config (``configs/deepid2.toml``) for the same number of steps with
the same batches, data and seed, then goes through the same evaluation as ``facemtl evaluate`` (detections
are cached once, so each evaluation costs only the network). Finished runs are reused, so an interrupted
ablation continues where it stopped.

    python tools/ablate.py                      # single tasks vs joint (static / uncertainty / GradNorm)
    python tools/ablate.py --sharing --gradient # + hierarchical, cross_stitch, shared_private; hard + PCGrad
    python tools/ablate.py --affinity           # + every pair of tasks, and the task-affinity matrix (PNG)
    python tools/ablate.py --distill --config configs/distill.toml   # what the teacher adds, and UTKFace

"recognition" is DeepID2's identification + verification signal (identity softmax and the contrastive loss
on the embedding), counted as one task here because the verification metrics need both.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facemtl.analyzer import FaceAnalyzer
from facemtl.data import data_root
from facemtl.evaluate.plots import plot_heatmap
from facemtl.evaluate.suite import evaluate_model, headline
from facemtl.model.multitask import load_model
from facemtl.train.config import load_config

ROOT = Path(__file__).resolve().parent.parent
GROUPS = {"recognition": ["identity", "verification"], "landmarks": ["landmarks"], "attributes": ["attributes"],
          "pose": ["pose"]}
GROUP_METRIC = {"recognition": ("celeba_verif_%", +1), "landmarks": ("mtfl_nme_%", -1),
                "attributes": ("celeba_attr_mean_%", +1), "pose": ("val_pose_acc_%", +1)}


def distill_variants() -> dict[str, dict[str, Any]]:
    """Name -> overrides of ``configs/distill.toml``: the recipe without the teacher, the teacher alone (every
    other task's weight 0, so the heads stay in the model and their drift is measured), the teacher with the
    recognition tasks, with every task, and with every task but no UTKFace faces."""
    weights = load_config(ROOT / "configs" / "distill.toml").train.weighting_options["weights"]
    only = {t: 0.0 for t in weights}
    recognition = {**only, **{t: weights[t] for t in ("identity", "verification")}}
    return {"no teacher": {"data.teacher": ""},
            "teacher only": {"train.weighting_options": {"weights": {**only, "distill": weights["distill"]}}},
            "teacher + recognition": {"train.weighting_options": {"weights": {**recognition,
                                                                              "distill": weights["distill"]}}},
            "teacher + all tasks": {},
            "teacher + all tasks, no UTKFace": {"data.utkface": False}}


def variants(sharing: bool, gradient: bool, affinity: bool) -> dict[str, dict[str, Any]]:
    """Name -> config overrides for every run of this ablation."""
    runs: dict[str, dict[str, Any]] = {f"{g} alone": {"model.tasks": tasks} for g, tasks in GROUPS.items()}
    runs["joint static"] = {}
    runs["joint uncertainty"] = {"train.weighting": "uncertainty", "train.weighting_options": {}}
    runs["joint gradnorm"] = {"train.weighting": "gradnorm", "train.weighting_options": {}}
    if sharing:
        for design in ("hierarchical", "cross_stitch", "shared_private"):
            runs[f"joint {design}"] = {"model.sharing": design}
        runs["joint shared_private"]["train.difference_loss_weight"] = 0.05
    if gradient:
        runs["joint pcgrad"] = {"train.gradient": "pcgrad"}
    if affinity:
        for a, b in itertools.combinations(GROUPS, 2):
            runs[f"{a} + {b}"] = {"model.tasks": GROUPS[a] + GROUPS[b]}
    return runs


def _overrides(base: Path, extra: dict[str, Any], steps: int, epochs: int, seed: int) -> list[str]:
    """--set arguments for one run (static weights kept only for the tasks the run has)."""
    values: dict[str, Any] = {"train.epochs": epochs, "train.steps_per_epoch": max(1, steps // epochs),
                              "train.seed": seed, "train.checkpoint_every": 50, **extra}
    cfg = load_config(base, values)
    if "train.weighting_options" not in values and cfg.train.weighting == "static":
        tasks = cfg.weighted_tasks()
        weights = cfg.train.weighting_options.get("weights", {})
        values["train.weighting_options"] = {"weights": {t: w for t, w in weights.items() if t in tasks}}
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={_toml(v)}")]


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def train_run(name: str, base: Path, out: Path, extra: dict[str, Any], steps: int, epochs: int, seed: int) -> Path:
    """Train one variant in a subprocess (skipped when its model already exists)."""
    model = out / "model.pt"
    if model.is_file():
        return model
    cmd = [sys.executable, "-m", "facemtl.cli", "train", "--config", str(base), "--out", str(out),
           *_overrides(base, extra, steps, epochs, seed)]
    print(f"[{name}] training: {' '.join(cmd[3:])}", flush=True)
    t0 = time.time()
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    print(f"[{name}] trained in {time.time() - t0:.0f} s", flush=True)
    return model


def crop_ms(model_path: Path, size: int, batch: int, repeats: int = 15) -> float:
    """Median CPU milliseconds per aligned crop for the network alone at this batch size."""
    model = load_model(model_path)
    x = torch.rand(batch, 3, size, size) * 255
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times)) / batch


def evaluate_run(model_path: Path, out: Path, refine: int = 0) -> dict[str, float]:
    """Headline figures (+ size and speed, + final validation pose accuracy) of one trained run."""
    cached = out / "figures.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    analyzer = FaceAnalyzer(model=model_path, device="cpu", refine=refine)
    figures = headline(evaluate_model(analyzer, data_root(), out_dir=out / "eval"))
    size = analyzer.model.config.input_size
    figures["params_M"] = sum(p.numel() for p in analyzer.model.parameters()) / 1e6
    figures["ms/crop b1"] = crop_ms(model_path, size, 1)
    figures["ms/crop b32"] = crop_ms(model_path, size, 32)
    last = json.loads(analyzer.model.meta.get("final_validation", "{}"))
    if "val_pose_acc" in last:
        figures["val_pose_acc_%"] = 100.0 * last["val_pose_acc"]
    cached.write_text(json.dumps(figures, indent=1))
    return figures


def table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table, one row per run, one column per figure."""
    cols: list[str] = []
    for r in rows.values():
        cols += [c for c in r if c not in cols]
    lines = ["| run | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.2f}" if c in r else "" for c in cols) + " |")
    return "\n".join(lines)


def affinity(rows: dict[str, dict[str, float]], out: Path) -> str | None:
    """Change of each task's metric (row) when trained with another task (column) instead of alone."""
    names = list(GROUPS)
    m = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        metric, sign = GROUP_METRIC[a]
        alone = rows.get(f"{a} alone", {}).get(metric)
        for j, b in enumerate(names):
            pair = rows.get(f"{a} + {b}") or rows.get(f"{b} + {a}")
            if i != j and alone is not None and pair and metric in pair:
                m[i, j] = sign * (pair[metric] - alone)
    if np.isnan(m).all():
        return None
    plot_heatmap(np.nan_to_num(m), names, [f"with {n}" for n in names], out / "affinity.png",
                 title="task affinity: gain of row task's metric (points) when trained with column task",
                 fmt="{:+.2f}")
    lines = ["| task \\ trained with | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for i, a in enumerate(names):
        lines.append(f"| {a} ({GROUP_METRIC[a][0]}) | " +
                     " | ".join("" if np.isnan(v) else f"{v:+.2f}" for v in m[i]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "deepid2.toml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (the shared budget)")
    parser.add_argument("--epochs", type=int, default=3, help="the budget is split into this many epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sharing", action="store_true", help="also the sharing designs")
    parser.add_argument("--gradient", action="store_true", help="also hard sharing + PCGrad")
    parser.add_argument("--affinity", action="store_true", help="also every pair of tasks (task affinity)")
    parser.add_argument("--distill", action="store_true",
                        help="only the teacher's variants (base config configs/distill.toml)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants (names as listed)")
    parser.add_argument("--refine", type=int, default=0,
                        help="re-alignment passes in the evaluation (default 0: detector alignment, as the README's table)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, float]] = {}
    runs = distill_variants() if args.distill else variants(args.sharing, args.gradient, args.affinity)
    for name, extra in runs.items():
        if args.only is not None and name not in args.only:
            continue
        out = args.out / name.replace(" + ", "+").replace(", ", "-").replace(" ", "_")
        model = train_run(name, args.config, out, extra, args.steps, args.epochs, args.seed)
        rows[name] = evaluate_run(model, out, args.refine)
        print(f"[{name}] " + ", ".join(f"{k} {v:.2f}" for k, v in rows[name].items()), flush=True)
    report = [f"Ablation: {args.steps} steps per run ({args.epochs} epochs), seed {args.seed}, base config "
              f"{args.config.name}; command: {shlex.join(['python', 'tools/ablate.py', *sys.argv[1:]])}",
              "", table(rows)]
    aff = affinity(rows, args.out)
    if aff:
        report += ["", "Task affinity (points gained by the row task's metric; NME sign flipped so + is better):",
                   "", aff]
    text = "\n".join(report)
    (args.out / "ablation.md").write_text(text + "\n")
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
