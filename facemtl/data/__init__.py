"""Dataset readers (CelebA, MTFL, WIDER FACE, folder-per-person) and the mixed multi-task dataset."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DatasetError

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent.parent


def data_root() -> Path:
    """Where the real datasets live: ``$FACEMTL_DATA`` if set, else ``../shared/data`` beside the source
    checkout or, for an installed package, beside the working directory (the first that exists)."""
    env = os.environ.get("FACEMTL_DATA")
    if env:
        return Path(env)
    candidates = [_CHECKOUT_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def annotation_lines(path: Path, what: str) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of every non-blank line of a UTF-8 annotation file (a BOM and
    Windows line endings accepted); a missing or unreadable file raises DatasetError naming ``what`` it is."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read {what}: {exc}") from None
    return [(no, line.split()) for no, line in enumerate(text.splitlines(), start=1) if line.strip()]
