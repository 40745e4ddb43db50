"""``facemtl ship RUN/model.pt OUT.pt [--config C]``: projection and calibrated threshold into a trained model."""
from __future__ import annotations

import argparse

from ..train.ship import ship


def run_ship(args: argparse.Namespace) -> int:
    found = ship(args.model, args.out, args.config, args.data, args.shrinkage, args.force, args.val_folders)
    print(f"threshold {found['threshold']:.4f} (val accuracy {100 * found['val_accuracy']:.2f}%); "
          f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
    return 0
