"""Reader for UTKFace (Zhang, Song, Qi, CVPR 2017): aligned 200x200 faces labelled by file name.

The official "aligned & cropped" set is one flat folder of ``<age>_<gender>_<race>_<datetime>.jpg.chip.jpg``
files: age in years, gender 0 male / 1 female, race 0..4 (White, Black, Asian, Indian, Others). A few
published names are malformed (a field missing); the reader skips and counts them. The split is fixed by
a committed list (``configs/splits/utkface.csv``, ``file,split``), seeded once, so every run and every
machine trains and tests on the same faces.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._resources import splits_dir
from ..errors import DatasetError

UTKFACE_RACES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
"""UTKFace's race groups, used to measure per group only: never predicted or output."""
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_FILE = splits_dir() / "utkface.csv"
"""The committed split (``configs/splits/utkface.csv``, installed with the package)."""


@dataclass(frozen=True)
class UTKFace:
    """One UTKFace face: image path, age in years, male (1) or not (0), race index into UTKFACE_RACES."""

    path: Path
    age: int
    male: int
    race: int


@dataclass(frozen=True)
class UTKFaceSet:
    """The faces read from a folder and the file names that could not be read as labels."""

    faces: list[UTKFace]
    skipped: list[str]


def parse_name(name: str) -> tuple[int, int, int] | None:
    """(age, male, race) from an official file name, or None for a malformed one."""
    parts = name.split("_")
    if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
        return None
    age, gender, race = (int(p) for p in parts[:3])
    if gender not in (0, 1) or not 0 <= race < len(UTKFACE_RACES) or not 0 <= age <= 130:
        return None
    return age, int(gender == 0), race


def list_faces(folder: str | os.PathLike[str]) -> UTKFaceSet:
    """Every labelled face of a flat UTKFace folder, sorted by name; malformed names are skipped and counted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: UTKFace folder not found (stage it and set FACEMTL_DATA)")
    faces, skipped = [], []
    for path in sorted(p for p in folder.iterdir() if p.name.endswith(".jpg") and not p.name.startswith(".")):
        labels = parse_name(path.name)
        if labels is None:
            skipped.append(path.name)
        else:
            faces.append(UTKFace(path, *labels))
    if not faces:
        raise DatasetError(f"{folder}: no UTKFace images (<age>_<gender>_<race>_<date>.jpg.chip.jpg) found")
    return UTKFaceSet(faces, skipped)


def make_split(names: list[str], seed: int = 0) -> dict[str, str]:
    """A seeded train/val/test assignment of file names (80/10/10), the same for the same names and seed."""
    order = np.random.default_rng(seed).permutation(len(names))
    ordered = sorted(names)
    cuts = np.cumsum([int(round(f * len(names))) for f in SPLIT_FRACTIONS[:-1]])
    return {ordered[i]: SPLITS[int(np.searchsorted(cuts, rank, side="right"))] for rank, i in enumerate(order)}


def read_split_file(path: str | os.PathLike[str] = SPLIT_FILE) -> dict[str, str]:
    """The committed ``file,split`` list as a dict."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: UTKFace split list not found")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or set(rows[0]) != {"file", "split"} or any(r["split"] not in SPLITS for r in rows):
        raise DatasetError(f"{path}: expected a 'file,split' CSV with splits {', '.join(SPLITS)}")
    return {r["file"]: r["split"] for r in rows}


def write_split_file(assignment: dict[str, str], path: str | os.PathLike[str]) -> None:
    """Write a ``file,split`` list sorted by file name."""
    with Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["file", "split"])
        writer.writerows(sorted(assignment.items()))


def read_utkface(folder: str | os.PathLike[str], split: str | None = None,
                 split_file: str | os.PathLike[str] | None = None) -> UTKFaceSet:
    """The faces of one split (or all); faces the split list does not name are skipped and counted too.

    The list is ``split_file`` when given, else a ``split.csv`` inside the folder (another copy of the set,
    another split), else the committed one."""
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown UTKFace split {split!r}; expected one of {', '.join(SPLITS)}")
    found = list_faces(folder)
    if split is None:
        return found
    own = Path(folder) / "split.csv"
    assignment = read_split_file(split_file or (own if own.is_file() else SPLIT_FILE))
    unlisted = [f.path.name for f in found.faces if f.path.name not in assignment]
    faces = [f for f in found.faces if assignment.get(f.path.name) == split]
    return UTKFaceSet(faces, found.skipped + unlisted)
