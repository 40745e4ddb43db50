"""``facemtl export``: the shared CNN (and the detector nets) as ONNX / TorchScript, with a parity check."""
from __future__ import annotations

import argparse

import numpy as np

from .._resources import DEFAULT_MODEL, sample_photo, weights_path
from ..align import align
from ..detect.detector import FaceDetector
from ..errors import InvalidInputError
from ..export import export_detector, export_model
from ..io import load_image
from ..model.multitask import load_model

TOLERANCE = 1e-4


def _real_crops(size: int) -> np.ndarray:
    """Aligned crops of the shipped sample photo (and its mirror), for the parity check."""
    image = load_image(sample_photo())
    dets = FaceDetector(device="cpu").detect(image)[0]
    crops = align(image, np.stack([d.landmarks5 for d in dets]), size=size).crops
    return np.concatenate([crops, crops[:, :, ::-1]])


def run(args: argparse.Namespace) -> int:
    try:
        return _export(args)
    except ImportError as exc:
        raise InvalidInputError(f"{exc} (ONNX export needs: pip install 'facemtl[onnx]')") from None


def _export(args: argparse.Namespace) -> int:
    model = load_model(args.model or weights_path(DEFAULT_MODEL))
    report = export_model(model, args.out, tuple(args.format), _real_crops(model.config.input_size),
                          force=args.force)
    print(report.format_table(TOLERANCE))
    worst = report.worst()
    if not args.no_detector:
        det = export_detector(args.out, tuple(args.format), force=args.force)
        print(det.format_table(TOLERANCE))
        worst = max(worst, det.worst())
    return 0 if worst <= TOLERANCE else 1
