"""Writing results safely: atomic files, and nothing the user already has is overwritten without force."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import OutputExistsError
from .serialization import atomic_write_bytes


class OutputDir:
    """An output folder whose files are written atomically and never silently replaced."""

    def __init__(self, root: str | os.PathLike[str], force: bool = False) -> None:
        self.root = Path(root)
        self.force = force
        self._claimed: set[str] = set()

    def check_free(self, names: list[str]) -> None:
        """Refuse to start when any of these files, or files inside these folders, exist (unless force)."""
        if self.force:
            return
        taken = [n for n in names if (self.root / n).is_file()
                 or ((self.root / n).is_dir() and any((self.root / n).iterdir()))]
        if taken:
            raise OutputExistsError(f"{self.root}: would overwrite existing output ({', '.join(taken)}); "
                                    "choose another --out folder or pass --force")

    def unique_name(self, folder: str, stem: str, suffix: str) -> str:
        """A file name in ``folder`` not yet used in this run: ``stem.suffix``, else ``stem-2.suffix``, ..."""
        name, k = f"{stem}{suffix}", 1
        while f"{folder}/{name}" in self._claimed:
            k += 1
            name = f"{stem}-{k}{suffix}"
        self._claimed.add(f"{folder}/{name}")
        return name

    def write_bytes(self, relpath: str, data: bytes) -> Path:
        """Write one file atomically; refuses an existing file unless force."""
        path = self.root / relpath
        if path.exists() and not self.force:
            raise OutputExistsError(f"{path} exists; pass --force to overwrite")
        atomic_write_bytes(path, data)
        return path

    def write_json(self, relpath: str, obj: Any) -> Path:
        return self.write_bytes(relpath, (json.dumps(obj, indent=1) + "\n").encode())

    def write_image(self, relpath: str, rgb: np.ndarray) -> Path:
        """Encode an RGB uint8 image by the file's suffix (png, jpg, webp, bmp, tif) and write it."""
        suffix = Path(relpath).suffix.lower()
        if suffix not in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}:
            relpath, suffix = f"{relpath}.png", ".png"
        ok, buf = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"could not encode {relpath}")
        return self.write_bytes(relpath, buf.tobytes())

    def write_npy(self, relpath: str, array: np.ndarray) -> Path:
        import io
        buf = io.BytesIO()
        np.save(buf, array)
        return self.write_bytes(relpath, buf.getvalue())
