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


@pytest.mark.slow
def test_a_run_learns_age_and_gender_from_a_folder_in_utkface_layout(tmp_path: Path, data_dir: Path) -> None:
    """Real faces (CelebA's) laid out as UTKFace with a split.csv of their own: the table takes their age and
    gender, and a run trains and validates the age head on them."""
    import csv as csv_module

    from facemtl.data.celeba import CELEBA_ATTRIBUTES, read_celeba
    from facemtl.data.mixed import TableSpec, build_table
    from facemtl.model.multitask import load_model
    from facemtl.train.config import load_config
    from facemtl.train.trainer import Trainer
    from test_train import write_config

    root = tmp_path / "data"
    (root / "UTKFace").mkdir(parents=True)
    for name in ("MTFL", "celeba"):
        (root / name).symlink_to((data_dir / name).resolve())
    faces = read_celeba(data_dir / "celeba", "val")[:48]
    split = {}
    for k, face in enumerate(faces):
        name = f"{20 + k}_{k % 2}_{k % 5}_2017{k:011d}.jpg.chip.jpg"
        (root / "UTKFace" / name).symlink_to(face.path.resolve())
        split[name] = "val" if k % 4 == 0 else "train"
    write_split_file(split, root / "UTKFace" / "split.csv")
    table = build_table(TableSpec(str(root), None, None, None, utkface_split="train"), tmp_path / "cache",
                        progress=False)
    assert len(table) == 36 and (table.source == 3).all()
    assert sorted(table.age.tolist()) == sorted(20 + k for k in range(48) if k % 4)
    male = CELEBA_ATTRIBUTES.index("Male")
    assert table.attr_mask[:, male].all() and table.attr_mask.sum() == len(table)
    assert table.attributes[:, male].tolist() == [int(int(Path(f).name.split("_")[1]) == 0) for f in table.files]
    path = write_config(tmp_path / "a.toml", tmp_path / "run", root, tmp_path / "cache")
    cfg = load_config(path, {"data.wild": False, "data.utkface": True, "train.threads": 0, "train.epochs": 1,
                             "train.identities_per_batch": 2,
                             "model.tasks": ["identity", "verification", "landmarks", "attributes", "pose", "age"]})
    Trainer(cfg).run()
    rows = list(csv_module.DictReader((tmp_path / "run" / "log.csv").open()))
    assert np.isfinite(float(rows[-1]["val_age_mae"])) and np.isfinite(float(rows[-1]["loss_age"]))
    assert "age" in load_model(tmp_path / "run" / "model.pt").heads
