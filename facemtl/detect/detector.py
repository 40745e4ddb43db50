"""The user-facing face detector: any photos in, one list of :class:`~facemtl.types.Detection` per photo out."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from ..allocator import tune_cpu_allocator
from ..device import resolve_device, torch_threads
from ..errors import InvalidInputError
from ..io import ImageLike, as_image_list
from ..types import DEFAULT_MIN_FACE, Detection
from .cascade import Cascade, CascadeConfig, CascadeOutput
from .weights import load_detector_nets

class FaceDetector:
    """MTCNN detector with the shipped weights on a chosen device. A CPU detector tunes glibc's malloc for
    the process (see :mod:`facemtl.allocator`; ``FACEMTL_MALLOC_TUNING=0`` opts out).

    >>> detector = FaceDetector(device="cpu")
    >>> faces_per_photo = detector.detect(["a.jpg", "b.png"])   # always one list per photo
    """

    def __init__(self, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
                 min_face: float = DEFAULT_MIN_FACE, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, edge: str = "clip") -> None:
        self.device = resolve_device(device)
        if self.device.type == "cpu":
            tune_cpu_allocator()
        config = CascadeConfig(min_face=min_face, factor=factor, edge=edge,
                               thresholds=tuple(thresholds) if isinstance(thresholds, (list, tuple)) else thresholds)
        _check_config(config)
        nets = load_detector_nets(weights)
        self.cascade = Cascade(nets["pnet"], nets["rnet"], nets["onet"], config).to(self.device).eval()

    @property
    def config(self) -> CascadeConfig:
        return self.cascade.config

    def detect(self, images: ImageLike | Sequence[ImageLike], min_face: float | None = None) -> list[list[Detection]]:
        """Detect faces in one photo or many (any sizes, grayscale fine); one list per photo, best first."""
        arrays = as_image_list(images)
        return [_to_detections(out) for out in self.detect_arrays(arrays, min_face)]

    def detect_arrays(self, arrays: Sequence[np.ndarray], min_face: float | None = None) -> list[CascadeOutput]:
        """Detect in RGB uint8 (H,W,3) arrays; raw tensors (on the detector's device) per photo.

        On the CPU a list is shared among single-threaded workers, one per torch thread, each taking the next
        photo as soon as it is free: these small convolutions scale poorly across threads inside one op, far
        better across photos, and photos differ up to 10x in cost, so fixed shares leave a worker idle. Each
        photo runs alone there: on the CPU batching photos together saves 1-3.5% (``tools/bench_detect.py
        --batching`` measures both), uneven fixed shares cost more. Elsewhere the whole list is one batched
        call. torch's thread count is restored.
        """
        config = self.config if min_face is None else replace(self.config, min_face=min_face)
        _check_config(config)
        arrays = list(arrays)
        workers = min(torch.get_num_threads(), len(arrays)) if self.device.type == "cpu" else 1
        if workers <= 1:
            return self.cascade(arrays, config) if arrays else []
        with torch_threads(1), ThreadPoolExecutor(workers) as pool:
            return list(pool.map(lambda image: self.cascade([image], config)[0], arrays))


def _check_config(config: CascadeConfig) -> None:
    """Refuse settings that would make the cascade loop forever or find nothing by construction."""
    numbers = (config.min_face, config.factor, *(config.thresholds if isinstance(config.thresholds, tuple) else ()))
    if not isinstance(config.thresholds, tuple) or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in numbers):
        raise InvalidInputError(f"min_face, factor and the three thresholds must be numbers, got min_face="
                                f"{config.min_face!r}, factor={config.factor!r}, thresholds={config.thresholds!r}")
    if not (config.min_face >= 1 and np.isfinite(config.min_face)):
        raise InvalidInputError(f"min_face must be a finite number >= 1 pixel, got {config.min_face}")
    if not 0 < config.factor < 1:
        raise InvalidInputError(f"factor must be in (0, 1), got {config.factor}")
    if config.edge not in ("clip", "pad"):
        raise InvalidInputError(f"edge must be 'clip' or 'pad', got {config.edge!r}")
    if len(config.thresholds) != 3 or not all(0 <= t <= 1 for t in config.thresholds):
        raise InvalidInputError(f"thresholds must be three numbers in [0, 1], got {config.thresholds}")


def _to_detections(out: CascadeOutput) -> list[Detection]:
    """Raw cascade tensors of one photo -> Detection records."""
    boxes, scores, landmarks = out.boxes.cpu().numpy(), out.scores.cpu().numpy(), out.landmarks.cpu().numpy()
    return [Detection(boxes[k], float(scores[k]), landmarks[k]) for k in range(len(boxes))]


_default: dict[str, FaceDetector] = {}


def detect(images: ImageLike | Sequence[ImageLike], min_face: float = DEFAULT_MIN_FACE,
           device: str | torch.device = "cpu",
           weights: str | os.PathLike[str] | None = None) -> list[list[Detection]]:
    """Detect faces with the shipped MTCNN weights (the detector is built once per device and weights)."""
    key = f"{resolve_device(device)}|{weights}"
    if key not in _default:
        _default[key] = FaceDetector(weights=weights, device=device)
    return _default[key].detect(images, min_face=min_face)
