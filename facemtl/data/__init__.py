"""Dataset readers (CelebA, MTFL, WIDER FACE, folder-per-person) and the mixed multi-task dataset."""
from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent.parent


def data_root() -> Path:
    """Where the real datasets live: ``$FACEMTL_DATA`` if set, else ``../shared/data`` beside the source
    checkout or, for an installed package, beside the working directory (the first that exists)."""
    env = os.environ.get("FACEMTL_DATA")
    if env:
        return Path(env)
    candidates = [_CHECKOUT_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[0])
