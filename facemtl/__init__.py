"""facemtl: face detection, alignment and a jointly trained multi-task face CNN.

The public API is imported lazily (so ``facemtl --help`` starts fast):

    from facemtl import FaceAnalyzer, load_image, detect, align, load_model
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_image": "facemtl.io",
    "detect": "facemtl.detect.detector",
    "FaceDetector": "facemtl.detect.detector",
    "align": "facemtl.align",
    "FaceAnalyzer": "facemtl.analyzer",
    "load_model": "facemtl.model.multitask",
    "MultiTaskNet": "facemtl.model.multitask",
    "ModelConfig": "facemtl.model.multitask",
    "Face": "facemtl.types",
    "Detection": "facemtl.types",
    "Gallery": "facemtl.gallery",
    "errors": "facemtl.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'facemtl' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if name == "errors" else getattr(module, name)
