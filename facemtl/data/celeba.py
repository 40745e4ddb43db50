"""Reader for CelebA (Liu et al., ICCV 2015): identities, the 40 attributes and the official partition."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..types import CELEBA_ATTRIBUTES

SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class CelebAFace:
    """One CelebA image: path, identity number, 40 attributes as 0/1, split name."""

    path: Path
    identity: int
    attributes: np.ndarray
    split: str


def _rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: CelebA list not found")
    return [line.split() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def read_celeba(root: str | os.PathLike[str], split: str | None = None) -> list[CelebAFace]:
    """Read the three official lists of a CelebA folder; keep one split (train/val/test) or all."""
    root = Path(root)
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown CelebA split {split!r}; expected one of {sorted(SPLITS)}")
    ids = {r[0]: int(r[1]) for r in _rows(root / "identity_CelebA.txt")}
    parts = {r[0]: int(r[1]) for r in _rows(root / "list_eval_partition.txt")}
    attr_rows = _rows(root / "list_attr_celeba.txt")
    if len(attr_rows) < 2 or tuple(attr_rows[1]) != CELEBA_ATTRIBUTES:
        raise DatasetError(f"{root / 'list_attr_celeba.txt'}: second line must list CelebA's 40 attribute names")
    names = {v: k for k, v in SPLITS.items()}
    faces = []
    for line_no, row in enumerate(attr_rows[2:], 3):
        if len(row) != 41:
            raise DatasetError(f"{root / 'list_attr_celeba.txt'}:{line_no}: expected 41 fields, got {len(row)}")
        name = row[0]
        if name not in ids or name not in parts:
            raise DatasetError(f"{name}: missing from identity_CelebA.txt or list_eval_partition.txt")
        if split is not None and parts[name] != SPLITS[split]:
            continue
        attrs = np.array([v == "1" for v in row[1:]], dtype=np.uint8)
        faces.append(CelebAFace(root / "img_align_celeba" / name, ids[name], attrs, names[parts[name]]))
    return faces
