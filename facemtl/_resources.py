"""Where the shipped weights and sample photos live, installed or in a source checkout."""
from __future__ import annotations

from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def _packaged(name: str, pattern: str, checkout: str) -> Path:
    """``facemtl/<name>`` when installed (it holds files matching ``pattern``), else that folder of the checkout.

    Found by file location, not ``importlib.resources``: the folder has no ``__init__.py``, and for such a
    namespace package Python 3.11 returns a MultiplexedPath whose ``str`` is no path."""
    installed = Path(__file__).resolve().parent / name
    if installed.is_dir() and any(installed.glob(pattern)):
        return installed
    return _CHECKOUT_ROOT / checkout


def splits_dir() -> Path:
    """Folder of the committed dataset splits: ``facemtl/splits`` when installed, else ``<checkout>/configs/splits``."""
    return _packaged("splits", "*.csv", "configs/splits")


def weights_dir() -> Path:
    """Folder of the shipped weights: ``facemtl/weights`` when installed, else ``<checkout>/weights``."""
    return _packaged("weights", "*.pt", "weights")


DEFAULT_MODEL = "facemtl-deepid2.pt"
"""The shipped multi-task model's file name among the weights."""


def weights_path(name: str) -> Path:
    """Path of one shipped weights file (which may not exist yet)."""
    return weights_dir() / name


def sample_photo(name: str = "astronaut.png") -> Path:
    """Path of a sample photo shipped with the package."""
    return Path(__file__).resolve().parent / "samples" / name
