"""Safe, atomic, checksummed tensor files: every weights, model and checkpoint file goes through here.

Files are read with ``torch.load(weights_only=True)`` (no arbitrary unpickling) and carry a ``format``
name, a ``format_version`` and a SHA-256 over their content, so a foreign, newer, truncated or corrupt
file is refused with a :class:`~facemtl.errors.WeightsError` that says what is wrong.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import WeightsError

CHECKSUM_KEY = "sha256"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    """Feed ``obj`` into ``h`` in a canonical order (tensors by dtype, shape and bytes)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for key in sorted(obj, key=str):
            h.update(repr(key).encode())
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    else:
        h.update(json.dumps(obj, sort_keys=True, default=repr).encode())


def checksum(payload: Mapping[str, Any]) -> str:
    """SHA-256 over everything in ``payload`` except its own checksum entry."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != CHECKSUM_KEY})
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes files private; give them the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_file(payload: dict[str, Any], path: str | os.PathLike[str], fmt: str, version: int) -> None:
    """Save ``payload`` as a facemtl file of format ``fmt``/``version``, atomically and checksummed."""
    body = dict(payload, format=fmt, format_version=version)
    body[CHECKSUM_KEY] = checksum(body)
    buf = io.BytesIO()
    torch.save(body, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_file(path: str | os.PathLike[str], fmt: str, max_version: int) -> dict[str, Any]:
    """Load a facemtl file, checking it is ``fmt`` at a version this code reads, and intact."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        body = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/pickle/zip raise many types for bad files; all mean "unreadable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not a readable facemtl file (truncated, corrupt, or it holds "
                           f"Python objects other than tensors, which are refused): {reason[:300]}") from None
    if not isinstance(body, dict) or "format" not in body:
        raise WeightsError(f"{path}: not a facemtl file (no 'format' entry)")
    if body["format"] != fmt:
        raise WeightsError(f"{path}: holds a '{body['format']}' file, expected '{fmt}'")
    version = body.get("format_version")
    if not isinstance(version, int) or version > max_version or version < 1:
        raise WeightsError(f"{path}: format version {version!r} is not supported by this facemtl "
                           f"(reads versions 1..{max_version}); upgrade facemtl or re-export the file")
    if body.get(CHECKSUM_KEY) != checksum(body):
        raise WeightsError(f"{path}: checksum mismatch, the file is corrupt")
    return body
