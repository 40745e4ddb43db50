"""Distillation targets: a teacher's identity descriptor of every training face, computed once and cached.

The teacher is dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``, 128-D, released
into the public domain by its author), shipped in the ``face_recognition_models`` package and run with
``dlib`` (``pip install "facemtl[teacher]"``). It aligns each face its own way: its 5-point shape predictor
inside a box placed on the landmarks the crop table was aligned on, then its 150 px face chip. Each face
gets two targets, of the chip and of its mirror image, so a flipped training crop learns the mirror's.

Targets live beside the crop tables, in ``teacher-<table key>-<teacher>.npz`` (targets, done mask, files and
the points each face was aligned on), written every few hundred faces, so a killed run resumes where it
stopped; a new table takes the targets of every face another table of the same cache already labelled on the
same points (:func:`reuse_targets`), so changing the data mix never runs the teacher twice on a face. Only
training tables are labelled: :func:`check_no_test_faces` refuses any face of a test split. Training and
evaluation read the file; nothing on the inference path imports this module's teacher.
"""
from __future__ import annotations

import importlib.util
import io
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..data.celeba import read_celeba
from ..data.folders import read_person_folders
from ..data.mixed import SOURCES, FaceTable, TableSpec
from ..data.mtfl import read_mtfl
from ..data.utkface import read_utkface
from ..errors import DatasetError, FacemtlError
from ..io import load_image
from ..serialization import atomic_write_bytes

DLIB_TEACHER = "dlib_face_recognition_resnet_model_v1"
TARGET_DIM = 128
VIEWS = 2
"""Targets per face: the face, and its mirror image."""
CHUNK = 32
SAVE_EVERY = 8
"""Chunks between saves of the target file while computing."""
BOX_LIFT, BOX_SIDE = 0.063, 2.22
"""A dlib-style face box from five points: centred this many eye-to-mouth distances above the points' mean,
this many of them wide (medians of dlib's own detector boxes against facemtl's landmarks on 105 faces)."""

Describe = Callable[[list[tuple[str, np.ndarray]]], np.ndarray]
"""A teacher: (image file, (5,2) photo points) per face -> (faces, VIEWS, TARGET_DIM) float32 descriptors."""


class TeacherError(FacemtlError):
    """The teacher cannot run (its packages are not installed) or its targets do not fit the table."""


def teacher_path(spec: TableSpec, cache_dir: Path, teacher: str = DLIB_TEACHER) -> Path:
    """Where the targets of the table built from ``spec`` live, keyed like the crop table itself."""
    return Path(cache_dir) / f"teacher-{spec.key()}-{teacher}.npz"


def face_box(points: np.ndarray) -> tuple[int, int, int, int]:
    """A dlib-style (left, top, right, bottom) box around a face from its five points."""
    eye, mouth = points[:2].mean(0), points[3:].mean(0)
    scale = max(float(np.linalg.norm(mouth - eye)), 1.0)
    cx, cy = points.mean(0) - np.array([0.0, BOX_LIFT * scale])
    side = int(round(BOX_SIDE * scale))
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    return left, top, left + side, top + side


def _models_dir() -> Path:
    """face_recognition_models' model folder, found without importing it (its import needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError("the teacher needs face_recognition_models and dlib: pip install 'facemtl[teacher]'")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibTeacher:
    """dlib's 5-point shape predictor and ResNet descriptor, loaded once per process."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise TeacherError("the teacher needs dlib: pip install 'facemtl[teacher]'") from None
        models = _models_dir()
        self.dlib = dlib
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / f"{DLIB_TEACHER}.dat"))

    def chip(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        """The teacher's own 150 px aligned chip of the face at ``points``."""
        shape = self.shape(image, self.dlib.rectangle(*face_box(points)))
        return self.dlib.get_face_chip(image, shape, size=150, padding=0.25)

    def __call__(self, faces: list[tuple[str, np.ndarray]]) -> np.ndarray:
        chips = []
        for file, points in faces:
            chip = self.chip(load_image(file), points)
            chips += [chip, np.ascontiguousarray(chip[:, ::-1])]
        out = np.asarray(self.net.compute_face_descriptor(chips), np.float32)
        return out.reshape(len(faces), VIEWS, TARGET_DIM)


_worker_teacher: Describe | None = None


def _init_worker(factory: Callable[[], Describe]) -> None:
    global _worker_teacher
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # the parent stops the pool; workers just end
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _worker_teacher = factory()


def _describe_chunk(job: tuple[np.ndarray, list[tuple[str, np.ndarray]]]) -> tuple[np.ndarray, np.ndarray]:
    rows, faces = job
    assert _worker_teacher is not None
    return rows, _worker_teacher(faces)


def load_targets(path: Path, table: FaceTable) -> tuple[np.ndarray, np.ndarray]:
    """(targets (N,VIEWS,D) float32, done (N,) bool) of a target file, checked against the table's files."""
    try:
        with np.load(path, allow_pickle=False) as z:
            targets, done, files = z["targets"], z["done"], z["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise TeacherError(f"{path}: not a teacher target file ({exc})") from None
    if len(files) != len(table) or not np.array_equal(files.astype(str), table.files.astype(str)):
        raise TeacherError(f"{path}: its faces are not this table's (rebuild the targets)")
    return targets, done


def _save(path: Path, targets: np.ndarray, done: np.ndarray, table: FaceTable) -> None:
    buf = io.BytesIO()
    np.savez(buf, targets=targets, done=done, files=table.files.astype(str), points=table.points)
    atomic_write_bytes(path, buf.getvalue())


def reuse_targets(table: FaceTable, path: Path, targets: np.ndarray, done: np.ndarray) -> int:
    """Fill faces not yet done from the other target files of the same teacher beside ``path``, where the file
    and its alignment points (within 0.01 px) are the same; returns how many faces were filled."""
    named = path.name.split("-", 2)
    if len(named) < 3 or named[0] != "teacher":
        return 0
    filled = 0
    for other in sorted(path.parent.glob(f"teacher-*-{named[2]}")):
        if other == path or done.all():
            continue
        try:
            with np.load(other, allow_pickle=False) as z:
                if "points" not in z.files:
                    continue
                o_targets, o_done, o_files, o_points = z["targets"], z["done"], z["files"].astype(str), z["points"]
        except (OSError, ValueError, KeyError):
            continue
        _, i, j = np.intersect1d(table.files.astype(str), o_files, return_indices=True)
        same = np.abs(o_points[j] - table.points[i]).max(axis=(1, 2)) <= 0.01
        take = o_done[j] & ~done[i] & same
        targets[i[take]], done[i[take]] = o_targets[j[take]], True
        filled += int(take.sum())
    return filled


def held_out_files(root: Path) -> set[str]:
    """Every face file of a test split under the data root (CelebA, celeba_wild, MTFL, UTKFace) that exists."""
    root = Path(root)
    found: set[str] = set()
    readers = [lambda: [f.path for f in read_celeba(root / "celeba", "test")],
               lambda: [p.path for p in read_person_folders(root / "celeba_wild" / "test")],
               lambda: [f.path for f in read_mtfl(root / "MTFL", "testing")],
               lambda: [f.path for f in read_utkface(root / "UTKFace", "test").faces]]
    for read in readers:
        try:
            found |= {str(p) for p in read()}
        except DatasetError:
            continue
    return found


def check_no_test_faces(table: FaceTable, root: Path) -> None:
    """Refuse a table that holds any test face: test faces are never labelled by the teacher."""
    leaked = sorted(set(table.files.astype(str)) & held_out_files(root))
    if leaked:
        raise TeacherError(f"{len(leaked)} test face(s) in the table to label, e.g. {leaked[0]}")


def _jobs(table: FaceTable, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list[tuple[str, np.ndarray]]]]:
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        yield chunk, [(str(table.files[i]), table.points[i]) for i in chunk]


def compute_targets(table: FaceTable, path: Path, root: Path, workers: int = 1,
                    teacher: Callable[[], Describe] = DlibTeacher, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Label every face of ``table`` that has no target yet in ``path`` (resuming a partial file), with
    ``workers`` processes; returns (targets, done). Faces whose photo cannot be read stay not done."""
    check_no_test_faces(table, root)
    if np.isnan(table.points).all(axis=(1, 2)).any():
        raise TeacherError("the table has faces without alignment points (rebuild it with this version)")
    if path.is_file():
        targets, done = load_targets(path, table)
    else:
        targets, done = np.zeros((len(table), VIEWS, TARGET_DIM), np.float32), np.zeros(len(table), bool)
    if not done.all() and reuse_targets(table, path, targets, done):
        _save(path, targets, done, table)
    todo = np.flatnonzero(~done)
    bar = tqdm(total=len(table), initial=len(table) - len(todo), desc="teacher targets", unit="face",
               disable=not progress, dynamic_ncols=True)
    stop_on_term = signal.signal(signal.SIGTERM, _interrupt)   # SIGTERM and SIGINT both end the run with a save,
    stop_on_int = signal.signal(signal.SIGINT, _interrupt)     # also where a background launch ignored SIGINT
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (teacher,)) if workers > 1 else None
    if pool is None:
        _init_worker(teacher)
    results = (pool.imap_unordered(_describe_chunk, _jobs(table, todo)) if pool
               else map(_describe_chunk, _jobs(table, todo)))
    try:
        for k, (rows, out) in enumerate(results, 1):
            targets[rows], done[rows] = out, True
            bar.update(len(rows))
            if k % SAVE_EVERY == 0:
                _save(path, targets, done, table)
    finally:
        signal.signal(signal.SIGTERM, stop_on_term)
        signal.signal(signal.SIGINT, stop_on_int)
        if pool:
            pool.terminate()
        bar.close()
        _save(path, targets, done, table)
    return targets, done


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def target_table(targets: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Training targets: descriptors centred on the mean of the labelled faces and L2-normalised (dlib's
    descriptors share a large common component; centring leaves what tells people apart). NaN where not done."""
    centred = targets - targets[done].reshape(-1, targets.shape[-1]).mean(0)
    centred /= np.maximum(np.linalg.norm(centred, axis=-1, keepdims=True), 1e-8)
    centred[~done] = np.nan
    return centred.astype(np.float32)


def training_targets(spec: TableSpec, cache_dir: Path, table: FaceTable, teacher: str = DLIB_TEACHER,
                     sources: Sequence[str] = ()) -> np.ndarray:
    """The centred, normalised targets a run trains on (NaN for faces without one, or outside ``sources`` when
    given: those are neither trained on nor in the mean); refuses a missing file."""
    path = teacher_path(spec, cache_dir, teacher)
    if not path.is_file():
        raise TeacherError(f"no teacher targets for this run's faces at {path}: run `facemtl teach` with the "
                           "same config first")
    targets, done = load_targets(path, table)
    if sources:
        done &= np.isin(table.source, [SOURCES.index(name) for name in sources])
    if not done.any():
        raise TeacherError(f"{path}: no face has a target yet")
    return target_table(targets, done)


def summary(done: np.ndarray, table: FaceTable) -> dict[str, Any]:
    """How many faces of each source have a target."""
    return {name: f"{int(done[table.source == s].sum())}/{int((table.source == s).sum())}"
            for s, name in enumerate(SOURCES) if (table.source == s).any()}
