"""Turn a trained model into the shipped one: calibrate its verification threshold on CelebA *val* pairs
(identities disjoint from both training and test) and store it in the model file.

    python tools/ship_model.py runs/deepid2/model.pt weights/facemtl-deepid2.pt [--data DIR] [--force]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from facemtl.analyzer import FaceAnalyzer
from facemtl.data import data_root
from facemtl.evaluate.suite import calibrate_threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    args = parser.parse_args()
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to replace it")
    analyzer = FaceAnalyzer(model=args.model, device="cpu")
    found = calibrate_threshold(analyzer, args.data or data_root())
    model = analyzer.model
    model.config.verification_threshold = found["threshold"]
    meta = dict(model.meta)
    meta["verification_threshold"] = json.dumps({**found, "chosen_on": "all same/different pairs of the CelebA "
                                                 "val identities, flip-averaged embeddings"})
    model.save(args.out, meta)
    print(f"threshold {found['threshold']:.4f} (CelebA val accuracy {100 * found['val_accuracy']:.2f}%); "
          f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
