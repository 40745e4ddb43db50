"""Distillation: teacher targets computed once (resumable, never for a test face) and the `distill` task."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from facemtl.data.celeba import read_celeba
from facemtl.data.folders import read_person_folders
from facemtl.data.mixed import SOURCES, TableSpec, build_table
from facemtl.data.mtfl import read_mtfl
from facemtl.errors import ConfigError
from facemtl.train.config import load_config
from facemtl.train.teacher import (DLIB_TEACHER, TARGET_DIM, VIEWS, TeacherError, check_no_test_faces,
                                   compute_targets, face_box, held_out_files, load_targets, reuse_targets,
                                   target_table, teacher_path, training_targets)
from facemtl.model.multitask import MultiTaskNet
from facemtl.train.losses import task_losses
from facemtl.train.trainer import BatchList, Trainer, table_specs

from test_train import write_config


class FakeTeacher:
    """A stand-in teacher: a fixed unit vector per photo (mirror view: the same vector reversed)."""

    calls = 0
    fail_after: int | None = None

    def __call__(self, faces: list[tuple[str, np.ndarray]]) -> np.ndarray:
        FakeTeacher.calls += 1
        if FakeTeacher.fail_after is not None and FakeTeacher.calls > FakeTeacher.fail_after:
            raise KeyboardInterrupt("killed")
        out = np.empty((len(faces), VIEWS, TARGET_DIM), np.float32)
        for k, (file, _) in enumerate(faces):
            seed = int.from_bytes(hashlib.sha256(Path(file).name.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).normal(size=TARGET_DIM).astype(np.float32)
            out[k] = v / np.linalg.norm(v), v[::-1] / np.linalg.norm(v)
        return out


def test_face_box_is_square_round_the_points() -> None:
    points = np.array([[40, 50], [60, 50], [50, 62], [42, 72], [58, 72]], np.float32)
    left, top, right, bottom = face_box(points)
    assert right - left == bottom - top == 49                             # 2.22 x the 22 px eye-to-mouth distance
    assert abs((left + right) / 2 - 50) <= 0.5 and (top + bottom) / 2 < points[:, 1].mean()
    big = face_box(points * 2)
    assert big[2] - big[0] == 98


def test_targets_resume_after_a_kill_and_match_an_uninterrupted_run(tmp_path: Path, data_dir: Path) -> None:
    spec = TableSpec(str(data_dir), "train", None, "training", limit=40)
    table = build_table(spec, tmp_path, progress=False)
    whole = tmp_path / "whole.npz"
    FakeTeacher.calls, FakeTeacher.fail_after = 0, None
    want, done = compute_targets(table, whole, data_dir, teacher=FakeTeacher, progress=False)
    assert done.all() and want.shape == (len(table), VIEWS, TARGET_DIM)
    path = teacher_path(spec, tmp_path)
    FakeTeacher.calls, FakeTeacher.fail_after = 0, 1
    with pytest.raises(KeyboardInterrupt):
        compute_targets(table, path, data_dir, teacher=FakeTeacher, progress=False)
    partial, part_done = load_targets(path, table)
    assert 0 < part_done.sum() < len(table)                               # what it had was kept
    FakeTeacher.calls, FakeTeacher.fail_after = 0, None
    got, done = compute_targets(table, path, data_dir, teacher=FakeTeacher, progress=False)
    assert done.all() and np.array_equal(got, want)
    assert FakeTeacher.calls == -(-int((~part_done).sum()) // 32)         # only the missing faces, in chunks
    other = build_table(TableSpec(str(data_dir), None, None, "training", limit=40), tmp_path, progress=False)
    with pytest.raises(TeacherError, match="not this table's"):
        load_targets(path, other)


def test_test_faces_never_get_a_target(tmp_path: Path, data_dir: Path) -> None:
    held = held_out_files(data_dir)
    trained = ([f.path for f in read_celeba(data_dir / "celeba", "train")]
               + [p.path for p in read_person_folders(data_dir / "celeba_wild" / "train")]
               + [f.path for f in read_mtfl(data_dir / "MTFL", "training")])
    assert len(held) >= 660 + 1162 + 2995 and not held & {str(p) for p in trained}
    train = build_table(TableSpec(str(data_dir), "train", "train", "training", limit=30), tmp_path, progress=False)
    check_no_test_faces(train, data_dir)
    test = build_table(TableSpec(str(data_dir), "test", None, None, limit=30), tmp_path, progress=False)
    with pytest.raises(TeacherError, match="test face"):
        compute_targets(test, tmp_path / "t.npz", data_dir, teacher=FakeTeacher, progress=False)
    assert not (tmp_path / "t.npz").exists()


def test_targets_are_centred_and_normalised() -> None:
    rng = np.random.default_rng(0)
    raw = (rng.normal(size=(6, VIEWS, TARGET_DIM)) + 5).astype(np.float32)
    done = np.array([True, True, True, True, True, False])
    t = target_table(raw, done)
    assert np.isnan(t[5]).all()
    assert np.allclose(np.linalg.norm(t[:5], axis=-1), 1, atol=1e-5)
    assert abs(float(np.mean(t[:5] @ t[:5].reshape(-1, TARGET_DIM).mean(0)))) < 0.5   # the offset is gone


def test_teacher_sources_keep_the_other_faces_out_of_the_targets_and_their_mean(tmp_path: Path,
                                                                               data_dir: Path) -> None:
    spec = TableSpec(str(data_dir), "train", None, "training", limit=40)
    table = build_table(spec, tmp_path, progress=False)
    FakeTeacher.calls, FakeTeacher.fail_after = 0, None
    raw, done = compute_targets(table, teacher_path(spec, tmp_path), data_dir, teacher=FakeTeacher, progress=False)
    celeba = table.source == SOURCES.index("celeba")
    assert done.all() and 0 < celeba.sum() < len(table)
    every = training_targets(spec, tmp_path, table)
    only = training_targets(spec, tmp_path, table, sources=["celeba"])
    assert np.isfinite(every).all() and np.isnan(only[~celeba]).all()
    assert np.array_equal(only[celeba], target_table(raw[celeba], done[celeba]))     # centred on CelebA's alone
    assert not np.allclose(only[celeba], every[celeba])
    config = write_config(tmp_path / "s.toml", tmp_path / "s", data_dir, tmp_path)
    assert load_config(config, {"data.teacher_sources": ["celeba", "mtfl"]}).data.teacher_sources == ["celeba", "mtfl"]
    with pytest.raises(ConfigError, match=r"data.teacher_sources: \['lfw'\] not among"):
        load_config(config, {"data.teacher_sources": ["lfw"]})


def test_a_run_learns_from_fake_targets(tmp_path: Path, data_dir: Path) -> None:
    path = write_config(tmp_path / "d.toml", tmp_path / "run", data_dir, tmp_path / "cache")
    overrides = {"data.teacher": "dlib_face_recognition_resnet_model_v1", "model.embedding_dim": 128,
                 "train.epochs": 3, "train.threads": 0}
    cfg = load_config(path, overrides)
    with pytest.raises(TeacherError, match="facemtl teach"):
        Trainer(cfg)
    spec = table_specs(cfg)["train"]
    table = build_table(spec, tmp_path / "cache", progress=False)
    FakeTeacher.calls, FakeTeacher.fail_after = 0, None
    compute_targets(table, teacher_path(spec, tmp_path / "cache"), data_dir, teacher=FakeTeacher, progress=False)
    trainer = Trainer(load_config(path, overrides))
    assert "distill" in trainer.weighting.tasks
    images, tg = BatchList(trainer.dataset, trainer.sampler.epoch_batches(0)[:1], 3, 0, trainer.table, "views")[0]
    assert tg["distill_mask"].all()                                       # every training face has a target
    student = MultiTaskNet(trainer.model.config)
    student.load_state_dict(trainer.model.state_dict())
    optimiser = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    seen = []
    for _ in range(8):                                                    # the distill loss alone moves the net
        loss = task_losses(student(images.float()), tg, student.config)["distill"]
        seen.append(float(loss.detach()))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert seen[-1] < 0.8 * seen[0]
    model = trainer.run()
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    losses = [float(r["loss_distill"]) for r in rows[1:]]
    assert len(losses) == 3 and all(np.isfinite(losses)) and all(float(r["weight_distill"]) > 0 for r in rows[1:])
    assert model.is_file()


def test_flipped_crops_learn_the_mirror_target(tmp_path: Path, data_dir: Path) -> None:
    from facemtl.data.mixed import MultiTaskDataset
    from facemtl.data.transforms import AugmentConfig
    table = build_table(TableSpec(str(data_dir), None, None, "training", limit=8), tmp_path, progress=False)
    targets = np.stack([np.full((len(table), TARGET_DIM), v, np.float32) for v in (0.0, 1.0)], axis=1)
    targets[3] = np.nan
    data = MultiTaskDataset(table, 64, AugmentConfig(flip=1.0), targets)
    assert data.get(0, 5)[1]["distill"][0] == 1.0                         # always flipped: the mirror's target
    assert not data.get(3, 5)[1]["distill_mask"] and data.get(0, 5)[1]["distill_mask"]
    plain = MultiTaskDataset(table, 64, AugmentConfig(flip=0.0), targets)
    assert plain.get(0, 5)[1]["distill"][0] == 0.0


def test_the_analyzer_imports_no_teacher_code() -> None:
    code = ("import sys, facemtl\n"
            "faces = facemtl.FaceAnalyzer().analyze(facemtl.sample_photo())[0]\n"
            "assert faces, 'no face'\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dlib', 'face_recognition_models')\n"
            "             or m.startswith('facemtl.train'))\n"
            "print('teacher modules:', bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "teacher modules: []" in out.stdout


def test_dlib_teacher_tells_people_apart(data_dir: Path) -> None:
    pytest.importorskip("dlib", reason="the teacher extra is not installed (pip install '.[teacher]')")
    from facemtl import detect_faces, load_image
    from facemtl.train.teacher import DlibTeacher
    faces = read_celeba(data_dir / "celeba", "test")
    by_person: dict[int, list[Path]] = {}
    for f in faces:
        by_person.setdefault(f.identity, []).append(f.path)
    a, b = [paths[:3] for paths in list(by_person.values())[:2]]
    items = [(str(p), detect_faces([load_image(p)])[0][0].landmarks5) for p in a + b[:1]]
    d = DlibTeacher()(items)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    same = [float(d[i, 0] @ d[j, 0]) for i in range(3) for j in range(i + 1, 3)]
    different = [float(d[i, 0] @ d[3, 0]) for i in range(3)]
    assert min(same) > max(different)
    assert all(float(d[i, 0] @ d[i, 1]) > 0.9 for i in range(4))          # a face and its mirror: one person
    assert torch.tensor(d).isfinite().all()


SLOW_RUN = """
import sys, time
import numpy as np
from pathlib import Path
from facemtl.data.mixed import TableSpec, build_table
from facemtl.train.teacher import compute_targets
sys.path.insert(0, {tests!r})
from test_teacher import FakeTeacher

class Slow(FakeTeacher):
    def __call__(self, faces):
        time.sleep(0.3)
        return super().__call__(faces)

table = build_table(TableSpec({root!r}, None, None, "training", limit=400), Path({cache!r}), progress=False)
print("started", flush=True)
compute_targets(table, Path({out!r}), Path({root!r}), teacher=Slow, progress=False)
"""


def test_a_terminated_run_saves_what_it_had(tmp_path: Path, data_dir: Path) -> None:
    """SIGTERM (and SIGINT, even where a background launch ignores it) ends a run with its targets saved."""
    import signal
    import time
    out = tmp_path / "t.npz"
    code = SLOW_RUN.format(tests=str(Path(__file__).parent), root=str(data_dir), cache=str(tmp_path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    deadline = time.time() + 120
    while not out.exists():                                               # the first periodic save
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "stopped by signal" in err
    with np.load(out) as z:
        done = z["done"]
    assert 8 * 32 <= done.sum() < 400                                     # more than the periodic save, not all


def test_a_new_table_reuses_the_targets_other_tables_have(tmp_path: Path, data_dir: Path) -> None:
    cache = tmp_path / "cache"
    big_spec = TableSpec(str(data_dir), "train", None, "training", limit=40)
    big = build_table(big_spec, cache, progress=False)
    FakeTeacher.calls, FakeTeacher.fail_after = 0, None
    want, _ = compute_targets(big, teacher_path(big_spec, cache), data_dir, teacher=FakeTeacher, progress=False)
    small_spec = TableSpec(str(data_dir), None, None, "training", limit=40)
    small = build_table(small_spec, cache, progress=False)
    assert 0 < len(small) < len(big)
    FakeTeacher.calls = 0
    got, done = compute_targets(small, teacher_path(small_spec, cache), data_dir, teacher=FakeTeacher, progress=False)
    row = {f: i for i, f in enumerate(big.files.astype(str))}
    assert done.all() and FakeTeacher.calls == 0                          # the teacher never ran again
    assert np.array_equal(got, want[[row[f] for f in small.files.astype(str)]])
    moved = small.points.copy()
    moved[0] += 1.0                                                       # aligned elsewhere: labelled afresh
    targets, done = np.zeros_like(got), np.zeros(len(small), bool)
    path = cache / f"teacher-0123abcd-{DLIB_TEACHER}.npz"
    assert reuse_targets(dataclasses.replace(small, points=moved), path, targets, done) == len(small) - 1
    assert not done[0] and done[1:].all() and np.array_equal(targets[1:], got[1:])
