"""Detector results for a dataset, computed once and cached on disk with a manifest.

The manifest records, per image, the file's size and modification time, and for the whole file the
detector weights' checksum and settings, so a rerun detects only images that are new or changed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..detect.detector import FaceDetector
from ..errors import FacemtlError
from ..io import load_image
from ..serialization import atomic_write_bytes
from ..types import largest

CACHE_VERSION = 2
SAVE_EVERY = 20
"""Batches between saves of the manifest while detecting."""


@dataclass(frozen=True)
class CachedFace:
    """One detected face: box, score and (5,2) landmarks in image pixels."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def detector_signature(detector: FaceDetector) -> str:
    """A short id of the detector's weights and settings, stored in the manifest."""
    h = hashlib.sha256()
    for net in (detector.cascade.pnet, detector.cascade.rnet, detector.cascade.onet):
        for t in net.state_dict().values():
            h.update(t.cpu().numpy().tobytes())
    h.update(repr(detector.config).encode())
    return h.hexdigest()[:16]


def cached_detections(paths: Sequence[Path], cache_file: Path, detector: FaceDetector | None = None,
                      batch_size: int = 32, progress: bool = True) -> dict[Path, list[CachedFace] | None]:
    """Every face per image, best first (None for an unreadable file), reusing the cache where valid."""
    cache_file = Path(cache_file)
    detector = detector or FaceDetector(device="cpu")
    signature = detector_signature(detector)
    entries: dict[str, dict] = {}
    if cache_file.is_file():
        try:
            manifest = json.loads(cache_file.read_text())
            if manifest.get("version") == CACHE_VERSION and manifest.get("detector") == signature:
                entries = manifest["entries"]
        except (json.JSONDecodeError, KeyError, OSError):
            entries = {}
    todo = [p for p in paths if entries.get(str(p), {}).get("key") != _file_key(p)]

    def save() -> None:
        manifest = {"version": CACHE_VERSION, "detector": signature, "entries": entries}
        atomic_write_bytes(cache_file, json.dumps(manifest).encode())

    for k, start in enumerate(tqdm(range(0, len(todo), batch_size), desc=f"detect {cache_file.stem}",
                                   disable=not progress or not todo, unit="batch")):
        if k and k % SAVE_EVERY == 0:
            save()  # an interrupted run keeps what it detected
        chunk = todo[start:start + batch_size]
        images, ok = [], []
        for p in chunk:
            try:
                images.append(load_image(p))
                ok.append(p)
            except FacemtlError:
                entries[str(p)] = {"key": _file_key(p), "faces": None}
        for p, dets in zip(ok, detector.detect(images)):
            entries[str(p)] = {"key": _file_key(p), "faces": [
                {"box": d.box.tolist(), "score": d.score, "landmarks": d.landmarks5.tolist()} for d in dets]}
    if todo:
        save()
    out: dict[Path, list[CachedFace] | None] = {}
    for p in paths:
        faces = entries[str(p)]["faces"]
        out[p] = None if faces is None else [
            CachedFace(np.array(f["box"], np.float32), float(f["score"]), np.array(f["landmarks"], np.float32))
            for f in faces]
    return out


def cached_landmarks(paths: Sequence[Path], cache_file: Path, detector: FaceDetector | None = None,
                     batch_size: int = 32, progress: bool = True) -> dict[Path, CachedFace | None]:
    """The largest face per image (None where none is found or the file is unreadable), cached."""
    found = cached_detections(paths, cache_file, detector, batch_size, progress)
    return {p: None if faces is None else largest(faces) for p, faces in found.items()}


def default_cache_dir(chosen: str | os.PathLike[str] | None = None) -> Path:
    """Where derived data (detections, crop tables) goes: the folder ``chosen`` by the user when given, else
    ``$FACEMTL_CACHE`` or ``~/.cache/facemtl``."""
    if chosen:
        return Path(chosen)
    return Path(os.environ.get("FACEMTL_CACHE", Path.home() / ".cache" / "facemtl"))
