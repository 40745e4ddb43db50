"""Shared fixtures: the real data root (tests needing it skip with a reason when it is absent)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch

from facemtl.data import data_root

torch.set_num_threads(2)


def _require(sub: str) -> Path:
    path = data_root() / sub
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set FACEMTL_DATA or place ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the real datasets."""
    return _require("")


@pytest.fixture(scope="session")
def wider_dir() -> Path:
    return _require("widerface")


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    return _require("celeba")


@pytest.fixture(scope="session")
def mtfl_dir() -> Path:
    return _require("MTFL")


@pytest.fixture(scope="session")
def celeba_wild_dir() -> Path:
    return _require("celeba_wild")


@pytest.fixture()
def people_folder(data_dir: Path, tmp_path: Path) -> Callable[[str, int, int], Path]:
    """Makes ``tmp_path/name``: the first ``people`` celeba_wild test people, links to their first ``photos``."""
    def make(name: str, people: int, photos: int) -> Path:
        target = tmp_path / name
        for person in sorted((data_dir / "celeba_wild" / "test").iterdir())[:people]:
            (target / person.name).mkdir(parents=True)
            for photo in sorted(person.glob("*.jpg"))[:photos]:
                (target / person.name / photo.name).symlink_to(photo.resolve())
        return target
    return make
