"""Reader for MTFL (Zhang et al., ECCV 2014): five landmarks, gender, smile, glasses and head pose."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError

POSE_CLASSES = 5
MTFL_ATTRIBUTES = {"male": "Male", "smiling": "Smiling", "eyeglasses": "Eyeglasses"}
"""Each binary field of an MTFL face and the CelebA attribute that means the same."""
MATLAB_ORIGIN = 1.0
"""MTFL's points are MATLAB pixel coordinates (the first pixel's centre is 1); the toolkit's are 0-based (the
first pixel's centre is 0, as in numpy, OpenCV and ``facemtl.align``), so the reader subtracts this."""


@dataclass(frozen=True)
class MTFLFace:
    """One MTFL face: image path, (5,2) landmarks in 0-based pixels (image-left eye first) and 0-based labels."""

    path: Path
    landmarks: np.ndarray
    male: int
    smiling: int
    eyeglasses: int
    pose: int
    """0 left profile, 1 left, 2 frontal, 3 right, 4 right profile."""


def read_mtfl(root: str | os.PathLike[str], split: str = "training") -> list[MTFLFace]:
    """Read ``training.txt`` or ``testing.txt`` exactly as published (CRLF, ``\\`` separators, leading spaces),
    the points moved from MATLAB's 1-based pixels to 0-based ones."""
    root = Path(root)
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"{listing}: MTFL list not found")
    faces = []
    for line_no, line in enumerate(listing.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 15:
            raise DatasetError(f"{listing}:{line_no}: expected 15 fields (path, 10 coordinates, 4 labels), "
                               f"got {len(parts)}")
        try:
            coords = np.array([float(v) for v in parts[1:11]], dtype=np.float32)
            gender, smile, glasses, pose = (int(v) for v in parts[11:15])
        except ValueError as exc:
            raise DatasetError(f"{listing}:{line_no}: {exc}") from None
        if not (gender in (1, 2) and smile in (1, 2) and glasses in (1, 2) and 1 <= pose <= POSE_CLASSES):
            raise DatasetError(f"{listing}:{line_no}: labels out of range: {parts[11:15]}")
        faces.append(MTFLFace(
            path=root / Path(*parts[0].replace("\\", "/").split("/")),
            landmarks=np.stack([coords[:5], coords[5:]], axis=1) - np.float32(MATLAB_ORIGIN),
            male=int(gender == 1), smiling=int(smile == 1), eyeglasses=int(glasses == 1), pose=pose - 1,
        ))
    if not faces:
        raise DatasetError(f"{listing}: no faces listed")
    return faces
