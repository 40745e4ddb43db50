"""Reader for LFW-format pair lists (``pairs.txt``: folds of same / different pairs)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..errors import DatasetError
from . import annotation_lines

LfwPair = tuple[str, int, str, int]


# --------------------------------------------------------------------------------------------- LFW pair file


@dataclass(frozen=True)
class PairList:
    """The pairs of an LFW-format pair file, with their labels and the fold each pair belongs to."""

    pairs: list[LfwPair]
    same: NDArray[np.bool_]
    fold: NDArray[np.int64]
    n_folds: int
    pairs_per_class: int

    def __len__(self) -> int:
        """Number of pairs, so the list can be used like the plain list of tuples."""
        return len(self.pairs)

    def __iter__(self) -> Iterator[LfwPair]:
        """Iterate over ``(name1, idx1, name2, idx2)`` tuples."""
        return iter(self.pairs)

    def __getitem__(self, i: int) -> LfwPair:
        """The i-th ``(name1, idx1, name2, idx2)`` tuple."""
        return self.pairs[i]


def _parse_index(token: str, path: Path, lineno: int) -> int:
    """Parse an LFW image number (1-based), raising DatasetError that names the line."""
    try:
        value = int(token)
    except ValueError:
        raise DatasetError(f"{path}: line {lineno}: image number {token!r} is not an integer") from None
    if value < 1:
        raise DatasetError(f"{path}: line {lineno}: image number {value} must be >= 1")
    return value


def read_lfw_pairs(path: str | Path) -> PairList:
    """Read an LFW ``pairs.txt`` (header ``folds n`` then n same + n different lines per fold) with its folds.

    A one-number header (``pairsDevTrain.txt`` style) is read as a single fold. Windows line endings,
    trailing whitespace and blank lines are accepted; anything else malformed raises DatasetError naming the
    line. Fold k holds lines ``2nk .. 2n(k+1)-1``: its n "same" lines (``name i j``) followed by its n
    "different" lines (``name1 i name2 j``), exactly as in LFW; a file that breaks that layout is rejected.
    """
    path = Path(path)
    lines = annotation_lines(path, "pair file")
    if not lines:
        raise DatasetError(f"{path}: empty pair file")
    header_no, header = lines[0]
    try:
        numbers = [int(t) for t in header]
    except ValueError:
        raise DatasetError(f"{path}: line {header_no}: header must be 'folds pairs_per_class', got {header}") from None
    if len(numbers) == 2:
        n_folds, per_class = numbers
    elif len(numbers) == 1:
        n_folds, per_class = 1, numbers[0]
    else:
        raise DatasetError(f"{path}: line {header_no}: header must be 'folds pairs_per_class', got {header}")
    if n_folds < 1 or per_class < 1:
        raise DatasetError(f"{path}: line {header_no}: header numbers must be positive, got {numbers}")

    body = lines[1:]
    expected = 2 * n_folds * per_class
    pairs: list[LfwPair] = []
    for k, (no, tokens) in enumerate(body):
        if k >= expected:
            raise DatasetError(f"{path}: line {no}: more pair lines than the header announces ({expected})")
        want_same = (k % (2 * per_class)) < per_class
        if len(tokens) == 3:
            if not want_same:
                raise DatasetError(f"{path}: line {no}: a 'same' pair where the fold layout expects a 'different' one")
            name = tokens[0]
            pairs.append((name, _parse_index(tokens[1], path, no), name, _parse_index(tokens[2], path, no)))
        elif len(tokens) == 4:
            if want_same:
                raise DatasetError(f"{path}: line {no}: a 'different' pair where the fold layout expects a 'same' one")
            pairs.append((tokens[0], _parse_index(tokens[1], path, no), tokens[2], _parse_index(tokens[3], path, no)))
        else:
            raise DatasetError(
                f"{path}: line {no}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {len(tokens)} fields"
            )
    if len(pairs) != expected:
        last = body[-1][0] if body else header_no
        raise DatasetError(
            f"{path}: line {last}: file ends after {len(pairs)} pair lines, header announces {expected}"
        )
    position = np.arange(expected, dtype=np.int64)
    same = (position % (2 * per_class)) < per_class
    fold = position // (2 * per_class)
    return PairList(pairs=pairs, same=same, fold=fold, n_folds=n_folds, pairs_per_class=per_class)


# ------------------------------------------------------------------------------------------ pair generation
