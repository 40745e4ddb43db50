"""Dataset readers (CelebA, MTFL, WIDER FACE, folder-per-person) and the mixed multi-task dataset."""
from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent.parent


def data_root() -> Path:
    """Where the real datasets live: ``$FACEMTL_DATA`` if set, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("FACEMTL_DATA")
    return Path(env) if env else _CHECKOUT_ROOT.parent / "shared" / "data"
