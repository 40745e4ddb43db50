"""End-to-end tests of the ``facemtl`` command line, run in-process through ``facemtl.cli.main``.

The shipped multi-task model may not exist yet, so every command that needs one gets a tiny untrained
model saved to a temporary folder. Photos are the shipped astronaut (one face), downscaled, plus copies
and deliberately broken files.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facemtl._resources import sample_photo
from facemtl.cli import main
from facemtl.data.celeba import CELEBA_ATTRIBUTES
from facemtl.io import load_image
from facemtl.model.multitask import ModelConfig, MultiTaskNet
from facemtl.types import POSE_NAMES

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIDE = 256  # the astronaut downscaled: detection stays fast on a busy CPU


# ------------------------------------------------------------------------------------------------ fixtures

def _tiny_model(path: Path, seed: int, threshold: float | None = 0.5) -> Path:
    torch.manual_seed(seed)
    model = MultiTaskNet(ModelConfig(num_identities=5, width=0.25, verification_threshold=threshold)).eval()
    model.save(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model with the stored threshold 0.5, one with another seed, and one with no threshold."""
    root = tmp_path_factory.mktemp("models")
    return {"tiny": _tiny_model(root / "tiny.pt", seed=0),
            "other": _tiny_model(root / "other.pt", seed=1),
            "nothreshold": _tiny_model(root / "nothreshold.pt", seed=0, threshold=None)}


@pytest.fixture(scope="module")
def astro() -> Image.Image:
    return Image.open(sample_photo()).convert("RGB").resize((SIDE, SIDE), Image.LANCZOS)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo_bytes(astro: Image.Image) -> dict[str, bytes]:
    """Encoded test files by name: three good photos, a face-less one and three broken ones."""
    full_jpeg = _jpeg(Image.open(sample_photo()).convert("RGB"))
    return {
        "astronaut.png": _png(astro),
        "mirrored.png": _png(astro.transpose(Image.FLIP_LEFT_RIGHT)),
        "astronaut_copy.jpg": _jpeg(astro),
        "gray.png": _png(Image.new("RGB", (SIDE, SIDE), (128, 128, 128))),
        "truncated.jpg": full_jpeg[: int(len(full_jpeg) * 0.6)],
        "empty.jpg": b"",
        "notes.jpg": b"shopping list: milk, eggs, a new camera\n",
    }


def _write(folder: Path, photo_bytes: dict[str, bytes], names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        (folder / name).write_bytes(photo_bytes[name])
        paths.append(folder / name)
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, photo_bytes: dict[str, bytes]) -> dict[str, Path]:
    """Shared read-only inputs for the commands that take single photos."""
    root = tmp_path_factory.mktemp("photos")
    return {p.name: p for p in _write(root, photo_bytes, list(photo_bytes))}


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run ``facemtl ARGS`` in-process; return (exit code, stdout, stderr); argparse's usage exits count."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = int(exc.code)
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: relative path -> (sha256, mtime in ns)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _check_box_score_landmarks(face: dict, width: int, height: int) -> None:
    box = face["box"]
    assert len(box) == 4 and all(isinstance(v, float) for v in box)
    x1, y1, x2, y2 = box
    assert x1 < x2 and y1 < y2
    assert -1 <= x1 and x2 <= width + 1 and -1 <= y1 and y2 <= height + 1
    assert 0.0 < face["score"] <= 1.0
    marks = face["landmarks"]
    assert len(marks) == 5 and all(len(p) == 2 for p in marks)
    # the points lie inside the box, image-left eye first
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in marks)
    assert marks[0][0] < marks[1][0] and marks[3][0] < marks[4][0]


# ------------------------------------------------------------------------------------------------ detect

def test_detect_folder_with_bad_files(tmp_path, capsys, photo_bytes):
    good = ["astronaut.png", "mirrored.png"]
    bad = ["truncated.jpg", "empty.jpg", "notes.jpg"]
    inputs = tmp_path / "in"
    _write(inputs, photo_bytes, good + bad)
    before = _snapshot(inputs)
    out = tmp_path / "out"

    code, _, err = cli(capsys, "detect", inputs, "--out", out, "--crops", "--draw")
    assert code == 1

    records = json.loads((out / "faces.json").read_text())
    assert sorted(Path(r["file"]).name for r in records) == sorted(good)
    for rec in records:
        assert set(rec) == {"file", "width", "height", "faces", "crops", "annotated"}
        stem = Path(rec["file"]).stem
        assert rec["crops"] == [f"crops/{stem}_0.png"] and rec["annotated"] == f"annotated/{Path(rec['file']).name}"
        assert (rec["width"], rec["height"]) == (SIDE, SIDE)
        assert len(rec["faces"]) == 1
        _check_box_score_landmarks(rec["faces"][0], rec["width"], rec["height"])
    # the mirrored photo's face sits at the mirrored place
    by_name = {Path(r["file"]).name: r["faces"][0]["box"] for r in records}
    a, m = by_name["astronaut.png"], by_name["mirrored.png"]
    assert abs(a[0] - (SIDE - m[2])) < 6 and abs(a[2] - (SIDE - m[0])) < 6

    failures = json.loads((out / "failures.json").read_text())
    assert sorted(Path(f["file"]).name for f in failures) == sorted(bad)
    reasons = {Path(f["file"]).name: f["reason"] for f in failures}
    assert "truncated" in reasons["truncated.jpg"]
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    for name, reason in reasons.items():
        assert re.search(rf"FAILED .*{re.escape(name)}: {re.escape(reason)}", err), (name, err)

    crops = sorted(p.name for p in (out / "crops").iterdir())
    assert crops == ["astronaut_0.png", "mirrored_0.png"]
    for name in crops:
        assert load_image(out / "crops" / name).shape == (112, 112, 3)
    annotated = sorted(p.name for p in (out / "annotated").iterdir())
    assert annotated == sorted(good)
    original = load_image(inputs / "astronaut.png")
    drawn = load_image(out / "annotated" / "astronaut.png")
    assert drawn.shape == original.shape and not np.array_equal(drawn, original)

    assert _snapshot(inputs) == before, "the inputs must not be touched"

    # a rerun into the same folder refuses, and leaves the outputs as they were
    outputs = _snapshot(out)
    code, _, err = cli(capsys, "detect", inputs, "--out", out, "--crops", "--draw")
    assert code == 2
    assert "--force" in err
    assert _snapshot(out) == outputs

    code, _, err = cli(capsys, "detect", inputs, "--out", out, "--crops", "--draw", "--force")
    assert code == 1
    assert json.loads((out / "faces.json").read_text()) == records
    assert json.loads((out / "failures.json").read_text()) == failures
    assert sorted(p.name for p in (out / "crops").iterdir()) == crops
    assert _snapshot(inputs) == before


def test_detect_recursive_and_output_inside_input(tmp_path, capsys, photo_bytes):
    root = tmp_path / "album"
    _write(root, photo_bytes, ["astronaut.png"])
    _write(root / "trip" / "day1", photo_bytes, ["mirrored.png"])
    out = root / "results"

    code, _, err = cli(capsys, "detect", root, "--out", out, "--crops", "--draw")
    assert code == 0, err
    first = json.loads((out / "faces.json").read_text())
    files = sorted(Path(r["file"]).resolve() for r in first)
    assert files == sorted([(root / "astronaut.png").resolve(), (root / "trip" / "day1" / "mirrored.png").resolve()])
    assert json.loads((out / "failures.json").read_text()) == []
    assert (out / "annotated" / "astronaut.png").is_file() and (out / "crops" / "mirrored_0.png").is_file()

    # OUT now holds PNGs of its own; a forced rerun must not take them as inputs
    code, _, err = cli(capsys, "detect", root, "--out", out, "--crops", "--draw", "--force")
    assert code == 0, err
    second = json.loads((out / "faces.json").read_text())
    assert second == first
    assert "2 photo(s) processed" in err
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["astronaut.png", "mirrored.png"]


def test_force_rerun_drops_stale_failures(tmp_path, capsys, photo_bytes):
    inputs = tmp_path / "in"
    _write(inputs, photo_bytes, ["astronaut.png", "notes.jpg"])
    out = tmp_path / "out"
    assert cli(capsys, "detect", inputs, "--out", out)[0] == 1
    (inputs / "notes.jpg").unlink()
    assert cli(capsys, "detect", inputs, "--out", out, "--force")[0] == 0
    assert json.loads((out / "failures.json").read_text()) == []


# ------------------------------------------------------------------------------------------------ analyze

def test_analyze_writes_faces_embeddings_and_annotations(tmp_path, capsys, photo_bytes, models):
    inputs = tmp_path / "in"
    _write(inputs, photo_bytes, ["astronaut.png", "astronaut_copy.jpg", "mirrored.png"])
    out = tmp_path / "out"
    code, _, err = cli(capsys, "analyze", inputs, "--out", out, "--model", models["tiny"], "--device", "cpu")
    assert code == 0, err

    records = json.loads((out / "faces.json").read_text())
    assert len(records) == 3
    faces = [f for r in records for f in r["faces"]]
    assert len(faces) == 3
    for rec in records:
        for face in rec["faces"]:
            _check_box_score_landmarks(face, rec["width"], rec["height"])
            refined = face["landmarks_refined"]
            assert len(refined) == 5 and all(len(p) == 2 and all(math.isfinite(v) for v in p) for p in refined)
            assert list(face["attributes"]) == list(CELEBA_ATTRIBUTES) and len(face["attributes"]) == 40
            assert all(0.0 <= v <= 1.0 for v in face["attributes"].values())
            assert list(face["pose"]) == list(POSE_NAMES)
            assert all(0.0 <= v <= 1.0 for v in face["pose"].values())
            assert sum(face["pose"].values()) == pytest.approx(1.0, abs=1e-3)
    assert [f["embedding_index"] for f in faces] == list(range(len(faces)))

    emb = np.load(out / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (len(faces), 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    # the PNG and its JPEG copy are the same face: rows 0 and 1 (sorted order) agree closely
    names = [Path(r["file"]).name for r in records]
    assert names == ["astronaut.png", "astronaut_copy.jpg", "mirrored.png"]
    assert float(emb[0] @ emb[1]) > 0.9

    for rec in records:
        src = Path(rec["file"])
        drawn = load_image(out / "annotated" / src.name)
        assert drawn.shape == load_image(src).shape == (rec["height"], rec["width"], 3)
    assert json.loads((out / "failures.json").read_text()) == []


# ------------------------------------------------------------------------------------------------ crop / embed

def test_crop_size(tmp_path, capsys, photos):
    out = tmp_path / "out"
    code, _, err = cli(capsys, "crop", photos["astronaut.png"], photos["mirrored.png"], "--out", out,
                       "--size", "64")
    assert code == 0, err
    crops = sorted(p.name for p in (out / "crops").iterdir())
    assert crops == ["astronaut_0.png", "mirrored_0.png"]
    for name in crops:
        assert load_image(out / "crops" / name).shape == (64, 64, 3)
    assert not (out / "faces.json").exists()


def test_embed_reports_photo_without_face(tmp_path, capsys, photos, models):
    out = tmp_path / "out"
    args = [photos[n] for n in ("astronaut.png", "gray.png", "astronaut_copy.jpg")]
    code, _, err = cli(capsys, "embed", *args, "--out", out, "--model", models["tiny"])
    assert code == 1
    emb = np.load(out / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    index = json.loads((out / "embeddings.json").read_text())
    assert index["model"].startswith("deepid2-hard/")
    assert {Path(r["file"]).name: r["row"] for r in index["rows"]} == {"astronaut.png": 0, "astronaut_copy.jpg": 1}
    failures = json.loads((out / "failures.json").read_text())
    assert failures == [{"file": str(photos["gray.png"]), "reason": "no face found"}]
    assert "gray.png: no face found" in err


@pytest.mark.parametrize("size", ["0", "-1"])
def test_embed_rejects_bad_batch_size(tmp_path, capsys, photos, models, size):
    code, _, err = cli(capsys, "embed", photos["astronaut.png"], "--out", tmp_path / "out", "--model", models["tiny"],
                       "--batch-size", size)
    assert code == 2 and "--batch-size" in err


# ------------------------------------------------------------------------------------------------ verify

def test_verify(capsys, photos, models):
    a, b = photos["astronaut.png"], photos["astronaut_copy.jpg"]
    code, out, err = cli(capsys, "verify", a, b, "--model", models["tiny"])
    assert code == 0, err
    assert out.startswith("same person")
    similarity = float(re.search(r"cosine similarity (-?[\d.]+)", out).group(1))
    assert similarity > 0.9
    assert "threshold 0.5000" in out and "stored in the model" in out

    code, out, err = cli(capsys, "verify", a, b, "--model", models["tiny"], "--threshold", "1.01")
    assert code == 0, err
    assert out.startswith("different people") and "threshold 1.0100 (given)" in out

    code, out, err = cli(capsys, "verify", a, photos["gray.png"], "--model", models["tiny"])
    assert code == 2 and out == ""
    assert "gray.png" in err and "no face" in err

    code, out, err = cli(capsys, "verify", a, b, "--model", models["nothreshold"])
    assert code == 2 and out == ""
    assert "no calibrated verification threshold" in err and "--threshold" in err


# ------------------------------------------------------------------------------------------------ gallery

def test_enroll_identify(tmp_path, capsys, photos, models):
    db = tmp_path / "gallery.db"
    code, _, err = cli(capsys, "enroll", "astro", photos["astronaut.png"], "--db", db, "--model", models["tiny"])
    assert code == 0, err
    assert db.is_file() and "enrolled 1 face(s) of astro" in err

    code, out, err = cli(capsys, "identify", photos["astronaut_copy.jpg"], "--db", db, "--model", models["tiny"])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert re.match(r"face 0 \[[\d, ]+\]: astro \(", lines[0]), out

    code, out, err = cli(capsys, "identify", photos["astronaut_copy.jpg"], "--db", db, "--model", models["tiny"],
                         "--threshold", "1.01")
    assert code == 0, err
    assert re.match(r"face 0 \[[\d, ]+\]: unknown \(", out), out
    assert "candidates: astro" in out  # the best match is still shown

    code, out, err = cli(capsys, "identify", photos["astronaut_copy.jpg"], "--db", db, "--model", models["other"])
    assert code == 2 and out == ""
    assert "model" in err and "re-enroll" in err


def test_bench_times_each_stage_and_skips_bad_files(capsys, photos, models):
    code, out, err = cli(capsys, "bench", photos["astronaut.png"], photos["gray.png"], photos["notes.jpg"],
                         "--model", models["tiny"])
    assert code == 0, err
    assert "notes.jpg" in err and "skipped" in err
    assert re.fullmatch(r"2 photos, 1 faces, \d+ torch threads", out.splitlines()[0])
    times = {label: float(ms) for label, ms in re.findall(r"^\s+(.+?)\s+([\d.]+) ms/photo", out, re.MULTILINE)}
    assert set(times) == {"detection only", "detect+align+CNN", "+ 1 refinement pass(es)"}
    assert all(t > 0 for t in times.values())
    assert re.search(r"shared CNN alone\s+\d+ faces/s at batch 64 \(\d+ with mirror averaging\)", out)


# ------------------------------------------------------------------------------------------------ export

def test_export_tiny_model(tmp_path, capsys, models):
    out = tmp_path / "export"
    code, table, err = cli(capsys, "export", models["tiny"], "--format", "onnx", "torchscript", "--no-detector",
                           "--out", out)
    assert code == 0, err
    for name in ("facemtl-cnn.onnx", "facemtl-cnn.torchscript.pt", "facemtl-cnn.json"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("mtcnn*"))
    assert "max |diff|" in table
    rows = re.findall(r"^(facemtl-cnn\S+)\s+(\w+)\s+([\d.e+-]+)\s+ok$", table, re.MULTILINE)
    assert {(art, name) for art, name, _ in rows} == {
        (art, name) for art in ("facemtl-cnn.onnx", "facemtl-cnn.torchscript.pt")
        for name in ("identity", "embedding", "landmarks", "attributes", "pose")}
    assert all(float(d) <= 1e-4 for _, _, d in rows)

    before = _snapshot(out)
    code, _, err = cli(capsys, "export", models["tiny"], "--format", "onnx", "--no-detector", "--out", out)
    assert code == 2 and "force" in err
    assert _snapshot(out) == before


# ------------------------------------------------------------------------------------------------ train / device

def test_train_config_unknown_key(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("[train]\nepochs = 1\nbogus = 1\n")
    code, _, err = cli(capsys, "train", "--config", config, "--out", tmp_path / "run")
    assert code == 2
    assert "bogus" in err and "[train]" in err
    assert not (tmp_path / "run").exists()

    code, _, err = cli(capsys, "train", "--config", tmp_path / "missing.toml")
    assert code == 2 and "not found" in err


@pytest.mark.parametrize("override, word", [("train.epochs=abc", "epochs"),   # _validate: 'abc' >= 1
                                            ("train=1", "train"),             # _build: set(1)
                                            ("train.epochs.x=1", "epochs")])  # load_config: 1.setdefault
def test_train_set_invalid_value(tmp_path, capsys, override, word):
    config = tmp_path / "run.toml"
    config.write_text("[train]\nepochs = 1\n")
    code, _, err = cli(capsys, "train", "--config", config, "--set", override)
    assert code == 2 and word in err


def test_device_cuda_unavailable(tmp_path, capsys, photos, models):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    code, _, err = cli(capsys, "analyze", photos["astronaut.png"], "--out", out, "--model", models["tiny"],
                       "--device", "cuda")
    assert code == 2
    assert "CUDA is not available" in err
    assert not (out / "faces.json").exists()
