"""Reader for WIDER FACE's ground truth (Yang et al., CVPR 2016): ``wider_face_*_bbx_gt.txt`` as published."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import DatasetError
from . import annotation_lines


@dataclass(frozen=True)
class WiderFaces:
    """The annotated faces of one WIDER FACE image (attribute codes as in the official file)."""

    boxes: NDArray[np.float64]
    blur: NDArray[np.int64]
    expression: NDArray[np.int64]
    illumination: NDArray[np.int64]
    invalid: NDArray[np.bool_]
    occlusion: NDArray[np.int64]
    pose: NDArray[np.int64]

    def __len__(self) -> int:
        """Number of annotated faces (valid and invalid)."""
        return len(self.boxes)

    @property
    def heights(self) -> NDArray[np.float64]:
        """Box heights in pixels."""
        return self.boxes[:, 3] - self.boxes[:, 1]


def _faces_from_rows(rows: NDArray[np.float64]) -> WiderFaces:
    """Turn (n, 10) ``x y w h blur expression illumination invalid occlusion pose`` rows into WiderFaces."""
    x, y, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    codes = rows[:, 4:].astype(np.int64)
    return WiderFaces(
        boxes=np.stack([x, y, x + w, y + h], axis=1),
        blur=codes[:, 0],
        expression=codes[:, 1],
        illumination=codes[:, 2],
        invalid=codes[:, 3] != 0,
        occlusion=codes[:, 4],
        pose=codes[:, 5],
    )


def _face_row(tokens: list[str], path: Path, lineno: int) -> list[float]:
    """Parse one face line into 10 numbers, raising DatasetError that names the line."""
    if len(tokens) != 10:
        raise DatasetError(f"{path}: line {lineno}: a face line needs 10 numbers, got {len(tokens)}")
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise DatasetError(f"{path}: line {lineno}: a face line holds a non-number: {' '.join(tokens)}") from None
    if not all(math.isfinite(v) for v in values) or values[2] < 0 or values[3] < 0:
        raise DatasetError(f"{path}: line {lineno}: invalid box (non-finite or negative size)")
    return values


def _parse_count(tokens: list[str]) -> int | None:
    """The face count if the line is a single non-negative integer, else None."""
    if len(tokens) != 1:
        return None
    try:
        value = int(tokens[0])
    except ValueError:
        return None
    return value if value >= 0 else None


def read_wider_gt(path: str | Path) -> dict[str, WiderFaces]:
    """Read a WIDER FACE ``wider_face_*_bbx_gt.txt`` into {relative image path: WiderFaces}, in file order.

    Format: an image path line, a face-count line, then one ``x y w h blur expression illumination invalid
    occlusion pose`` line per face. An image with count 0 is followed by a single placeholder line of ten
    zeros in the official files; it is skipped (and tolerated when absent). Windows line endings, trailing
    whitespace and blank lines are accepted; anything else malformed raises DatasetError naming the line.
    """
    path = Path(path)
    lines = annotation_lines(path, "ground-truth file")
    out: dict[str, WiderFaces] = {}
    i = 0
    while i < len(lines):
        no, tokens = lines[i]
        if len(tokens) != 1 or _parse_count(tokens) is not None:
            raise DatasetError(f"{path}: line {no}: expected an image path, got {' '.join(tokens)!r}")
        name = tokens[0].replace("\\", "/")
        if name in out:
            raise DatasetError(f"{path}: line {no}: image {name} appears twice")
        if i + 1 >= len(lines):
            raise DatasetError(f"{path}: line {no}: file ends before the face count of {name}")
        count_no, count_tokens = lines[i + 1]
        count = _parse_count(count_tokens)
        if count is None:
            raise DatasetError(f"{path}: line {count_no}: expected a face count, got {' '.join(count_tokens)!r}")
        i += 2
        if count == 0:
            # The official files put one all-zero face line after a zero count: skip it.
            if i < len(lines) and len(lines[i][1]) == 10:
                zero_no, zero_tokens = lines[i]
                if any(v != 0 for v in _face_row(zero_tokens, path, zero_no)):
                    raise DatasetError(f"{path}: line {zero_no}: image {name} has count 0 but a non-zero face line")
                i += 1
            rows = np.zeros((0, 10))
        else:
            block = lines[i : i + count]
            if len(block) < count:
                raise DatasetError(f"{path}: line {count_no}: {name} announces {count} faces, file ends first")
            rows = np.array([_face_row(t, path, n) for n, t in block], dtype=np.float64)
            i += count
        out[name] = _faces_from_rows(rows)
    return out
