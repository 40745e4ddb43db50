"""How far a student's embedding is from its teacher's descriptor: on its training faces and on held-out ones.

A student that reproduces its training targets but not held-out ones over-fits (more faces help); one as far
from the teacher on both under-fits (capacity, or a gentler task, helps). Reads a run's crop table, its
teacher targets and its train / held-out split (the trainer's own), and runs each model on the unaugmented
crops; prints the mean and median of 1 - cos(student, teacher) per set.

    python tools/distill_gap.py --config configs/deepid2-age.toml runs/a/model.pt [runs/b/model.pt ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from facemtl.data.landmark_cache import default_cache_dir
from facemtl.data.mixed import SOURCES, build_table
from facemtl.model.multitask import load_model
from facemtl.train.config import load_config
from facemtl.train.teacher import training_targets
from facemtl.train.trainer import holdout_split, table_specs


def embeddings(model: torch.nn.Module, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model's training embedding (before any projection) of model-sized uint8 crops (N,S,S,3)."""
    out = []
    for start in range(0, len(crops), batch):
        x = np.ascontiguousarray(crops[start:start + batch])
        with torch.no_grad():
            emb = model.unprojected_embedding(torch.from_numpy(x).permute(0, 3, 1, 2))
        out.append(emb.numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--config", type=Path, required=True, help="the run's config (its data and teacher)")
    parser.add_argument("--faces", type=int, default=1000, help="training faces sampled per source (default 1000)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    spec = table_specs(cfg)["train"]
    cache = default_cache_dir(cfg.data.cache_dir)
    table = build_table(spec, cache)
    targets = training_targets(spec, cache, table, cfg.data.teacher, cfg.data.teacher_sources)[:, 0]
    labelled = ~np.isnan(targets).any(1)
    train_idx, held = holdout_split(table, cfg.data.mtfl_val_fraction, cfg.data.identity_val_per_id, cfg.train.seed)
    train_idx = train_idx[labelled[train_idx]]
    rng = np.random.default_rng(cfg.train.seed)
    sets = {}
    for source, name in enumerate(SOURCES):
        rows = train_idx[table.source[train_idx] == source]
        if len(rows):
            sets[f"{name} training faces"] = rng.choice(rows, min(args.faces, len(rows)), replace=False)
    sets[f"{SOURCES[0]} held out (training identities)"] = held["identity"]
    sets[f"{SOURCES[2]} held out"] = held["mtfl"]
    pad, size = spec.padding, spec.input_size
    print("| model | faces | count | 1 - cos mean | median |\n|---|---|---:|---:|---:|")
    for path in args.models:
        model = load_model(path)
        for name, rows in sets.items():
            rows = np.sort(rows[labelled[rows]])
            cos = (embeddings(model, table.crops[rows][:, pad:pad + size, pad:pad + size]) * targets[rows]).sum(1)
            print(f"| {path} | {name} | {len(rows)} | {1 - cos.mean():.4f} | {1 - np.median(cos):.4f} |")


if __name__ == "__main__":
    main()
