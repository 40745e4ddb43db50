"""Carry a cached crop table to a machine that lacks the raw data (a GPU server, say).

A table's crops (uint8, 27 KB each at 96 px) are stored as WebP, about 2.2 KB each at quality 85 (37 dB
PSNR, as JPEG at quality 90 with 3.8 KB), and every label column exactly. Unpacking writes the table into a
cache folder under the key its spec has on the target machine (the key includes the data root), so
``facemtl train`` finds it there and never needs the photos.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np

from ..errors import FacemtlError, OutputExistsError
from ..serialization import atomic_write_bytes
from .mixed import FaceTable, TableSpec

_LABELS = ("landmarks", "identity", "attributes", "attr_mask", "pose", "source")
_OPTIONAL = ("age", "points")
"""Columns that archives packed by older versions lack (unpacked as unknown)."""


def pack_table(table: FaceTable, spec: TableSpec, path: Path, quality: int = 85,
               teacher: dict[str, np.ndarray] | None = None) -> int:
    """Write ``table`` (built from ``spec``) to ``path`` with WebP crops, and the teacher's target file's arrays
    when given (they travel with the table they label); returns the file size in bytes."""
    if not 1 <= quality <= 100:
        raise ValueError(f"WebP quality must be in 1..100, got {quality}")
    blobs = []
    for crop in table.crops:
        ok, buf = cv2.imencode(".webp", crop[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise FacemtlError("could not WebP-encode a crop")
        blobs.append(buf.ravel())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    meta = {k: v for k, v in asdict(spec).items() if k != "root"}
    out = io.BytesIO()
    np.savez_compressed(out, encoded=np.concatenate(blobs) if blobs else np.zeros(0, np.uint8),
                        offsets=offsets, crop_shape=np.array(table.crops.shape[1:]),
                        spec=np.array(json.dumps(meta, sort_keys=True)), files=table.files.astype(str),
                        identity_names=np.array(table.identity_names, dtype=str),
                        **{k: getattr(table, k) for k in _LABELS + _OPTIONAL},
                        **{f"teacher_{k}": v for k, v in (teacher or {}).items()})
    atomic_write_bytes(path, out.getvalue())
    return Path(path).stat().st_size


def unpack_table(path: Path, root: str, cache_dir: Path, force: bool = False) -> Path:
    """Decode an archive from :func:`pack_table` into ``cache_dir`` as the table of its spec under ``root``,
    with its teacher targets (if packed) as the target file of that table.

    An existing table there (perhaps the exact one, built from the photos) is kept unless ``force``.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            spec = replace(TableSpec(root), **json.loads(str(z["spec"])))
            encoded, offsets, shape = z["encoded"], z["offsets"], tuple(int(s) for s in z["crop_shape"])
            labels = [z[k] for k in _LABELS]
            optional = {k: z[k] for k in _OPTIONAL if k in z.files}
            files, names = z["files"], [str(s) for s in z["identity_names"]]
            teacher = {k[len("teacher_"):]: z[k] for k in z.files if k.startswith("teacher_")}
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise FacemtlError(f"{path}: not a facemtl table archive ({exc})") from exc
    out = Path(cache_dir) / f"table-{spec.key()}.npz"
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists (pass force to replace it with the archive's table)")
    crops = np.empty((len(offsets) - 1, *shape), np.uint8)
    for i in range(len(crops)):
        img = cv2.imdecode(encoded[offsets[i]:offsets[i + 1]], cv2.IMREAD_COLOR)
        if img is None or img.shape != shape:
            raise FacemtlError(f"{path}: crop {i} does not decode to {shape}")
        crops[i] = img[..., ::-1]
    table = FaceTable(crops, *labels, files, names, **optional)
    table.save(out)
    if teacher:
        buf = io.BytesIO()
        np.savez(buf, **{k: v for k, v in teacher.items() if k != "name"})
        atomic_write_bytes(Path(cache_dir) / f"teacher-{spec.key()}-{teacher['name']}.npz", buf.getvalue())
    return out
