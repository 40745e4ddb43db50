"""facemtl: face detection, alignment and a jointly trained multi-task face CNN.

The public API is imported lazily (so ``facemtl --help`` starts fast):

    from facemtl import FaceAnalyzer, load_image, detect_faces, align_faces, load_model, sample_photo

No public name is also the name of a submodule: importing ``facemtl.detect`` binds the package attribute
``detect`` to the module, which would shadow a function of that name.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_image": "facemtl.io",
    "detect_faces": "facemtl.detect.detector:detect",
    "FaceDetector": "facemtl.detect.detector",
    "align_faces": "facemtl.align:align",
    "sample_photo": "facemtl._resources",
    "cluster_embeddings": "facemtl.cluster",
    "cluster_photos": "facemtl.cluster",
    "analyze_video": "facemtl.video",
    "FaceAnalyzer": "facemtl.analyzer",
    "load_model": "facemtl.model.multitask",
    "MultiTaskNet": "facemtl.model.multitask",
    "ModelConfig": "facemtl.model.multitask",
    "Face": "facemtl.types",
    "Detection": "facemtl.types",
    "Gallery": "facemtl.gallery.store",
    "errors": "facemtl.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'facemtl' has no attribute {name!r}")
    module_name, _, attr = _EXPORTS[name].partition(":")
    module = importlib.import_module(module_name)
    return module if name == "errors" else getattr(module, attr or name)
