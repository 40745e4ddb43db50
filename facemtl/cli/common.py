"""Pieces the commands share: building the analyzer from CLI options."""
from __future__ import annotations

import argparse

from ..analyzer import FaceAnalyzer
from ..detect.detector import FaceDetector
from ..device import resolve_device


def analyzer_from_args(args: argparse.Namespace) -> FaceAnalyzer:
    """FaceAnalyzer with the CLI's --model / --detector / --min-face / --no-flip / --refine / --device."""
    device = resolve_device(args.device)
    detector = FaceDetector(weights=args.detector, device=device, min_face=args.min_face)
    return FaceAnalyzer(detector=detector, model=args.model, device=device, flip=not args.no_flip,
                        refine=args.refine)
