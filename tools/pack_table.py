"""Carry a run's crop tables to a machine without the photos (a GPU server, say), and unpack them there.

Here (where the data is), build the tables a config trains on and pack them, WebP crops and exact labels:

    python tools/pack_table.py pack --config configs/deepid2.toml --out DIR [--quality 85]

There, write them into the cache under the data root given to training, then train as usual:

    python tools/pack_table.py unpack DIR/*.npz --root /tmp/facemtl-data --cache ~/.cache/facemtl
    facemtl train --config configs/deepid2.toml --set data.root=/tmp/facemtl-data

The crops come back within WebP error (about 37 dB PSNR at quality 85), so a run there trains on nearly,
not exactly, the crops a run here sees.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from facemtl.data.landmark_cache import default_cache_dir
from facemtl.data.mixed import build_table
from facemtl.data.table_archive import pack_table, unpack_table
from facemtl.errors import FacemtlError
from facemtl.train.config import load_config
from facemtl.train.trainer import table_specs


def pack(args: argparse.Namespace) -> None:
    """Build (or read from the cache) each table of the config and write its archive into ``--out``."""
    cfg = load_config(args.config)
    cache = default_cache_dir(cfg.data.cache_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, spec in table_specs(cfg).items():
        if spec is None:
            continue
        out = args.out / f"{name}-{spec.key()}.npz"
        if out.exists() and not args.force:
            raise SystemExit(f"{out} exists; pass --force to replace it")
        size = pack_table(build_table(spec, cache), spec, out, args.quality)
        print(f"{name}: wrote {out} ({size / 2**20:.1f} MiB)")


def unpack(args: argparse.Namespace) -> None:
    """Decode each archive into the cache folder as the table its spec has under ``--root``."""
    for path in args.archives:
        print(f"{path} -> {unpack_table(path, args.root, args.cache, args.force)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack the tables a config trains on")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quality", type=int, default=85, help="WebP quality of the crops (default 85)")
    p.add_argument("--force", action="store_true", help="replace existing archives")
    p.set_defaults(run=pack)
    u = sub.add_parser("unpack", help="unpack archives into a cache folder")
    u.add_argument("archives", type=Path, nargs="+")
    u.add_argument("--root", required=True, help="the data root training will be given (data.root)")
    u.add_argument("--cache", type=Path, default=default_cache_dir())
    u.add_argument("--force", action="store_true", help="replace tables already in the cache")
    u.set_defaults(run=unpack)
    args = parser.parse_args()
    try:
        args.run(args)
    except FacemtlError as exc:
        raise SystemExit(f"pack_table: {exc}") from None


if __name__ == "__main__":
    main()
