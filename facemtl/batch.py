"""Batch jobs over many photos: load in batches, report each bad file with its reason, never abort."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from .errors import FacemtlError
from .io import iter_image_files, load_image


@dataclass(frozen=True)
class Failure:
    """A file a batch job could not process, and why."""

    file: str
    reason: str


def collect_files(paths: Sequence[str | os.PathLike[str]], exclude: Path | None = None) -> list[Path]:
    """Image files under ``paths`` (folders recursively), leaving out anything inside ``exclude``."""
    files = iter_image_files(list(paths))
    if exclude is None:
        return files
    root = exclude.resolve()
    return [f for f in files if root not in f.resolve().parents]


def load_batches(files: Sequence[Path], batch_size: int, desc: str
                 ) -> Iterator[tuple[list[Path], list[np.ndarray], list[Failure]]]:
    """Yield (good files, their RGB arrays, failures) batch by batch, with a progress bar on stderr."""
    with tqdm(total=len(files), desc=desc, unit="photo", disable=len(files) < 2, dynamic_ncols=True) as bar:
        for start in range(0, len(files), batch_size):
            good, arrays, failures = [], [], []
            for path in files[start:start + batch_size]:
                try:
                    arrays.append(load_image(path))
                    good.append(path)
                except FacemtlError as exc:
                    failures.append(Failure(str(path), getattr(exc, "reason", str(exc))))
                except OSError as exc:
                    failures.append(Failure(str(path), f"cannot read file: {exc.strerror or exc}"))
            yield good, arrays, failures
            bar.update(len(good) + len(failures))


def report(done: int, failures: Sequence[Failure], what: str) -> str:
    """A short human summary of a batch run, one line per failed file."""
    lines = [f"{done} photo(s) {what}; {len(failures)} failed"]
    lines += [f"  FAILED {f.file}: {f.reason}" for f in failures]
    return "\n".join(lines)
