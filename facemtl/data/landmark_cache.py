"""Detector landmarks for a dataset, computed once and cached on disk with a manifest.

The manifest records, per image, the file's size and modification time, the detector weights' checksum and
the settings used, so a rerun detects only images that are new or changed.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..detect.detector import FaceDetector
from ..errors import FacemtlError
from ..io import load_image
from ..serialization import atomic_write_bytes

CACHE_VERSION = 1


@dataclass(frozen=True)
class CachedFace:
    """The face picked in one image: box, score and (5,2) landmarks in image pixels."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _largest(dets: list) -> CachedFace | None:
    """The detection with the largest box: the photo's subject in portrait-style datasets."""
    if not dets:
        return None
    best = max(dets, key=lambda d: float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))
    return CachedFace(best.box.astype(np.float32), best.score, best.landmarks5.astype(np.float32))


def detector_signature(detector: FaceDetector) -> str:
    """A short id of the detector's weights and settings, stored in the manifest."""
    h = hashlib.sha256()
    for net in (detector.cascade.pnet, detector.cascade.rnet, detector.cascade.onet):
        for t in net.state_dict().values():
            h.update(t.cpu().numpy().tobytes())
    h.update(repr(detector.config).encode())
    return h.hexdigest()[:16]


def cached_landmarks(paths: Sequence[Path], cache_file: Path, detector: FaceDetector | None = None,
                     batch_size: int = 32, progress: bool = True) -> dict[Path, CachedFace | None]:
    """Largest face per image (None where none is found or the file is unreadable), reusing the cache."""
    cache_file = Path(cache_file)
    detector = detector or FaceDetector(device="cpu")
    signature = detector_signature(detector)
    entries: dict[str, dict] = {}
    if cache_file.is_file():
        try:
            manifest = json.loads(cache_file.read_text())
            if manifest.get("version") == CACHE_VERSION and manifest.get("detector") == signature:
                entries = manifest["entries"]
        except (json.JSONDecodeError, KeyError):
            entries = {}
    todo = [p for p in paths if entries.get(str(p), {}).get("key") != _file_key(p)]
    if todo:
        from tqdm import tqdm
        for start in tqdm(range(0, len(todo), batch_size), desc=f"detect {cache_file.stem}",
                          disable=not progress, unit="batch"):
            chunk = todo[start:start + batch_size]
            images, ok = [], []
            for p in chunk:
                try:
                    images.append(load_image(p))
                    ok.append(p)
                except FacemtlError:
                    entries[str(p)] = {"key": _file_key(p), "face": None, "error": "unreadable"}
            for p, dets in zip(ok, detector.detect(images)):
                face = _largest(dets)
                entries[str(p)] = {"key": _file_key(p), "face": None if face is None else {
                    "box": face.box.tolist(), "score": face.score, "landmarks": face.landmarks.tolist()}}
        manifest = {"version": CACHE_VERSION, "detector": signature, "entries": entries}
        atomic_write_bytes(cache_file, json.dumps(manifest).encode())
    out: dict[Path, CachedFace | None] = {}
    for p in paths:
        face = entries[str(p)]["face"]
        out[p] = None if face is None else CachedFace(np.array(face["box"], np.float32), float(face["score"]),
                                                      np.array(face["landmarks"], np.float32))
    return out


def default_cache_dir() -> Path:
    """Where derived data (landmark manifests, crop caches) goes: ``$FACEMTL_CACHE`` or ``~/.cache/facemtl``."""
    return Path(os.environ.get("FACEMTL_CACHE", Path.home() / ".cache" / "facemtl"))
