"""The mixed multi-task dataset: aligned crops from several datasets, each with the labels it has.

A :class:`FaceTable` holds every sample's context crop (aligned with ``facemtl.align`` onto the template at
the model's input size, with padding for jitter) and every label, with ``-1``/NaN/mask where a dataset has
no label for a task. CelebA and folder-per-person photos are aligned with the detector's landmarks (cached
on disk, see ``landmark_cache``); MTFL faces with their annotated landmarks. The table itself is cached as
``.npz`` under a key of everything it depends on, so building it twice costs nothing.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..align import align
from ..errors import DatasetError, FacemtlError
from ..io import load_image
from .celeba import CELEBA_ATTRIBUTES, read_celeba
from .folders import read_person_folders
from .landmark_cache import CachedFace, cached_landmarks
from .mtfl import MTFL_ATTRIBUTES, read_mtfl
from .transforms import AugmentConfig, build_augment, center_crop, hflip
from .utkface import read_utkface

TABLE_VERSION = 4
SOURCES = ("celeba", "wild", "mtfl", "utkface")


@dataclass
class FaceTable:
    """Columnar store of samples (crops uint8 (N,C,C,3)) and labels; -1 / NaN / False where absent."""

    crops: np.ndarray
    landmarks: np.ndarray      # (N,5,2) float32 in context-crop pixels, NaN if unknown
    identity: np.ndarray       # (N,) int64 class index, -1 if unknown
    attributes: np.ndarray     # (N,40) uint8 0/1
    attr_mask: np.ndarray      # (N,40) bool
    pose: np.ndarray           # (N,) int64 0..4, -1 if unknown
    source: np.ndarray         # (N,) int8 index into SOURCES
    files: np.ndarray          # (N,) str, the image each crop came from
    identity_names: list[str] = field(default_factory=list)
    age: np.ndarray | None = None     # (N,) float32 years, NaN if unknown
    points: np.ndarray | None = None  # (N,5,2) float32 photo pixels the crop was aligned on

    def __post_init__(self) -> None:
        n = len(self.crops)
        if self.age is None:
            self.age = np.full(n, np.nan, np.float32)
        if self.points is None:
            self.points = np.full((n, 5, 2), np.nan, np.float32)

    def __len__(self) -> int:
        return len(self.crops)

    def subset(self, index: np.ndarray) -> "FaceTable":
        """Rows ``index`` as a new table (identity names kept)."""
        return FaceTable(self.crops[index], self.landmarks[index], self.identity[index], self.attributes[index],
                         self.attr_mask[index], self.pose[index], self.source[index], self.files[index],
                         self.identity_names, self.age[index], self.points[index])

    def save(self, path: Path) -> None:
        from ..serialization import atomic_write_bytes
        import io
        buf = io.BytesIO()
        np.savez(buf, crops=self.crops, landmarks=self.landmarks, identity=self.identity,
                 attributes=self.attributes, attr_mask=self.attr_mask, pose=self.pose, source=self.source,
                 files=self.files.astype(str), identity_names=np.array(self.identity_names, dtype=str),
                 age=self.age, points=self.points)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "FaceTable":
        z = np.load(path, allow_pickle=False)
        return cls(z["crops"], z["landmarks"], z["identity"], z["attributes"], z["attr_mask"], z["pose"],
                   z["source"], z["files"], [str(s) for s in z["identity_names"]], z["age"], z["points"])


@dataclass(frozen=True)
class TableSpec:
    """What goes into a table: data root, which sources and splits, crop geometry."""

    root: str
    celeba_split: str | None = "train"
    wild_split: str | None = "train"
    mtfl_split: str | None = "training"
    input_size: int = 64
    padding: int = 16
    limit: int = 0
    """Keep about this many images per source (whole identities, in sorted order; 0 = all): small tables
    for tests and quick runs."""
    utkface_split: str | None = None

    def key(self) -> str:
        text = json.dumps({**self.__dict__, "v": TABLE_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fallback_landmarks(found: dict[Path, CachedFace | None], sizes: dict[Path, tuple[int, int]]) -> np.ndarray:
    """Mean detected landmarks relative to the image size, for images of one fixed layout (CelebA aligned)."""
    rel = [f.landmarks / np.array(sizes[p][::-1], np.float32) for p, f in found.items() if f is not None]
    if not rel:
        raise DatasetError("the detector found no face in any image of this set")
    return np.mean(rel, axis=0)


def _crop_rows(items: list[tuple[Path, np.ndarray | None]], spec: TableSpec, desc: str,
               landmark_labels: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[bool]]:
    """Align each (image, landmarks) into a context crop; returns crops, landmark labels in crop pixels (NaN
    unless ``landmark_labels``), the photo points each crop was aligned on, and which items gave a crop."""
    crops, labels, points, ok = [], [], [], []
    nan = np.full((5, 2), np.nan, np.float32)
    for path, lm in tqdm(items, desc=desc, unit="img", leave=False):
        if lm is None:
            ok.append(False)
            continue
        try:
            image = load_image(path)
        except FacemtlError:
            ok.append(False)
            continue
        aligned = align(image, lm, size=spec.input_size, padding=spec.padding)
        crops.append(aligned.crops[0])
        labels.append(aligned.to_crop(lm[None])[0].astype(np.float32) if landmark_labels else nan)
        points.append(np.asarray(lm, np.float32))
        ok.append(True)
    return crops, labels, points, ok


def _limit_by_group(items: list[Any], group: Any, limit: int) -> list[Any]:
    """The items of the first groups (sorted by ``group(item)``) until at least ``limit`` items; all if 0."""
    if limit <= 0:
        return items
    keys = sorted({group(i) for i in items})
    kept: set[Any] = set()
    count = 0
    for k in keys:
        if count >= limit:
            break
        kept.add(k)
        count += sum(1 for i in items if group(i) == k)
    return [i for i in items if group(i) in kept]


def build_table(spec: TableSpec, cache_dir: Path, detector: Any = None, progress: bool = True) -> FaceTable:
    """Build (or load from cache) the mixed table described by ``spec``."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"table-{spec.key()}.npz"
    if path.is_file():
        return FaceTable.load(path)
    root = Path(spec.root)
    parts: list[FaceTable] = []
    names: list[str] = []
    n_attr = len(CELEBA_ATTRIBUTES)
    if spec.celeba_split:
        faces = _limit_by_group(read_celeba(root / "celeba", spec.celeba_split), lambda f: f.identity, spec.limit)
        found = cached_landmarks([f.path for f in faces], cache_dir / "landmarks-celeba.json", detector,
                                 progress=progress)
        sizes = {f.path: (218, 178) for f in faces}
        fallback = _fallback_landmarks(found, sizes)
        items = [(f.path, found[f.path].landmarks if found[f.path] is not None
                  else fallback * np.array([178, 218], np.float32)) for f in faces]
        crops, labels, points, _ = _crop_rows(items, spec, "align celeba", landmark_labels=False)
        id_map = {i: len(names) + k for k, i in enumerate(sorted({f.identity for f in faces}))}
        names += [f"celeba:{i}" for i in sorted(id_map)]
        n = len(faces)
        parts.append(FaceTable(np.stack(crops), np.stack(labels), np.array([id_map[f.identity] for f in faces]),
                               np.stack([f.attributes for f in faces]), np.ones((n, n_attr), bool),
                               np.full(n, -1), np.full(n, 0, np.int8), np.array([str(f.path) for f in faces]),
                               points=np.stack(points)))
    if spec.wild_split:
        photos = _limit_by_group(read_person_folders(root / "celeba_wild" / spec.wild_split), lambda p: p.person,
                                 spec.limit)
        found = cached_landmarks([p.path for p in photos], cache_dir / f"landmarks-wild-{spec.wild_split}.json",
                                 detector, progress=progress)
        items = [(p.path, None if found[p.path] is None else found[p.path].landmarks) for p in photos]
        crops, labels, points, ok = _crop_rows(items, spec, "align wild", landmark_labels=False)
        kept = [p for p, good in zip(photos, ok) if good]
        id_map = {name: len(names) + k for k, name in enumerate(sorted({p.person for p in kept}))}
        names += [f"wild:{p}" for p in sorted(id_map)]
        n = len(kept)
        parts.append(FaceTable(np.stack(crops), np.stack(labels), np.array([id_map[p.person] for p in kept]),
                               np.zeros((n, n_attr), np.uint8), np.zeros((n, n_attr), bool), np.full(n, -1),
                               np.full(n, 1, np.int8), np.array([str(p.path) for p in kept]),
                               points=np.stack(points)))
    if spec.mtfl_split:
        faces = read_mtfl(root / "MTFL", spec.mtfl_split)
        faces = faces[:spec.limit] if spec.limit > 0 else faces
        crops, labels, points, _ = _crop_rows([(f.path, f.landmarks) for f in faces], spec, "align mtfl",
                                              landmark_labels=True)
        n = len(faces)
        attrs = np.zeros((n, n_attr), np.uint8)
        mask = np.zeros((n, n_attr), bool)
        for field_name, attr in MTFL_ATTRIBUTES.items():
            col = CELEBA_ATTRIBUTES.index(attr)
            attrs[:, col] = [getattr(f, field_name) for f in faces]
            mask[:, col] = True
        parts.append(FaceTable(np.stack(crops), np.stack(labels), np.full(n, -1), attrs, mask,
                               np.array([f.pose for f in faces]), np.full(n, 2, np.int8),
                               np.array([str(f.path) for f in faces]), points=np.stack(points)))
    if spec.utkface_split:
        parts.append(_utkface_part(root / "UTKFace", spec, cache_dir, detector, progress))
    if not parts:
        raise DatasetError("the table spec selects no data source")
    columns = ("crops", "landmarks", "identity", "attributes", "attr_mask", "pose", "source", "files")
    table = FaceTable(*(np.concatenate([getattr(p, k) for p in parts]) for k in columns), identity_names=names,
                      age=np.concatenate([p.age for p in parts]), points=np.concatenate([p.points for p in parts]))
    table.identity = table.identity.astype(np.int64)
    table.pose = table.pose.astype(np.int64)
    table.save(path)
    return table


def _utkface_part(folder: Path, spec: TableSpec, cache_dir: Path, detector: Any, progress: bool) -> FaceTable:
    """UTKFace's faces of one split: detector landmarks (the set's mean layout where none is found), gender as
    CelebA's ``Male`` and the age in years."""
    found_set = read_utkface(folder, spec.utkface_split)
    if found_set.skipped and progress:
        print(f"UTKFace: {len(found_set.skipped)} file(s) skipped (malformed name or not in the split list)")
    faces = found_set.faces[:spec.limit] if spec.limit > 0 else found_set.faces
    found = cached_landmarks([f.path for f in faces], cache_dir / "landmarks-utkface.json", detector,
                             progress=progress)
    fallback = _fallback_landmarks(found, {f.path: (200, 200) for f in faces}) * np.float32(200)
    items = [(f.path, fallback if found[f.path] is None else found[f.path].landmarks) for f in faces]
    crops, labels, points, ok = _crop_rows(items, spec, "align utkface", landmark_labels=False)
    kept = [f for f, good in zip(faces, ok) if good]
    n = len(kept)
    attrs = np.zeros((n, len(CELEBA_ATTRIBUTES)), np.uint8)
    mask = np.zeros_like(attrs, bool)
    male = CELEBA_ATTRIBUTES.index("Male")
    attrs[:, male] = [f.male for f in kept]
    mask[:, male] = True
    return FaceTable(np.stack(crops), np.stack(labels), np.full(n, -1), attrs, mask, np.full(n, -1),
                     np.full(n, 3, np.int8), np.array([str(f.path) for f in kept]),
                     age=np.array([f.age for f in kept], np.float32), points=np.stack(points))


def attribute_balance(table: FaceTable, indices: np.ndarray, names: Sequence[str], balanced: Sequence[str]
                      ) -> np.ndarray:
    """Loss weights (sources, attributes, 2 labels) under which each ``balanced`` attribute's two labels weigh
    the same within each source set (weight 1/2p for the label a fraction p of its labelled faces carry there),
    so a set's share of one label does not shift the decision; every other entry weighs 1."""
    weights = np.ones((len(SOURCES), len(names), 2), np.float32)
    for name in balanced:
        a = list(names).index(name)
        for s in range(len(SOURCES)):
            rows = indices[(table.source[indices] == s) & table.attr_mask[indices, a]]
            share = float(table.attributes[rows, a].mean()) if len(rows) else 0.0
            if 0.0 < share < 1.0:
                weights[s, a] = 0.5 / (1.0 - share), 0.5 / share
    return weights


class MultiTaskDataset(torch.utils.data.Dataset):
    """Samples of a FaceTable as (crop uint8 (3,S,S), targets dict); augmented when ``augment`` is set.

    Augmentation randomness comes only from the seed passed to :meth:`get`, so a run is reproducible and
    resumes exactly.
    """

    def __init__(self, table: FaceTable, input_size: int, augment: AugmentConfig | None = None,
                 targets: np.ndarray | None = None, attr_weights: np.ndarray | None = None) -> None:
        self.table = table
        self.size = input_size
        self.augment_cfg = augment
        self.pipeline = build_augment(input_size, augment) if augment else None
        self.targets = targets
        """Teacher targets (N, 2, D): of the face and of its mirror image, NaN where a face has none."""
        self.attr_weights = attr_weights
        """Attribute loss weights by (source, attribute, label) (:func:`attribute_balance`), or None."""

    def __len__(self) -> int:
        return len(self.table)

    def get(self, index: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        """One sample, augmented with randomness drawn from ``seed`` only."""
        t = self.table
        crop = t.crops[index]
        has_points = not np.isnan(t.landmarks[index, 0, 0])
        points = t.landmarks[index] if has_points else np.zeros((5, 2), np.float32)
        pose = int(t.pose[index])
        flipped = False
        if self.pipeline is None:
            image, off = center_crop(crop, self.size)
            points = points - off
        else:
            rng = np.random.default_rng(seed)
            self.pipeline.set_random_seed(int(rng.integers(2**31)))
            out = self.pipeline(image=crop, keypoints=points)
            image, points = out["image"], np.asarray(out["keypoints"], np.float32).reshape(5, 2)
            if rng.random() < self.augment_cfg.flip:
                image, points, pose = hflip(image, points, pose)
                flipped = True
        targets = {
            "identity": int(t.identity[index]),
            "landmarks": points.astype(np.float32),
            "landmarks_mask": bool(has_points),
            "attributes": t.attributes[index].astype(np.float32),
            "attr_mask": t.attr_mask[index],
            "pose": pose,
            "age": float(np.nan_to_num(t.age[index], nan=-1.0)),
            "age_mask": bool(np.isfinite(t.age[index])),
            "index": int(index),
        }
        if self.attr_weights is not None:
            labels = t.attributes[index].astype(np.int64).clip(0, 1)
            targets["attr_weight"] = self.attr_weights[t.source[index], np.arange(len(labels)), labels]
        if self.targets is not None:
            target = self.targets[index, int(flipped)]
            targets["distill"], targets["distill_mask"] = target, bool(np.isfinite(target[0]))
        return np.ascontiguousarray(image.transpose(2, 0, 1)), targets

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        return self.get(index, seed=index)


def collate(samples: Sequence[tuple[np.ndarray, dict[str, Any]]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stack samples into a uint8 image batch and target tensors with masks."""
    images = torch.from_numpy(np.stack([s[0] for s in samples]))
    keys = samples[0][1].keys()
    targets = {k: torch.as_tensor(np.stack([np.asarray(s[1][k]) for s in samples])) for k in keys}
    targets["identity_mask"] = targets["identity"] >= 0
    targets["pose_mask"] = targets["pose"] >= 0
    return images, targets
