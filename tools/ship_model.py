"""Turn a trained model into the shipped one: fit the embedding's projection on the training identities
(within-identity whitening, ``facemtl.train.projection``), then calibrate the verification threshold on
CelebA *val* pairs (identities disjoint from both training and test); both go into the model file.

Each shrinkage given (and no projection at all) is tried; the one with the best CelebA val accuracy is kept.

    python tools/ship_model.py runs/deepid2/model.pt weights/facemtl-deepid2.pt --config configs/deepid2.toml
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from facemtl.analyzer import FaceAnalyzer
from facemtl.data import data_root
from facemtl.data.landmark_cache import default_cache_dir
from facemtl.data.mixed import build_table
from facemtl.evaluate.suite import calibrate_threshold
from facemtl.train.config import load_config
from facemtl.train.projection import fit_within_whitening, set_projection, training_embeddings
from facemtl.train.trainer import table_specs


def fit_projection(analyzer: FaceAnalyzer, config: Path, shrinkages: list[float], root: Path,
                   data: Path | None) -> tuple[dict[str, object], dict[str, float]]:
    """Try each shrinkage (and none) on the run's training identities; keep the best on CelebA val pairs.
    The training data is read from ``data`` when given, else from where the config says. Returns the fit's
    record and the kept choice's threshold calibration."""
    spec = table_specs(load_config(config, None if data is None else {"data.root": str(data)}))["train"]
    table = build_table(spec, default_cache_dir(None))
    rows = table.identity >= 0
    pad, size = spec.padding, spec.input_size
    crops = np.ascontiguousarray(table.crops[rows][:, pad:pad + size, pad:pad + size])
    model = analyzer.model
    set_projection(model, None, None)
    embeddings = training_embeddings(model, crops, analyzer.device)
    identities = np.tile(table.identity[rows], 2)
    fits = {"none": (None, None)}
    found = {"none": calibrate_threshold(analyzer, root)}
    for shrinkage in shrinkages:
        key = str(shrinkage)
        fits[key] = fit_within_whitening(embeddings, identities, shrinkage)
        set_projection(model, *fits[key])
        found[key] = calibrate_threshold(analyzer, root)
        print(f"shrinkage {shrinkage}: CelebA val accuracy {100 * found[key]['val_accuracy']:.2f}% "
              f"(no projection {100 * found['none']['val_accuracy']:.2f}%)", flush=True)
    tried = {k: f["val_accuracy"] for k, f in found.items()}
    best = max(tried, key=tried.__getitem__)
    set_projection(model, *fits[best])
    record = {"method": "within-identity whitening" if best != "none" else "none", "shrinkage": best,
              "fit_on": f"{int(rows.sum())} faces of {len(np.unique(table.identity[rows]))} training identities "
                        "and their mirror images", "val_accuracy_by_shrinkage": tried}
    return record, found[best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=None,
                        help="the run's config: its training identities fit the projection (none without it)")
    parser.add_argument("--shrinkage", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3],
                        help="shrinkages to try for the projection")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    args = parser.parse_args()
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to replace it")
    analyzer = FaceAnalyzer(model=args.model, device="cpu")
    root = args.data or data_root()
    model = analyzer.model
    meta = dict(model.meta)
    if args.config is not None:
        fit, found = fit_projection(analyzer, args.config, args.shrinkage, root, args.data)
        meta["verification_projection"] = json.dumps(fit)
    else:
        found = calibrate_threshold(analyzer, root)
    model.config.verification_threshold = found["threshold"]
    meta["verification_threshold"] = json.dumps({**found, "chosen_on": "all same/different pairs of the CelebA "
                                                 "val identities, flip-averaged embeddings"})
    model.save(args.out, meta)
    print(f"threshold {found['threshold']:.4f} (CelebA val accuracy {100 * found['val_accuracy']:.2f}%); "
          f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
