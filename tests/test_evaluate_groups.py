"""Age and gender by group (UTKFace's protocol): hand-checked tables, and the suite's part end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facemtl.analyzer import FaceAnalyzer
from facemtl.data.celeba import read_celeba
from facemtl.data.utkface import UTKFACE_RACES, write_split_file
from facemtl.evaluate.groups import AGE_BANDS, band_of, error_by_age, group_table
from facemtl.evaluate.suite import evaluate_model, headline
from facemtl.model.multitask import ModelConfig, MultiTaskNet
from facemtl.model.sharing import TASKS


def test_bands_cover_every_age_once() -> None:
    assert band_of(np.array([0, 12, 13, 19, 20, 39, 40, 59, 60, 116])).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [name for name, _, _ in AGE_BANDS] == ["0-12", "13-19", "20-39", "40-59", "60+"]


def test_group_table_hand_values() -> None:
    ages = np.array([5, 30, 30, 70])
    male = np.array([1, 0, 1, 0])
    race = np.array([0, 1, 1, 0])
    table = group_table(ages, male, race, UTKFACE_RACES, predicted_age=np.array([7.0, 30.0, 36.0, 60.0]),
                        male_probability=np.array([0.9, 0.8, 0.6, 0.1]))
    assert table["all"] == {"faces": 4, "age_mae": pytest.approx(4.5), "gender_accuracy": 0.75}
    assert table["age_band"]["20-39"] == {"faces": 2, "age_mae": 3.0, "gender_accuracy": 0.5}
    assert table["gender"]["women"] == {"faces": 2, "age_mae": 5.0, "gender_accuracy": 0.5}
    assert table["race"]["Black"]["faces"] == 2 and table["race"]["Asian"]["faces"] == 0
    assert np.isnan(table["race"]["Asian"]["age_mae"])
    gender_only = group_table(ages, male, race, UTKFACE_RACES, male_probability=np.full(4, 0.7))
    assert "age_mae" not in gender_only["all"] and gender_only["all"]["gender_accuracy"] == 0.5
    bins, mae, count = error_by_age(ages, np.array([7.0, 30.0, 36.0, 60.0]))
    assert bins.tolist() == [5, 30, 70] and mae.tolist() == [2.0, 3.0, 10.0] and count.tolist() == [1, 2, 1]


def test_the_suite_reports_utkface_groups_and_skips_without_it(tmp_path: Path, data_dir: Path) -> None:
    root = tmp_path / "data"
    (root / "UTKFace").mkdir(parents=True)
    faces = read_celeba(data_dir / "celeba", "test")[:12]
    split = {}
    for k, face in enumerate(faces):                                      # real faces in UTKFace's layout
        name = f"{5 + 7 * k}_{k % 2}_{k % 5}_2017{k:011d}.jpg.chip.jpg"
        (root / "UTKFace" / name).symlink_to(face.path.resolve())
        split[name] = "test"
    write_split_file(split, root / "UTKFace" / "split.csv")
    torch.manual_seed(0)
    model = MultiTaskNet(ModelConfig(num_identities=3, width=0.25, tasks=TASKS)).eval()
    results = evaluate_model(FaceAnalyzer(model=model), root, tmp_path / "cache", ["utkface"], tmp_path / "out")
    groups = results["utkface"]["groups"]
    assert results["utkface"]["faces"] == 12 and groups["all"]["faces"] == 12
    assert sum(cell["faces"] for cell in groups["age_band"].values()) == 12
    assert set(groups["race"]) == set(UTKFACE_RACES) and np.isfinite(groups["all"]["age_mae"])
    assert 0 <= groups["all"]["gender_accuracy"] <= 1
    assert (tmp_path / "out" / "utkface_groups.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["utkface"]["groups"] == groups
    assert {"utkface_age_mae_years", "utkface_gender_%"} <= set(headline(results))
    empty = evaluate_model(FaceAnalyzer(model=model), tmp_path / "nothing", tmp_path / "cache", ["utkface"])
    assert "not staged" in empty["utkface"]["skipped"]
