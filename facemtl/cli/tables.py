"""``facemtl tables pack|unpack``: carry a config's crop tables (and their teacher targets) to a machine
without the photos, a GPU server say, and write them into its cache there."""
from __future__ import annotations

import argparse

import numpy as np

from ..data.landmark_cache import default_cache_dir
from ..data.mixed import build_table
from ..data.table_archive import pack_table, unpack_table
from ..errors import OutputExistsError
from ..train.config import load_config
from ..train.teacher import DLIB_TEACHER, teacher_path
from ..train.trainer import table_specs
from .train import parse_overrides


def run_pack(args: argparse.Namespace) -> int:
    """Build (or read from the cache) each table of the config and write its archive into ``--out``."""
    cfg = load_config(args.config, parse_overrides(args.set))
    cache = default_cache_dir(cfg.data.cache_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, spec in table_specs(cfg).items():
        if spec is None:
            continue
        out = args.out / f"{name}-{spec.key()}.npz"
        if out.exists() and not args.force:
            raise OutputExistsError(f"{out} exists; pass --force to replace it")
        targets = teacher_path(spec, cache, cfg.data.teacher or DLIB_TEACHER)
        teacher = None
        if targets.is_file():
            with np.load(targets) as z:
                teacher = {"targets": z["targets"], "done": z["done"], "files": z["files"],
                           "name": np.array(cfg.data.teacher or DLIB_TEACHER)}
        size = pack_table(build_table(spec, cache), spec, out, args.quality, teacher)
        print(f"{name}: wrote {out} ({size / 2**20:.1f} MiB{', with teacher targets' if teacher else ''})")
    return 0


def run_unpack(args: argparse.Namespace) -> int:
    """Decode each archive into the cache folder as the table its spec has under ``--root``."""
    cache = args.cache or default_cache_dir()
    for path in args.archives:
        print(f"{path} -> {unpack_table(path, args.root, cache, args.force)}")
    return 0
