"""Turn a trained model into one ready to use: fit the embedding's projection on the run's training identities
(within-identity whitening, ``facemtl.train.projection``), then calibrate the verification threshold on people
never trained on (CelebA-layout *val* identities, or a folder of one's own); both go into the written model file.

Each shrinkage given (and no projection at all) is tried; the one with the best val accuracy is kept.
"""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..analyzer import FaceAnalyzer
from ..data import data_root
from ..data.landmark_cache import default_cache_dir
from ..data.mixed import build_table
from ..errors import OutputExistsError
from ..evaluate.suite import calibrate_on_folders, calibrate_threshold
from .config import RunConfig, load_config
from .projection import fit_within_whitening, set_projection, training_embeddings
from .trainer import table_specs

SHRINKAGES = (0.01, 0.03, 0.1, 0.3)


def fit_projection(analyzer: FaceAnalyzer, cfg: RunConfig, shrinkages: Sequence[float],
                   calibrate: Callable[[], dict[str, Any]]) -> tuple[dict[str, object], dict[str, Any]]:
    """Try each shrinkage (and none) on the run's training identities; keep the one ``calibrate`` (threshold
    calibration on val pairs) scores best. Returns the fit's record and the kept choice's calibration."""
    spec = table_specs(cfg)["train"]
    table = build_table(spec, default_cache_dir(cfg.data.cache_dir))
    rows = table.identity >= 0
    pad, size = spec.padding, spec.input_size
    crops = np.ascontiguousarray(table.crops[rows][:, pad:pad + size, pad:pad + size])
    model = analyzer.model
    set_projection(model, None, None)
    embeddings = training_embeddings(model, crops, analyzer.device)
    identities = np.tile(table.identity[rows], 2)
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
         data: Path | None = None, shrinkages: Sequence[float] | None = None, force: bool = False,
         val_folders: Path | None = None) -> dict[str, Any]:
    """Write ``model`` to ``out`` with a projection (when the run's ``config`` is given: its data, cache and
    limit) and a calibrated threshold; returns the calibration. The threshold is calibrated on the pairs of
    ``val_folders`` (people never trained on, one sub-folder of photos each) when given, else on the CelebA
    val identities of ``data`` (else the config's, else the default data folder). An existing ``out`` is
    replaced only with ``force``."""
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists; pass force=True (--force) to replace it")
    analyzer = FaceAnalyzer(model=model, device="cpu")
    cfg = None if config is None else load_config(config, None if data is None else {"data.root": str(data)})
    cache = default_cache_dir(cfg.data.cache_dir if cfg else None)
    if val_folders is not None:
        calibrate = partial(calibrate_on_folders, analyzer, Path(val_folders), cache)
        chosen_on = f"all same/different pairs of the people in {val_folders}, flip-averaged embeddings"
    else:
        root = Path(data or (cfg and cfg.data.root) or data_root())
        calibrate = partial(calibrate_threshold, analyzer, root, cache, (cfg.data.limit if cfg else 0) or None)
        chosen_on = "all same/different pairs of the CelebA val identities, flip-averaged embeddings"
    meta = dict(analyzer.model.meta)
    if cfg is not None:
        fit, found = fit_projection(analyzer, cfg, SHRINKAGES if shrinkages is None else shrinkages, calibrate)
        meta["verification_projection"] = json.dumps(fit)
    else:
        found = calibrate()
    analyzer.model.config.verification_threshold = found["threshold"]
    meta["verification_threshold"] = json.dumps({**found, "chosen_on": chosen_on})
    analyzer.model.save(out, meta)
    return found
