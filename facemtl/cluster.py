"""Group faces by person: a neighbour graph of embeddings above a cosine threshold, clustered by Chinese whispers.

Two faces are linked when their cosine similarity reaches the threshold and each is among the other's ``k``
most similar faces (mutual neighbours: a face that resembles everyone, a hub, cannot link them all). The graph
is built in blocks of rows, one block x N score matrix at a time, so memory stays bounded and no N x N matrix
is ever formed. Labels then spread over the graph by Chinese whispers (Biemann 2006, the method behind dlib's
``chinese_whispers_clustering``): each face takes the label with the most edge weight among its neighbours.
Unlike connected components, one stray edge between two people does not merge them. Faces whose cluster is
smaller than ``min_size`` get the label -1. tools/bench_cluster.py measures the choices (k, mutual links).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import sparse

from .batch import Failure, collect_files, load_batches
from .errors import InvalidInputError

__all__ = ["ClusteredFace", "PhotoClusters", "cluster_embeddings", "cluster_photos", "contact_sheet",
           "neighbour_graph", "same_person_threshold"]

ALONE = -1
"""The label of a face left alone (its cluster has fewer than ``min_size`` faces)."""
MAX_SCORES = 1 << 24
"""Scores in one block x N similarity matrix (64 MiB of float32): bounds the graph's working memory."""
SHEET_MAX_FACES = 144
"""Faces shown on one contact sheet (12 x 12 tiles); a bigger cluster shows its first ones."""
_SELF_VOTE = 1e-6
"""A face's vote for its own current label: breaks ties toward staying, so the updates settle."""


def cluster_embeddings(embeddings: np.ndarray, threshold: float, k: int = 20, min_size: int = 2,
                       iterations: int = 100, seed: int = 0) -> np.ndarray:
    """Cluster label of each row of (N,D) L2-normalised embeddings: 0 for the biggest cluster, 1 for the next...
    and -1 for faces in clusters of fewer than ``min_size``; faces are linked where their cosine >= threshold."""
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise InvalidInputError(f"min_size must be a whole number >= 1, got {min_size!r}")
    graph = neighbour_graph(embeddings, threshold, k)
    return _by_size(chinese_whispers(graph, iterations, seed), min_size)


def neighbour_graph(embeddings: np.ndarray, threshold: float, k: int = 20) -> sparse.csr_matrix:
    """Symmetric (N,N) sparse graph weighted by cosine: faces at or above the threshold that are among each
    other's ``k`` nearest; built block by block so no more than ``MAX_SCORES`` similarities exist at once."""
    x = _checked(embeddings)
    if not isinstance(threshold, (float, int, np.floating, np.integer)) or not 0.0 < float(threshold) <= 1.0:
        raise InvalidInputError(f"threshold must be a cosine similarity in (0, 1], got {threshold!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be a whole number >= 1, got {k!r}")
    n = len(x)
    step = max(1, MAX_SCORES // max(n, 1))
    blocks = [_block_edges(x, lo, min(lo + step, n), float(threshold), int(k)) for lo in range(0, n, step)]
    if not blocks:
        return sparse.csr_matrix((n, n), dtype=np.float32)
    rows, cols, weights = (np.concatenate(part) for part in zip(*blocks))
    graph = sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))
    return graph.minimum(graph.T).tocsr()


def _checked(embeddings: Any) -> np.ndarray:
    """Embeddings as a C-contiguous float32 (N,D) array of finite unit rows, or InvalidInputError."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise InvalidInputError(f"embeddings must be an (N,D) array with D >= 1, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError("embeddings contain NaN or infinity")
    norms = np.linalg.norm(x, axis=1)
    if len(x) and np.abs(norms - 1.0).max() > 1e-3:
        raise InvalidInputError(f"embeddings must be L2-normalised rows (norms {norms.min():.4g}..{norms.max():.4g})")
    return x


def _block_edges(x: np.ndarray, lo: int, hi: int, threshold: float, k: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, cosines) of rows lo..hi: neighbours at or above the threshold, the best ``k`` where more."""
    scores = x[lo:hi] @ x.T
    local = np.arange(hi - lo)
    scores[local, lo + local] = -np.inf  # a face is not its own neighbour
    rows, cols = np.nonzero(scores >= threshold)
    crowded = np.flatnonzero(np.bincount(rows, minlength=hi - lo) > k)
    if len(crowded):
        keep = ~np.isin(rows, crowded)
        top = np.argpartition(-scores[crowded], k - 1, axis=1)[:, :k]
        rows = np.concatenate([rows[keep], np.repeat(crowded, k)])
        cols = np.concatenate([cols[keep], top.ravel()])
    return (rows + lo).astype(np.int64), cols.astype(np.int64), scores[rows, cols]


def chinese_whispers(graph: sparse.csr_matrix, iterations: int = 100, seed: int = 0) -> np.ndarray:
    """Labels (not compacted) from Chinese whispers on a weighted graph: every round each face proposes the
    label with the most weight among its neighbours, and a random half of the faces whose proposal differs
    adopt it (all at once would let two linked faces swap labels forever); stops when no proposal differs."""
    n = graph.shape[0]
    labels = np.arange(n)
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
        proposal = _strongest_label(graph, labels)
        changed = proposal != labels
        if not changed.any():
            break
        move = changed & (rng.random(n) < 0.5)
        labels[move] = proposal[move]
    return labels


def _strongest_label(graph: sparse.csr_matrix, labels: np.ndarray) -> np.ndarray:
    """Per face, the label whose neighbours carry the most edge weight (its own label wins a tie)."""
    n = graph.shape[0]
    faces = np.concatenate([np.repeat(np.arange(n), np.diff(graph.indptr)), np.arange(n)])
    weights = np.concatenate([graph.data.astype(np.float64), np.full(n, _SELF_VOTE)])
    votes = sparse.csr_matrix((weights, (faces, labels[np.concatenate([graph.indices, np.arange(n)])])),
                              shape=(n, n))
    votes.sum_duplicates()
    row = np.repeat(np.arange(n), np.diff(votes.indptr))
    best = np.maximum.reduceat(votes.data, votes.indptr[:-1])  # every row holds its own vote, so none is empty
    top = np.flatnonzero(votes.data >= best[row])
    _, first = np.unique(row[top], return_index=True)
    return votes.indices[top[first]]


def _by_size(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Renumber clusters 0, 1, ... from the biggest (ties: the one with the earliest face); small ones -> -1."""
    _, first, inverse, counts = np.unique(labels, return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out = rank[inverse]
    out[counts[inverse] < min_size] = ALONE
    return out.astype(np.int64)


@dataclass
class ClusteredFace:
    """One face of one photo and the cluster it landed in."""

    file: str
    face: int
    """The face's index in its photo's list of faces (the order of ``FaceAnalyzer.analyze`` and faces.json)."""
    box: np.ndarray
    crop: np.ndarray
    """The aligned face crop (the model's input size), for contact sheets."""
    cluster: int = ALONE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as written to clusters.json."""
        return {"file": self.file, "face": self.face, "box": [round(float(v), 2) for v in self.box],
                "cluster": self.cluster}


@dataclass
class PhotoClusters:
    """Every face of a set of photos grouped by person, with the photos that could not be read."""

    faces: list[ClusteredFace]
    failures: list[Failure]
    photos: int
    threshold: float
    min_size: int

    def members(self) -> list[list[ClusteredFace]]:
        """Faces of cluster 0, 1, ... in photo order."""
        groups: list[list[ClusteredFace]] = [[] for _ in range(1 + max((f.cluster for f in self.faces), default=-1))]
        for face in self.faces:
            if face.cluster != ALONE:
                groups[face.cluster].append(face)
        return groups

    def summary(self) -> dict[str, Any]:
        """Counts for summary.json: photos, faces, clusters, their sizes (biggest first), faces left alone."""
        sizes = [len(group) for group in self.members()]
        return {"photos": self.photos, "failed": len(self.failures), "faces": len(self.faces),
                "clusters": len(sizes), "sizes": sizes, "alone": len(self.faces) - sum(sizes),
                "threshold": self.threshold, "min_size": self.min_size}


def cluster_photos(analyzer: Any, paths: Sequence[str | os.PathLike[str]], threshold: float | None = None,
                   min_size: int = 2, k: int = 20, batch_size: int = 8, exclude: Path | None = None) -> PhotoClusters:
    """Every face of every photo under ``paths`` (folders recursively) grouped by person with ``analyzer``
    (a FaceAnalyzer). ``threshold`` defaults to the model's calibrated verification threshold; unreadable
    photos are listed in ``failures`` and skipped. Crops are kept in memory (the model's input size each)."""
    threshold = same_person_threshold(analyzer, threshold)
    faces, embeddings, failures, photos = [], [], [], 0
    for files, images, bad in load_batches(collect_files(paths, exclude=exclude), batch_size, "cluster"):
        failures.extend(bad)
        photos += len(files)
        for file, found in zip(files, analyzer.analyze(images, refine=0) if images else []):
            for index, face in enumerate(found):
                if face.embedding is None:
                    raise InvalidInputError("the model has no embedding head: it cannot cluster faces")
                faces.append(ClusteredFace(str(file), index, face.box, face.crop))
                embeddings.append(face.embedding)
    if faces:
        labels = cluster_embeddings(np.stack(embeddings), threshold, k=k, min_size=min_size)
        for face, label in zip(faces, labels.tolist()):
            face.cluster = label
    return PhotoClusters(faces, failures, photos, threshold, min_size)


def same_person_threshold(analyzer: Any, threshold: float | None) -> float:
    """The cosine threshold asked for, else the model's calibrated verification one (a model without one
    needs it given)."""
    if threshold is not None:
        return float(threshold)
    if analyzer.threshold is None:
        raise InvalidInputError("the model stores no calibrated verification threshold: give one (--threshold)")
    return float(analyzer.threshold)


def contact_sheet(crops: Sequence[np.ndarray] | np.ndarray, columns: int | None = None,
                  max_faces: int = SHEET_MAX_FACES) -> np.ndarray:
    """Tile (n,S,S,3) uint8 face crops into one RGB image, row by row on a grey ground (the first
    ``max_faces``; square-ish unless ``columns`` is given)."""
    tiles = np.asarray(crops[:max_faces], dtype=np.uint8)
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or len(tiles) == 0:
        raise InvalidInputError(f"crops must be a non-empty (n,S,S,3) stack, got shape {tiles.shape}")
    n, h, w, _ = tiles.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * cols, h, w, 3), 128, np.uint8)
    grid[:n] = tiles
    return grid.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
