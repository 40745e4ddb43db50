"""Grouping faces by person: the graph clustering on hand-checkable embeddings, and ``facemtl cluster`` on real
photos of four celeba_wild test people."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from facemtl import cluster as clustering
from facemtl.analyzer import FaceAnalyzer
from facemtl.cli import main
from facemtl.cluster import cluster_embeddings, cluster_photos, contact_sheet, neighbour_graph
from facemtl.errors import InvalidInputError
from facemtl.io import load_image
from facemtl.model.multitask import ModelConfig, MultiTaskNet


def _at(*degrees: float) -> np.ndarray:
    """Unit vectors in a plane at these angles: the cosine of two is the cosine of their angle apart."""
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], 1).astype(np.float32)


def test_well_separated_people_and_a_loner() -> None:
    eye = np.eye(4, dtype=np.float32)
    x = np.concatenate([eye[[0] * 5], eye[[1] * 4], eye[[2] * 3], eye[[3]]])  # cosines 1 inside, 0 across
    assert cluster_embeddings(x, 0.5).tolist() == [0] * 5 + [1] * 4 + [2] * 3 + [-1]
    assert cluster_embeddings(x, 0.5, min_size=4).tolist() == [0] * 5 + [1] * 4 + [-1] * 4
    assert cluster_embeddings(x, 0.5, min_size=1).tolist() == [0] * 5 + [1] * 4 + [2] * 3 + [3]


def test_groups_closer_than_the_threshold_merge() -> None:
    x = _at(0, 5, 40, 45)  # cosines: 0.996 inside each pair; 0.707 to 0.819 across
    assert cluster_embeddings(x, 0.9).tolist() == [0, 0, 1, 1]
    assert cluster_embeddings(x, 0.75).tolist() == [0, 0, 0, 0]
    assert cluster_embeddings(x, 0.999).tolist() == [-1] * 4


def test_one_stray_link_does_not_merge_two_people() -> None:
    x = _at(0, 1, 2, 3, 25, 60, 85, 86, 87, 88)  # only 25-60 links across (cos 35 deg = 0.819 >= 0.8)
    graph = neighbour_graph(x, 0.8)
    assert graph[4, 5] == pytest.approx(np.cos(np.radians(35))) and graph[3, 5] == 0
    assert cluster_embeddings(x, 0.8).tolist() == [0] * 5 + [1] * 5


def test_only_mutual_nearest_neighbours_are_linked() -> None:
    x = _at(0, 10, 15)  # 0's nearest face is 10, but 10 and 15 are each other's nearest
    assert (neighbour_graph(x, 0.5, k=1).toarray() > 0).tolist() == [[False, False, False], [False, False, True],
                                                                       [False, True, False]]
    assert cluster_embeddings(x, 0.5, k=1).tolist() == [-1, 0, 0]
    assert cluster_embeddings(x, 0.5, k=2).tolist() == [0, 0, 0]


def test_graph_in_blocks_is_the_exact_top_k_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16))[rng.integers(0, 4, 60)] + 0.7 * rng.standard_normal((60, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    k, threshold = 3, 0.4
    scores = x @ x.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argsort(-scores, axis=1)[:, :k]
    expected = np.zeros_like(scores)
    rows = np.repeat(np.arange(60), k)
    expected[rows, top.ravel()] = np.where(scores[rows, top.ravel()] >= threshold, scores[rows, top.ravel()], 0)
    expected = np.minimum(expected, expected.T)  # mutual neighbours only
    monkeypatch.setattr(clustering, "MAX_SCORES", 7 * 60)  # blocks of 7 rows
    assert np.allclose(neighbour_graph(x, threshold, k).toarray(), expected, atol=1e-6)
    assert (expected > 0).any(1).sum() > 30 and (scores >= threshold).sum(1).max() > k  # crowded rows cut to k


@pytest.mark.parametrize("bad, match", [
    (np.ones(4, np.float32), "shape"),
    (np.full((3, 2), np.nan, np.float32), "NaN"),
    (np.ones((3, 2), np.float32), "L2-normalised"),
])
def test_bad_embeddings_are_refused(bad: np.ndarray, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        cluster_embeddings(bad, 0.5)


def test_bad_settings_are_refused() -> None:
    x = _at(0, 5)
    for kwargs, match in [({"threshold": 0.0}, "threshold"), ({"threshold": 1.5}, "threshold"),
                          ({"threshold": 0.5, "k": 0}, "k must"), ({"threshold": 0.5, "min_size": 0}, "min_size")]:
        with pytest.raises(InvalidInputError, match=match):
            cluster_embeddings(x, **kwargs)


def test_contact_sheet_tiles_the_crops_row_by_row() -> None:
    crops = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    sheet = contact_sheet(crops)
    assert sheet.shape == (8, 12, 3)  # 2 rows of 3 tiles, the last one empty (grey)
    assert [sheet[4 * r, 4 * c, 0] for r in range(2) for c in range(3)] == [0, 1, 2, 3, 4, 128]
    assert contact_sheet(crops, max_faces=2).shape == (4, 8, 3)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer(device="cpu")


def test_threshold_defaults_to_the_models_calibrated_one(analyzer: FaceAnalyzer, people_folder: Callable[..., Path],
                                                         tmp_path: Path) -> None:
    folder = people_folder("two", 2, 1)
    assert analyzer.threshold is not None
    stored = analyzer.model.config.verification_threshold
    assert cluster_photos(analyzer, [folder]).threshold == analyzer.threshold == stored
    bare = MultiTaskNet(ModelConfig(num_identities=5, width=0.25, verification_threshold=None)).eval()
    with pytest.raises(InvalidInputError, match="--threshold"):
        cluster_photos(FaceAnalyzer(detector=analyzer.detector, model=bare, device="cpu"), [folder])
    assert cluster_photos(FaceAnalyzer(detector=analyzer.detector, model=bare, device="cpu"), [folder],
                          threshold=0.9).threshold == 0.9


def test_cli_groups_real_photos_by_person(analyzer: FaceAnalyzer, people_folder: Callable[..., Path],
                                          tmp_path: Path) -> None:
    folder, out = people_folder("people", 4, 3), tmp_path / "out"
    assert main(["cluster", str(folder), "--out", str(out), "--device", "cpu"]) == 0
    records = json.loads((out / "clusters.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    photos = sorted(folder.rglob("*.jpg"))
    assert all(set(r) == {"file", "face", "box", "cluster"} for r in records)
    assert sorted({r["file"] for r in records}) == sorted(map(str, photos))
    found = analyzer.analyze([load_image(p) for p in photos], refine=0)  # analyze's faces, in analyze's order
    for photo, faces in zip(photos, found):
        mine = [r for r in records if r["file"] == str(photo)]
        assert [r["face"] for r in mine] == list(range(len(faces)))
        assert np.allclose([r["box"] for r in mine], [f.box for f in faces], atol=0.01)
    assert summary["threshold"] == analyzer.threshold and summary["faces"] == len(records)
    assert summary["sizes"] == [sum(r["cluster"] == k for r in records) for k in range(summary["clusters"])]
    assert summary["alone"] == sum(r["cluster"] == -1 for r in records)
    for k, size in enumerate(summary["sizes"]):
        with Image.open(out / "sheets" / f"cluster_{k}.jpg") as sheet:
            side = analyzer.input_size * int(np.ceil(np.sqrt(size)))
            assert sheet.size == (side, analyzer.input_size * int(np.ceil(size / np.ceil(np.sqrt(size)))))
    assert not (out / "sheets" / f"cluster_{summary['clusters']}.jpg").exists()

    # the largest face of each photo. Measured with the shipped model: 3 of 3 photos in one cluster for three
    # people, 2 of 3 for the fourth, but the 4 people merged into 2 clusters of 2. Bounds with a margin:
    largest = {}
    for r in records:
        area = (r["box"][2] - r["box"][0]) * (r["box"][3] - r["box"][1])
        if area > largest.get(r["file"], (0, -1))[0]:
            largest[r["file"]] = (area, r["cluster"])
    person = {f: Path(f).parent.name for f in largest}
    together = [max(sum(largest[f][1] == c for f in largest if person[f] == p)
                    for c in range(summary["clusters"])) for p in sorted(set(person.values()))]
    assert sum(n >= 2 for n in together) >= 3  # most photos of a person in one cluster, for 3 of 4 people
    people_per_cluster = [len({person[f] for f in largest if largest[f][1] == c}) for c in range(summary["clusters"])]
    assert summary["clusters"] >= 1 and max(people_per_cluster) <= 3  # never everyone in one cluster


def test_cli_reports_bad_files_and_carries_on(people_folder: Callable[..., Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder, out = people_folder("mixed", 2, 1), tmp_path / "out"
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    assert main(["cluster", str(folder), "--out", str(out), "--device", "cpu"]) == 1
    failures = {Path(f["file"]).name: f["reason"] for f in json.loads((out / "failures.json").read_text())}
    assert set(failures) == {"broken.jpg", "empty.png"} and "empty" in failures["empty.png"]
    assert "FAILED" in capsys.readouterr().err
    assert len({r["file"] for r in json.loads((out / "clusters.json").read_text())}) == 2


def test_cli_refuses_to_overwrite_without_force(people_folder: Callable[..., Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder, out = people_folder("one", 1, 2), tmp_path / "out"
    out.mkdir()
    (out / "clusters.json").write_text("mine\n")
    assert main(["cluster", str(folder), "--out", str(out), "--device", "cpu"]) == 2
    assert "--force" in capsys.readouterr().err and (out / "clusters.json").read_text() == "mine\n"
    assert main(["cluster", str(folder), "--out", str(out), "--device", "cpu", "--force"]) == 0
    assert [r["file"] for r in json.loads((out / "clusters.json").read_text())] == sorted(
        str(p) for p in folder.rglob("*.jpg"))
