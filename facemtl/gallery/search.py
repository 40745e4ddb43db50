"""Vector search over a gallery's embeddings held in memory: exact cosine scores per person, with candidates
found by chunked matrix products or, for large galleries where faiss is installed, by faiss's exact
inner-product index. Every path scores its candidates with the same arithmetic, so results do not depend on
which one ran."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

faiss_min_rows = 50_000  # above this many rows, use faiss.IndexFlatIP (when importable) to find candidates
_MAX_SCORES = 1 << 24  # floats in one query-chunk x gallery score matrix (64 MiB)


@dataclass(frozen=True)
class Match:
    """One enrolled person's best-matching embedding for a query."""

    name: str
    score: float  # cosine similarity in [-1, 1]
    source: str  # the file (or label) that embedding was enrolled from


@dataclass(frozen=True)
class Identification:
    """The answer for one query embedding: the best person, or ``"unknown"`` below the threshold."""

    name: str  # matches[0].name if its score >= threshold, else UNKNOWN
    score: float  # matches[0].score, or NO_MATCH_SCORE when the gallery is empty
    matches: list[Match]  # up to top_k people, best first (kept when the name is "unknown")


@dataclass
class Index:
    """The whole gallery in memory: unit rows grouped by person (rows of a person are contiguous)."""

    key: tuple[int, int]
    matrix: np.ndarray  # (N, dim) float32, C-contiguous
    sources: list[str]  # (N,)
    names: list[str]  # (P,) distinct names, sorted
    starts: np.ndarray  # (P,) first row of each person
    ends: np.ndarray  # (P,) one past the last row of each person
    person_of_row: np.ndarray  # (N,) person index of each row
    faiss_index: Any = field(default=None)


def import_faiss() -> ModuleType | None:
    """The faiss module, or None when it is not installed (it is an optional extra: ``facemtl[faiss]``)."""
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


def _clip(score: float) -> float:
    return min(1.0, max(-1.0, float(score)))


def _rank(best: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the ``top_k`` largest entries of ``best``, best first; ties go to the smaller index."""
    n = best.shape[0]
    if n > 4 * top_k:
        kth = np.partition(best, n - top_k)[n - top_k]
        cand = np.flatnonzero(best >= kth)  # every entry that can be in the top k, ties included
    else:
        cand = np.arange(n)
    order = np.lexsort((cand, -best[cand]))
    return cand[order[:top_k]]


def candidates_numpy(index: Index, queries: np.ndarray, top_k: int) -> list[np.ndarray]:
    """Per query, the top_k people by best score: one matrix product per chunk of queries."""
    out: list[np.ndarray] = []
    chunk = max(1, _MAX_SCORES // len(index.sources))
    for lo in range(0, len(queries), chunk):
        scores = queries[lo:lo + chunk] @ index.matrix.T  # (c, N)
        best = np.maximum.reduceat(scores, index.starts, axis=1)  # (c, P): each person's best row
        out.extend(_rank(row, top_k) for row in best)
    return out

def candidates_faiss(faiss: ModuleType, index: Index, queries: np.ndarray, top_k: int) -> list[np.ndarray]:
    """Per query, a superset of the top_k people from an exact inner-product search of the nearest rows.

    The k nearest rows are searched with k growing until they cover top_k distinct people: the first top_k
    distinct people among rows sorted by score are exactly the top_k people by best score.
    """
    if index.faiss_index is None:
        index.faiss_index = faiss.IndexFlatIP(index.matrix.shape[1])
        index.faiss_index.add(index.matrix)
    n = len(index.sources)
    out: list[np.ndarray | None] = [None] * len(queries)
    pending = np.arange(len(queries))
    k = min(n, max(64, 8 * top_k))
    while pending.size:
        _, rows = index.faiss_index.search(np.ascontiguousarray(queries[pending]), k)
        still = []
        for qi, found in zip(pending, rows):
            persons = np.unique(index.person_of_row[found[found >= 0]])
            if persons.size >= top_k or k == n:
                out[qi] = persons
            else:
                still.append(qi)
        pending = np.array(still, dtype=np.int64)
        k = min(n, 2 * k)
    return [p for p in out if p is not None]

def score(index: Index, query: np.ndarray, persons: np.ndarray, top_k: int) -> list[Match]:
    """Score the candidate people exactly (same arithmetic on every search path) and keep the top_k."""
    best = np.empty(len(persons), np.float32)
    where = np.empty(len(persons), np.int64)
    for j, p in enumerate(persons):
        start, end = index.starts[p], index.ends[p]
        seg = index.matrix[start:end] @ query
        arg = int(np.argmax(seg))
        best[j], where[j] = seg[arg], start + arg
    order = np.lexsort((persons, -best))[:top_k]  # best first; ties by name
    return [
        Match(index.names[persons[j]], _clip(best[j]), index.sources[where[j]]) for j in order
    ]


def find(index: Index, queries: np.ndarray, top_k: int) -> list[list[Match]]:
    """Per unit-length query row, the ``top_k`` people by their best-matching embedding, best first."""
    faiss = import_faiss() if len(index.sources) > faiss_min_rows else None
    candidates = candidates_faiss(faiss, index, queries, top_k) if faiss else candidates_numpy(index, queries, top_k)
    return [score(index, query, persons, top_k) for query, persons in zip(queries, candidates)]
