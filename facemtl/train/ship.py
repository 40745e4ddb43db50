"""Turn a trained model into one ready to use: fit the embedding's projection on the run's training identities
(within-identity whitening, ``facemtl.train.projection``), then calibrate the verification threshold on the
CelebA-layout *val* identities (disjoint from training and test); both go into the written model file.

Each shrinkage given (and no projection at all) is tried; the one with the best val accuracy is kept.
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from ..analyzer import FaceAnalyzer
from ..data import data_root
from ..data.landmark_cache import default_cache_dir
from ..data.mixed import build_table
from ..errors import OutputExistsError
from ..evaluate.suite import calibrate_threshold
from .config import RunConfig, load_config
from .projection import fit_within_whitening, set_projection, training_embeddings
from .trainer import table_specs

SHRINKAGES = (0.01, 0.03, 0.1, 0.3)


def fit_projection(analyzer: FaceAnalyzer, cfg: RunConfig, shrinkages: Sequence[float], root: Path
                   ) -> tuple[dict[str, object], dict[str, float]]:
    """Try each shrinkage (and none) on the run's training identities; keep the best on the val pairs of
    ``root``. Returns the fit's record and the kept choice's threshold calibration."""
    spec = table_specs(cfg)["train"]
    cache = default_cache_dir(cfg.data.cache_dir)
    table = build_table(spec, cache)
    rows = table.identity >= 0
    pad, size = spec.padding, spec.input_size
    crops = np.ascontiguousarray(table.crops[rows][:, pad:pad + size, pad:pad + size])
    model = analyzer.model
    set_projection(model, None, None)
    embeddings = training_embeddings(model, crops, analyzer.device)
    identities = np.tile(table.identity[rows], 2)
    calibrate = partial(calibrate_threshold, analyzer, root, cache, cfg.data.limit or None)
    fits = {"none": (None, None)}
    found = {"none": calibrate()}
    for shrinkage in shrinkages:
        key = str(shrinkage)
        fits[key] = fit_within_whitening(embeddings, identities, shrinkage)
        set_projection(model, *fits[key])
        found[key] = calibrate()
        print(f"shrinkage {shrinkage}: val accuracy {100 * found[key]['val_accuracy']:.2f}% "
              f"(no projection {100 * found['none']['val_accuracy']:.2f}%)", flush=True)
    tried = {k: f["val_accuracy"] for k, f in found.items()}
    best = max(tried, key=tried.__getitem__)
    set_projection(model, *fits[best])
    record = {"method": "within-identity whitening" if best != "none" else "none", "shrinkage": best,
              "fit_on": f"{int(rows.sum())} faces of {len(np.unique(table.identity[rows]))} training identities "
                        "and their mirror images", "val_accuracy_by_shrinkage": tried}
    return record, found[best]


def ship(model: str | os.PathLike[str], out: str | os.PathLike[str], config: Path | None = None,
         data: Path | None = None, shrinkages: Sequence[float] | None = None, force: bool = False
         ) -> dict[str, float]:
    """Write ``model`` to ``out`` with a projection (when the run's ``config`` is given: its data, cache and
    limit) and a threshold calibrated on the val identities of ``data`` (else the config's, else the default
    data folder); returns the calibration. An existing ``out`` is replaced only with ``force``."""
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; pass force=True (--force) to replace it")
    analyzer = FaceAnalyzer(model=model, device="cpu")
    meta = dict(analyzer.model.meta)
    if config is not None:
        cfg = load_config(config, None if data is None else {"data.root": str(data)})
        root = Path(cfg.data.root or data_root())
        fit, found = fit_projection(analyzer, cfg, SHRINKAGES if shrinkages is None else shrinkages, root)
        meta["verification_projection"] = json.dumps(fit)
    else:
        found = calibrate_threshold(analyzer, data or data_root())
    analyzer.model.config.verification_threshold = found["threshold"]
    meta["verification_threshold"] = json.dumps({**found, "chosen_on": "all same/different pairs of the CelebA "
                                                 "val identities, flip-averaged embeddings"})
    analyzer.model.save(out, meta)
    return found
