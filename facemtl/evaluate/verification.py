"""Face verification metrics: identity-disjoint pair generation, the 10-fold protocol, ROC, TAR@FAR (LFW pair
lists are read by ``facemtl.data.lfw``).

Scores are similarities (higher means "same person"); a pair is predicted "same" when ``score >= threshold``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import InvalidInputError

def _same_identity_pairs(codes: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """All index pairs i<j with equal identity code, built without a loop over identities."""
    order = np.argsort(codes, kind="stable")  # within one identity, indices stay increasing
    sorted_codes = codes[order]
    n = len(codes)
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group_end = np.repeat(starts + sizes, sizes)  # one past the last position of each element's group
    partners = group_end - np.arange(n) - 1  # how many later elements share the identity
    total = int(partners.sum())
    pos_a = np.repeat(np.arange(n), partners)
    first = np.cumsum(partners) - partners  # offset of each element's block of pairs
    pos_b = pos_a + 1 + (np.arange(total) - np.repeat(first, partners))
    return order[pos_a].astype(np.int64), order[pos_b].astype(np.int64)


def _different_identity_pairs(
    codes: NDArray[np.int64], k: int, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """k distinct unordered pairs i<j of different identity, uniform over all such pairs."""
    n = len(codes)
    counts = np.bincount(codes)
    n_diff = n * (n - 1) // 2 - int((counts * (counts - 1) // 2).sum())
    if k > n_diff:
        raise InvalidInputError(
            f"only {n_diff} different-identity pairs exist, {k} are needed to balance the same pairs"
        )
    if k == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if 2 * k > n_diff:
        # Dense case: enumerate every different pair (at most 2k + same-pair count of them) and pick k.
        i, j = np.triu_indices(n, 1)
        keep = codes[i] != codes[j]
        i, j = i[keep], j[keep]
        pick = rng.choice(len(i), size=k, replace=False)
        return i[pick].astype(np.int64), j[pick].astype(np.int64)
    # Sparse case: the first k distinct valid draws of an i.i.d. uniform stream form a uniform k-subset.
    accept = 2.0 * n_diff / (n * n)
    chosen = np.zeros(0, dtype=np.int64)
    while len(chosen) < k:
        need = k - len(chosen)
        m = int(math.ceil(1.5 * need / accept)) + 64
        a = rng.integers(0, n, size=m)
        b = rng.integers(0, n, size=m)
        valid = codes[a] != codes[b]  # also excludes a == b
        lo, hi = np.minimum(a, b)[valid], np.maximum(a, b)[valid]
        stream = np.concatenate([chosen, lo.astype(np.int64) * n + hi])
        _, first = np.unique(stream, return_index=True)
        chosen = stream[np.sort(first)][:k]
    return chosen // n, chosen % n


def make_identity_pairs(
    identities: Sequence[int | str] | NDArray[Any], seed: int = 1, n_folds: int = 10
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.bool_], NDArray[np.int64]]:
    """Build balanced, fold-assigned verification pairs over a test set (all same pairs + as many random different).

    Returns ``(idx_a, idx_b, same, fold)`` indexing into ``identities``. The "same" pairs are every i<j with
    equal identity; the "different" pairs are the same number of distinct i<j pairs of different identity,
    drawn uniformly without replacement. Each class is shuffled and dealt round-robin into ``n_folds`` folds,
    so every fold holds the same number of same and different pairs (±1). Output is ordered by fold, then
    same before different, then by ``(idx_a, idx_b)``. The result is a pure function of ``(identities, seed,
    n_folds)``: the same inputs always give identical arrays (``np.random.default_rng(seed)``).
    """
    ids = np.asarray(identities)
    if ids.ndim != 1:
        raise InvalidInputError(f"identities must be a 1-D sequence, got shape {ids.shape}")
    if n_folds < 1:
        raise InvalidInputError(f"n_folds must be >= 1, got {n_folds}")
    _, codes = np.unique(ids, return_inverse=True)
    codes = codes.astype(np.int64).ravel()
    rng = np.random.default_rng(seed)

    same_a, same_b = _same_identity_pairs(codes)
    n_pos = len(same_a)
    if n_pos < n_folds:
        raise InvalidInputError(f"only {n_pos} same-identity pairs: need at least one per fold ({n_folds} folds)")
    diff_a, diff_b = _different_identity_pairs(codes, n_pos, rng)

    fold_same = np.empty(n_pos, dtype=np.int64)
    fold_same[rng.permutation(n_pos)] = np.arange(n_pos) % n_folds
    fold_diff = np.empty(n_pos, dtype=np.int64)
    fold_diff[rng.permutation(n_pos)] = np.arange(n_pos) % n_folds

    idx_a = np.concatenate([same_a, diff_a])
    idx_b = np.concatenate([same_b, diff_b])
    same = np.r_[np.ones(n_pos, dtype=bool), np.zeros(n_pos, dtype=bool)]
    fold = np.concatenate([fold_same, fold_diff])
    order = np.lexsort((idx_b, idx_a, ~same, fold))
    return idx_a[order], idx_b[order], same[order], fold[order]


# ------------------------------------------------------------------------------------------------- metrics


def _scores_labels(scores: ArrayLike, same: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Validate and return (scores as float64, labels as bool), both 1-D of equal length, both classes present."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same)
    if s.ndim != 1 or y.shape != s.shape:
        raise InvalidInputError(f"scores and same must be 1-D of equal length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise InvalidInputError("scores contain NaN or infinite values")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise InvalidInputError("same must be boolean (or 0/1)")
        y = y.astype(bool)
    if y.all() or not y.any():
        raise InvalidInputError("both same and different pairs are needed")
    return s, y


def _best_threshold(scores: NDArray[np.float64], same: NDArray[np.bool_]) -> tuple[float, float]:
    """The accuracy-maximising threshold on these pairs and its accuracy (ties: the lowest threshold).

    Candidates are the midpoints between consecutive distinct scores plus one score unit below the lowest
    and above the highest; every candidate is scored at once with cumulative sums over the sorted scores.
    """
    uniq, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, weights=same, minlength=len(uniq))
    neg = np.bincount(inverse, weights=~same, minlength=len(uniq))
    cum_pos = np.r_[0.0, np.cumsum(pos)]
    cum_neg = np.r_[0.0, np.cumsum(neg)]
    # Candidate c accepts the distinct scores uniq[c:], i.e. TP = P - cum_pos[c] and TN = cum_neg[c].
    correct = (cum_pos[-1] - cum_pos) + cum_neg
    candidates = np.r_[uniq[0] - 1.0, (uniq[1:] + uniq[:-1]) / 2.0, uniq[-1] + 1.0]
    best = int(np.argmax(correct))
    return float(candidates[best]), float(correct[best] / len(scores))


def roc(scores: ArrayLike, same: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """ROC curve ``(far, tar, thresholds)`` for accepting ``score >= threshold``, thresholds descending.

    One point per distinct score, preceded by ``(0, 0)`` at threshold ``+inf`` (accept nothing); the last
    point is ``(1, 1)`` at the lowest score.
    """
    s, y = _scores_labels(scores, same)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    ends = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s) - 1]
    tp = np.cumsum(y_sorted)[ends]
    fp = ends + 1 - tp
    tar = np.r_[0.0, tp / y.sum()]
    far = np.r_[0.0, fp / (~y).sum()]
    thresholds = np.r_[np.inf, s_sorted[ends]]
    return far, tar, thresholds


def tar_at_far(scores: ArrayLike, same: ArrayLike, far_target: float) -> tuple[float, float]:
    """Highest true-accept rate whose false-accept rate is <= far_target, and the threshold that gives it.

    Among thresholds reaching that TAR the highest (lowest FAR) is returned. When no positive pair can be
    accepted within the target, TAR is 0 and the threshold is ``+inf``.
    """
    if not 0.0 <= far_target <= 1.0:
        raise InvalidInputError(f"far_target must be in [0, 1], got {far_target}")
    far, tar, thresholds = roc(scores, same)
    ok = far <= far_target + 1e-12
    best_tar = tar[ok].max()
    i = int(np.flatnonzero(ok & (tar == best_tar))[0])
    return float(tar[i]), float(thresholds[i])


def auc(far: ArrayLike, tar: ArrayLike) -> float:
    """Area under an ROC curve by the trapezoid rule."""
    return float(np.trapezoid(np.asarray(tar, dtype=np.float64), np.asarray(far, dtype=np.float64)))


def cosine_scores(emb_a: ArrayLike, emb_b: ArrayLike) -> NDArray[np.float64]:
    """Row-wise cosine similarity of two (N, D) embedding arrays (the verification score of each pair)."""
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise InvalidInputError(f"embeddings must be two (N, D) arrays of equal shape, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    if np.any(na == 0) or np.any(nb == 0):
        raise InvalidInputError("an embedding is the zero vector: cosine similarity is undefined")
    return np.einsum("nd,nd->n", a, b) / (na * nb)


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of the k-fold verification protocol plus threshold-free ROC figures."""

    accuracy: float
    accuracy_std: float
    fold_accuracies: NDArray[np.float64]
    fold_thresholds: NDArray[np.float64]
    threshold: float
    auc: float
    tar_at_far_1e2: float
    tar_at_far_1e3: float
    n_pairs: int
    n_same: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (plain floats, ints and lists)."""
        return {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "fold_accuracies": [float(v) for v in self.fold_accuracies],
            "fold_thresholds": [float(v) for v in self.fold_thresholds],
            "threshold": self.threshold,
            "auc": self.auc,
            "tar_at_far_1e-2": self.tar_at_far_1e2,
            "tar_at_far_1e-3": self.tar_at_far_1e3,
            "n_pairs": self.n_pairs,
            "n_same": self.n_same,
            "n_different": self.n_pairs - self.n_same,
        }


def verification_accuracy(scores: ArrayLike, same: ArrayLike, fold: ArrayLike) -> VerificationResult:
    """LFW protocol: per fold, pick the best threshold on the other folds and test it on this one.

    Reports the mean and standard deviation (ddof=0) of the per-fold accuracies, each fold's threshold, the
    threshold chosen on all pairs (the one to deploy), the ROC AUC and TAR at FAR 1e-2 and 1e-3 over all pairs.
    """
    s, y = _scores_labels(scores, same)
    f = np.asarray(fold)
    if f.shape != s.shape or not np.issubdtype(f.dtype, np.integer):
        raise InvalidInputError(f"fold must be an integer array of shape {s.shape}, got {f.dtype} {f.shape}")
    folds = np.unique(f)
    if len(folds) < 2:
        raise InvalidInputError("at least two folds are needed")
    accuracies = np.empty(len(folds))
    thresholds = np.empty(len(folds))
    for k, fk in enumerate(folds):
        test = f == fk
        train = ~test
        if y[train].all() or not y[train].any():
            raise InvalidInputError(f"the folds other than {fk} lack same or different pairs")
        thresholds[k], _ = _best_threshold(s[train], y[train])
        accuracies[k] = np.mean((s[test] >= thresholds[k]) == y[test])
    far, tar, _ = roc(s, y)
    return VerificationResult(
        accuracy=float(accuracies.mean()),
        accuracy_std=float(accuracies.std()),
        fold_accuracies=accuracies,
        fold_thresholds=thresholds,
        threshold=_best_threshold(s, y)[0],
        auc=auc(far, tar),
        tar_at_far_1e2=tar_at_far(s, y, 1e-2)[0],
        tar_at_far_1e3=tar_at_far(s, y, 1e-3)[0],
        n_pairs=int(len(s)),
        n_same=int(y.sum()),
    )


def verification_accuracy_with_failures(scores: ArrayLike, same: ArrayLike, fold: ArrayLike
                                        ) -> tuple[VerificationResult, float, int]:
    """The k-fold protocol when some pairs have no score (NaN: a photo where no face was found).

    Thresholds are chosen on the scored pairs of the other folds; in the test fold an unscored pair counts
    as a wrong answer. Returns (the result over scored pairs only, the accuracy over all pairs with failures
    counted wrong, the number of unscored pairs).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    f = np.asarray(fold)
    valid = np.isfinite(s)
    scored = verification_accuracy(s[valid], y[valid], f[valid])
    folds = np.unique(f[valid])
    correct = np.zeros(len(s), dtype=bool)
    for fk, threshold in zip(folds, scored.fold_thresholds):
        test = (f == fk) & valid
        correct[test] = (s[test] >= threshold) == y[test]
    per_fold = [correct[f == fk].mean() for fk in np.unique(f)]
    return scored, float(np.mean(per_fold)), int((~valid).sum())
