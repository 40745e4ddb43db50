"""``facemtl teach --config C``: the teacher's targets for every training face of a config, cached."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data import data_root
from ..data.landmark_cache import default_cache_dir
from ..data.mixed import build_table
from ..train.config import load_config
from ..train.teacher import compute_targets, summary, teacher_path
from ..train.trainer import table_specs
from .train import parse_overrides


def run_teach(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, parse_overrides(args.set))
    spec = table_specs(cfg)["train"]
    cache = default_cache_dir(cfg.data.cache_dir)
    table = build_table(spec, cache)
    path = teacher_path(spec, cache)
    _, done = compute_targets(table, path, Path(cfg.data.root or data_root()), workers=args.workers)
    print(f"teacher targets: {int(done.sum())}/{len(table)} faces ({summary(done, table)}) in {path}")
    return 0 if done.all() else 1
