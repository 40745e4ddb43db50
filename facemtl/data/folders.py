"""The generic "one folder per person" identity layout (users' own photos, and celeba_wild)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from ..io import IMAGE_SUFFIXES


@dataclass(frozen=True)
class PersonPhoto:
    """A photo and the name of the person it shows (the name of its folder)."""

    path: Path
    person: str


def read_person_folders(root: str | os.PathLike[str], min_photos: int = 1) -> list[PersonPhoto]:
    """Every image under ``root/<person>/``, sorted; people with fewer than ``min_photos`` are left out."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder of person folders")
    photos = []
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in person_dir.iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if len(files) >= min_photos:
            photos.extend(PersonPhoto(f, person_dir.name) for f in files)
    if not photos:
        raise DatasetError(f"{root}: no person folders with images found")
    return photos
