"""UTKFace's reader: labels from file names, malformed names skipped and counted, the committed split."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facemtl.data import data_root
from facemtl.data.utkface import (SPLIT_FILE, list_faces, make_split, parse_name, read_split_file, read_utkface,
                                  write_split_file)
from facemtl.errors import DatasetError

NAMES = ["25_0_0_20170116174525125.jpg.chip.jpg", "3_1_2_20161219203650636.jpg.chip.jpg",
         "81_1_4_20170120134639935.jpg.chip.jpg", "39_1_20170116174525125.jpg.chip.jpg",
         "40_2_0_20170116174525125.jpg.chip.jpg"]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A small folder in UTKFace's flat layout, two of its names malformed (a field missing, gender 2)."""
    root = tmp_path / "UTKFace"
    root.mkdir()
    for name in NAMES:
        Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(root / name, format="JPEG")
    (root / "notes.txt").write_text("not a face")
    return root


def test_labels_come_from_the_file_name(folder: Path) -> None:
    found = list_faces(folder)
    assert [(f.age, f.male, f.race) for f in found.faces] == [(25, 1, 0), (3, 0, 2), (81, 0, 4)]
    assert sorted(found.skipped) == sorted(NAMES[3:])
    assert parse_name("100_0_0_x.jpg.chip.jpg") == (100, 1, 0) and parse_name("a_0_0_x.jpg") is None


def test_split_is_seeded_complete_and_read_back(folder: Path, tmp_path: Path) -> None:
    names = [f"{k}_0_0_{k}.jpg.chip.jpg" for k in range(50)]
    split = make_split(names, seed=0)
    assert split == make_split(list(reversed(names)), seed=0) and split != make_split(names, seed=1)
    assert collections.Counter(split.values()) == {"train": 40, "val": 5, "test": 5}
    path = tmp_path / "split.csv"
    write_split_file(split, path)
    assert read_split_file(path) == split
    write_split_file({NAMES[0]: "test", NAMES[1]: "train"}, path)
    test = read_utkface(folder, "test", path)
    assert [f.path.name for f in test.faces] == [NAMES[0]]
    assert NAMES[2] in test.skipped                                       # not in the list: counted, not used
    with pytest.raises(DatasetError, match="unknown UTKFace split"):
        read_utkface(folder, "dev", path)
    with pytest.raises(DatasetError, match="not found"):
        list_faces(tmp_path / "absent")


def test_committed_split_covers_the_staged_set() -> None:
    folder = data_root() / "UTKFace"
    if not folder.is_dir():
        pytest.skip(f"UTKFace is not staged at {folder} (../shared/tools/stage-utkface; FACEMTL_DATA)")
    found = list_faces(folder)
    split = read_split_file(SPLIT_FILE)
    assert len(found.faces) == 23704 and len(found.skipped) == 3
    assert set(split) == {f.path.name for f in found.faces}
    assert split == make_split([f.path.name for f in found.faces], seed=0)
    assert collections.Counter(split.values()) == {"train": 18963, "val": 2370, "test": 2371}
