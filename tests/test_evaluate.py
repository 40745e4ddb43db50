"""Verification, landmark and attribute metrics and the evaluation plots, on hand-checked examples."""
from __future__ import annotations

import json
import math
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from facemtl.data.lfw import read_lfw_pairs
from facemtl.errors import DatasetError, InvalidInputError
from facemtl.evaluate import (
    attribute_accuracy,
    classification_accuracy,
    cosine_scores,
    landmark_errors,
    landmark_metrics,
    landmark_point_errors,
    make_identity_pairs,
    roc,
    tar_at_far,
    verification_accuracy,
)
from facemtl.evaluate import plots

# ------------------------------------------------------------------------------------------ LFW pair files

SMALL_PAIRS = (
    "2\t3\r\n"
    "Alice\t1\t2\r\n"
    "Bob\t1\t3  \r\n"
    "Carol\t2\t4\r\n"
    "Alice\t1\tBob\t2\r\n"
    "Bob\t3\tCarol\t1\r\n"
    "Dave\t1\tAlice\t3\r\n"
    "Erin\t1\t2\r\n"
    "Frank\t2\t3\r\n"
    "Gina\t1\t5\r\n"
    "Erin\t2\tFrank\t1\r\n"
    "Gina\t4\tHal\t1\r\n"
    "Hal\t2\tErin\t1\r\n"
    "\r\n"
)
# Fold 0: same 0.9 0.8 0.3 | different 0.1 0.2 0.25.  Fold 1: same 0.7 0.6 0.5 | different 0.4 0.35 0.1.
SMALL_SCORES = np.array([0.9, 0.8, 0.3, 0.1, 0.2, 0.25, 0.7, 0.6, 0.5, 0.4, 0.35, 0.1])


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_read_small_pairs_file(tmp_path: Path) -> None:
    pl = read_lfw_pairs(write(tmp_path / "pairs.txt", SMALL_PAIRS))
    assert len(pl) == 12 and pl.n_folds == 2 and pl.pairs_per_class == 3
    assert pl[0] == ("Alice", 1, "Alice", 2)
    assert pl[1] == ("Bob", 1, "Bob", 3)  # trailing spaces and CRLF tolerated
    assert pl[5] == ("Dave", 1, "Alice", 3)
    assert list(pl)[11] == ("Hal", 2, "Erin", 1)
    assert pl.same.tolist() == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    assert pl.fold.tolist() == [0] * 6 + [1] * 6


def test_read_lfw_sized_pairs_file(tmp_path: Path) -> None:
    lines = ["10 300"]
    for k in range(10):
        lines += [f"Person_{k}_{i} {i % 7 + 1} {i % 5 + 2}" for i in range(300)]
        lines += [f"Person_{k}_{i} {i % 3 + 1} Other_{k}_{i} {i % 4 + 1}" for i in range(300)]
    pl = read_lfw_pairs(write(tmp_path / "pairs.txt", "\n".join(lines) + "\n"))
    assert len(pl) == 6000 and pl.n_folds == 10 and pl.pairs_per_class == 300
    assert np.bincount(pl.fold).tolist() == [600] * 10
    assert pl.same.sum() == 3000
    assert pl.same[:300].all() and not pl.same[300:600].any() and pl.same[600:900].all()
    assert pl.fold[599] == 0 and pl.fold[600] == 1 and pl.fold[-1] == 9
    assert pl[5999] == ("Person_9_299", 299 % 3 + 1, "Other_9_299", 299 % 4 + 1)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("2 x\n", 1),
        ("1 1\nAlice 1\nA 1 B 2\n", 2),  # too few fields
        ("1 1\nAlice one 2\nA 1 B 2\n", 2),  # not an integer
        ("1 1\nAlice 0 2\nA 1 B 2\n", 2),  # image numbers are 1-based
        ("1 1\nA 1 B 2\nAlice 1 2\n", 2),  # different pair where a same pair belongs
        ("1 1\nAlice 1 2\n", 2),  # file too short
        ("1 1\nAlice 1 2\nA 1 B 2\nC 1 D 2\n", 4),  # file too long
    ],
)
def test_malformed_pairs_file_names_line(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(DatasetError, match=f"line {line}:"):
        read_lfw_pairs(write(tmp_path / "pairs.txt", text))


def test_missing_pairs_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_lfw_pairs(tmp_path / "absent.txt")


# ------------------------------------------------------------------------------------ k-fold verification


def test_two_fold_accuracy_by_hand(tmp_path: Path) -> None:
    pl = read_lfw_pairs(write(tmp_path / "pairs.txt", SMALL_PAIRS))
    res = verification_accuracy(SMALL_SCORES, pl.same, pl.fold)
    # Fold 0 is tested with the threshold that separates fold 1 perfectly: (0.4 + 0.5) / 2 -> 5/6 right.
    # Fold 1 is tested with fold 0's perfect threshold (0.25 + 0.3) / 2 -> 4/6 right (0.4, 0.35 accepted).
    assert res.fold_thresholds == pytest.approx([0.45, 0.275])
    assert res.fold_accuracies == pytest.approx([5 / 6, 4 / 6])
    assert res.accuracy == pytest.approx(0.75)
    assert res.accuracy_std == pytest.approx(1 / 12)
    # On all 12 pairs, 0.45 gets 11/12 right (only the same pair at 0.3 is lost).
    assert res.threshold == pytest.approx(0.45)
    assert res.n_pairs == 12 and res.n_same == 6
    d = res.to_dict()
    json.dumps(d)
    assert d["n_different"] == 6 and d["accuracy"] == pytest.approx(0.75)


def test_threshold_tie_takes_lowest_candidate() -> None:
    # Training folds (fold 1): scores 0.1 d, 0.2 d, 0.3 s, 0.6 d, 0.8 s, 0.9 s: 5/6 at both 0.25 and 0.7.
    scores = np.array([0.5, 0.0, 0.9, 0.8, 0.3, 0.1, 0.2, 0.6])
    same = np.array([True, False, True, True, True, False, False, False])
    fold = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    res = verification_accuracy(scores, same, fold)
    assert res.fold_thresholds[0] == pytest.approx(0.25)


def test_perfect_separation_and_end_candidates() -> None:
    same = np.array([True, False] * 10)
    scores = np.where(same, 0.9, 0.1) + np.linspace(0, 0.01, 20)
    res = verification_accuracy(scores, same, np.arange(20) % 5)
    assert res.accuracy == 1.0 and res.accuracy_std == 0.0
    assert res.auc == 1.0 and res.tar_at_far_1e3 == 1.0
    # Scores that never separate: the best rule is to accept everything (lower end candidate) or nothing.
    flat = verification_accuracy(np.full(8, 0.5), np.array([1, 1, 1, 0] * 2), np.arange(8) // 4)
    assert flat.threshold == pytest.approx(-0.5) and flat.accuracy == pytest.approx(0.75)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=4, max_size=30))
def test_fold_thresholds_match_brute_force(rows: list[tuple[int, bool]]) -> None:
    scores = np.array([r[0] / 6 for r in rows])
    same = np.array([r[1] for r in rows])
    fold = np.arange(len(rows)) % 2
    for k in (0, 1):
        train = fold != k
        if same[train].all() or not same[train].any():
            return
    res = verification_accuracy(scores, same, fold)
    for k in (0, 1):
        s, y = scores[fold != k], same[fold != k]
        candidates = np.r_[s.min() - 1, (np.unique(s)[1:] + np.unique(s)[:-1]) / 2, s.max() + 1]
        brute = [np.mean((s >= t) == y) for t in candidates]  # one threshold at a time
        assert np.mean((s >= res.fold_thresholds[k]) == y) == pytest.approx(max(brute))
        assert res.fold_thresholds[k] == pytest.approx(candidates[int(np.argmax(brute))])
    # AUC equals the probability that a same pair outscores a different one (ties count one half).
    diff = scores[same][:, None] - scores[~same][None, :]
    assert res.auc == pytest.approx(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def test_verification_input_errors() -> None:
    with pytest.raises(InvalidInputError):
        verification_accuracy([0.1, 0.2], [True, True], [0, 1])  # one class only
    with pytest.raises(InvalidInputError):
        verification_accuracy([0.1, 0.2], [True, False], [0, 0])  # one fold only
    with pytest.raises(InvalidInputError):
        verification_accuracy([0.1, np.nan], [True, False], [0, 1])


# -------------------------------------------------------------------------------------------- ROC, TAR@FAR

ROC_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
ROC_SAME = np.array([True, False, True, True, False, False, True, False])


def test_roc_by_hand() -> None:
    far, tar, thr = roc(ROC_SCORES, ROC_SAME)
    assert thr[0] == np.inf and thr[1:].tolist() == ROC_SCORES.tolist()
    assert tar.tolist() == [0, 0.25, 0.25, 0.5, 0.75, 0.75, 0.75, 1, 1]
    assert far.tolist() == [0, 0, 0.25, 0.25, 0.25, 0.5, 0.75, 0.75, 1]
    assert np.trapezoid(tar, far) == pytest.approx(11 / 16)  # = P(score_same > score_different)


def test_roc_merges_tied_scores() -> None:
    far, tar, thr = roc([0.5, 0.5, 0.2, 0.9], [True, False, True, False])
    assert thr.tolist() == [np.inf, 0.9, 0.5, 0.2]
    assert far.tolist() == [0, 0.5, 1, 1] and tar.tolist() == [0, 0, 0.5, 1]


def test_tar_at_far_by_hand() -> None:
    assert tar_at_far(ROC_SCORES, ROC_SAME, 0.0) == (0.25, 0.9)
    assert tar_at_far(ROC_SCORES, ROC_SAME, 0.25) == (0.75, 0.6)
    assert tar_at_far(ROC_SCORES, ROC_SAME, 0.5) == (0.75, 0.6)  # same TAR, the stricter threshold
    assert tar_at_far(ROC_SCORES, ROC_SAME, 1.0) == (1.0, 0.3)
    # The best-scored pair is a different one: no FAR below 1/2 accepts anybody.
    assert tar_at_far([0.9, 0.5], [False, True], 0.1) == (0.0, math.inf)
    with pytest.raises(InvalidInputError):
        tar_at_far(ROC_SCORES, ROC_SAME, 1.5)


def test_cosine_scores() -> None:
    a = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [-3.0, -4.0], [0.0, 5.0]])
    assert cosine_scores(a, b) == pytest.approx([1.0, -1.0, math.sqrt(0.5)])
    with pytest.raises(InvalidInputError):
        cosine_scores(np.zeros((1, 2)), np.ones((1, 2)))
    with pytest.raises(InvalidInputError):
        cosine_scores(np.ones((2, 3)), np.ones((3, 3)))


# -------------------------------------------------------------------------------- identity pair generation

IDS = ["b", "a", "b", "c", "a", "b", "d", "b", "c", "e", "e", "a"]  # b:4, a:3, c:2, e:2, d:1


def _brute_same(ids: list) -> set[tuple[int, int]]:
    return {(i, j) for i, j in combinations(range(len(ids)), 2) if ids[i] == ids[j]}


def test_identity_pairs_counts_and_validity() -> None:
    a, b, same, fold = make_identity_pairs(IDS, seed=3, n_folds=4)
    n_pos = 6 + 3 + 1 + 1  # C(4,2) + C(3,2) + C(2,2) + C(2,2)
    assert same.sum() == n_pos and (~same).sum() == n_pos
    assert set(zip(a[same].tolist(), b[same].tolist(), strict=True)) == _brute_same(IDS)
    assert np.all(a < b)
    pairs = list(zip(a.tolist(), b.tolist(), strict=True))
    assert len(set(pairs)) == len(pairs)  # no pair twice
    ids = np.array(IDS)
    assert np.all(ids[a[~same]] != ids[b[~same]])
    # Balanced folds: 11 same and 11 different pairs dealt into 4 folds -> 3,3,3,2 of each class.
    assert sorted(np.bincount(fold[same], minlength=4).tolist()) == [2, 3, 3, 3]
    assert np.bincount(fold[same], minlength=4).tolist() == np.bincount(fold[~same], minlength=4).tolist()
    assert np.all(np.diff(fold) >= 0)  # ordered by fold


def test_identity_pairs_determinism() -> None:
    ids = np.repeat(np.arange(30), 5)
    first = make_identity_pairs(ids, seed=7)
    again = make_identity_pairs(ids, seed=7)
    other = make_identity_pairs(ids, seed=8)
    for x, y in zip(first, again, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(first[0], other[0]) or not np.array_equal(first[1], other[1])
    assert first[2].sum() == 30 * 10 and len(first[0]) == 600
    assert np.bincount(first[3][first[2]]).tolist() == [30] * 10


@pytest.mark.parametrize("ids", [[0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1]])
def test_identity_pairs_different_pairs_uniform(ids: list[int]) -> None:
    # First case: 3 of 12 different pairs (random draws); second: 4 of 6 (enumerate and choose).
    counts: Counter[tuple[int, int]] = Counter()
    runs = 600
    for seed in range(runs):
        a, b, same, _ = make_identity_pairs(ids, seed=seed, n_folds=1)
        counts.update(zip(a[~same].tolist(), b[~same].tolist(), strict=True))
    candidates = {(i, j) for i, j in combinations(range(len(ids)), 2) if ids[i] != ids[j]}
    assert set(counts) == candidates
    k = len(_brute_same(ids))
    expected = runs * k / len(candidates)
    sd = math.sqrt(runs * (k / len(candidates)) * (1 - k / len(candidates)))
    assert all(abs(c - expected) < 5 * sd for c in counts.values())


def test_identity_pairs_errors() -> None:
    with pytest.raises(InvalidInputError, match="same-identity"):
        make_identity_pairs([1, 2, 3, 4])
    with pytest.raises(InvalidInputError, match="different-identity"):
        make_identity_pairs([0, 0, 0, 0, 1], n_folds=1)  # 6 same pairs, 4 different ones


# ------------------------------------------------------------------------------------------------ landmarks


def _face(dx: float = 0.0) -> np.ndarray:
    """A face with eyes 10 px apart."""
    return np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [1.0, 9.0], [9.0, 9.0]]) + dx


def test_nme_by_hand() -> None:
    gt = np.stack([_face(), _face(100.0)])
    offsets = np.array([[0.6, 0.8], [-1.0, 0.0], [0.0, 1.0], [0.8, -0.6], [0.0, -1.0]])  # all of length 1
    pred = gt + np.stack([offsets, 2 * offsets])
    assert landmark_errors(pred, gt) == pytest.approx([0.1, 0.2])
    assert landmark_point_errors(pred, gt)[1] == pytest.approx([0.2] * 5)
    # Only the nose off by 5 px: mean over points 5/5 = 1 px = 0.1 of the inter-ocular distance.
    pred2 = gt.copy()
    pred2[:, 2, 0] += 5.0
    assert landmark_errors(pred2, gt) == pytest.approx([0.1, 0.1])


def test_nme_guards() -> None:
    gt = _face()[None].copy()
    gt[0, 1] = gt[0, 0]
    with pytest.raises(InvalidInputError, match="inter-ocular"):
        landmark_errors(gt, gt)
    with pytest.raises(InvalidInputError):
        landmark_errors(np.zeros((2, 5, 2)), np.zeros((2, 68, 2)))


def test_landmark_metrics_by_hand() -> None:
    res = landmark_metrics(np.array([0.02, 0.05, 0.12, 0.2]))
    assert res.mean_nme == pytest.approx(0.0975)
    assert res.failure_rate == 0.5  # 0.12 and 0.2 exceed 0.10
    assert res.ced_x[0] == 0.0 and res.ced_x[-1] == pytest.approx(0.2) and len(res.ced_x) == 201
    assert np.all(np.diff(res.ced_y) >= 0) and res.ced_y[-1] == 1.0
    assert res.ced_y[50] == 0.5  # x = 0.05: errors 0.02 and 0.05
    # Area under the CED up to 0.1 = mean(max(0, 0.1 - e)) / 0.1 = (0.08 + 0.05) / 4 / 0.1.
    assert res.ced_auc == pytest.approx(0.325)
    d = res.to_dict()
    json.dumps(d)
    assert d["mean_nme_percent"] == pytest.approx(9.75) and d["failure_rate_percent"] == 50.0
    assert res.per_point_nme is None


def test_landmark_metrics_per_point() -> None:
    point_errors = np.array([[0.01, 0.02, 0.03, 0.04, 0.05], [0.03, 0.04, 0.05, 0.06, 0.07]])
    res = landmark_metrics(point_errors)
    assert res.per_point_nme == pytest.approx([0.02, 0.03, 0.04, 0.05, 0.06])
    assert res.mean_nme == pytest.approx(0.04) and res.failure_rate == 0.0
    assert res.to_dict()["per_point_nme_percent"]["nose"] == pytest.approx(4.0)
    rng = np.random.default_rng(0)
    y = landmark_metrics(rng.exponential(0.05, 500)).ced_y
    assert np.all(np.diff(y) >= 0)


# ----------------------------------------------------------------------------------------------- attributes


def test_attribute_accuracy_with_mask() -> None:
    probs = np.array([[0.9, 0.2, 0.7], [0.4, 0.6, 0.1], [0.8, 0.3, 0.5], [0.1, 0.9, 0.9]])
    targets = np.array([[1, 0, 1], [1, 0, 0], [0, 0, np.nan], [0, 1, 1]])
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=bool)
    res = attribute_accuracy(probs, targets, ["A", "B", "C"], mask=mask)
    # A: 4 valid, right on rows 0 and 3 -> 0.5; TPR 1/2, TNR 1/2 -> balanced 0.5.
    # B: 3 valid negatives, wrong on row 1 -> 2/3; no positive -> balanced = TNR = 2/3.
    # C: 2 valid (row 0 positive right, row 1 negative right) -> 1.0.
    assert res.accuracy == pytest.approx([0.5, 2 / 3, 1.0])
    assert res.balanced_accuracy == pytest.approx([0.5, 2 / 3, 1.0])
    assert res.n_valid.tolist() == [4, 3, 2] and res.n_positive.tolist() == [2, 0, 1]
    assert res.positive_rate[[0, 2]] == pytest.approx([0.5, 1.0]) and math.isnan(res.positive_rate[1])
    assert res.negative_rate == pytest.approx([0.5, 2 / 3, 1.0])
    assert res.mean_accuracy == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    d = res.to_dict()
    json.dumps(d)
    assert d["per_attribute"]["B"]["n"] == 3


def test_attribute_balanced_accuracy_and_empty_attribute() -> None:
    probs = np.array([[0.9, 0.5], [0.9, 0.5], [0.9, 0.5], [0.1, 0.5]])
    targets = np.array([[0, 0], [0, 0], [0, 0], [1, 0]])
    mask = np.array([[1, 0]] * 4, dtype=bool)
    res = attribute_accuracy(probs, targets, ["rare", "unlabelled"], mask=mask)
    assert res.accuracy[0] == 0.0 and res.balanced_accuracy[0] == 0.0
    assert math.isnan(res.accuracy[1]) and math.isnan(res.balanced_accuracy[1])
    assert res.mean_accuracy == 0.0  # the unlabelled attribute is left out of the mean
    assert res.to_dict()["per_attribute"]["unlabelled"]["accuracy"] is None
    # Balanced accuracy differs from accuracy on skewed labels: TPR 1, TNR 1/3.
    probs2 = np.array([[0.9], [0.9], [0.1], [0.9]])
    res2 = attribute_accuracy(probs2, np.array([[1], [0], [0], [0]]), ["x"])
    assert res2.accuracy[0] == 0.5 and res2.balanced_accuracy[0] == pytest.approx(2 / 3)
    with pytest.raises(InvalidInputError):
        attribute_accuracy(probs2, np.array([[1], [-1], [0], [0]]), ["x"])  # CelebA's -1 must be mapped first
    with pytest.raises(InvalidInputError):
        attribute_accuracy(probs2, probs2 > 0.5, ["x", "y"])


def test_classification_accuracy() -> None:
    assert classification_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert classification_accuracy([1, 2, 3, 4], [1, 2, 0, 4], mask=np.array([1, 1, 0, 0], bool)) == 1.0
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert classification_accuracy(logits, [1, 1, 1]) == pytest.approx(2 / 3)
    assert math.isnan(classification_accuracy([1], [1], mask=np.array([False])))


# ---------------------------------------------------------------------------------------------------- plots


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_plots_write_png(tmp_path: Path) -> None:
    far, tar, _ = roc(ROC_SCORES, ROC_SAME)
    _assert_png(plots.plot_roc({"model": (far, tar), "chance": ([0, 1e-3, 1], [0, 1e-3, 1])},
                               tmp_path / "new" / "roc.png", "ROC"))
    lm = landmark_metrics(np.array([0.02, 0.05, 0.12]))
    _assert_png(plots.plot_ced({"m": (lm.ced_x, lm.ced_y)}, tmp_path / "ced.png"))
    _assert_png(plots.plot_pr({"det": ([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], 0.833)}, tmp_path / "pr.png"))
    names = [f"Attribute_{i}" for i in range(40)]
    accs = {"single": np.linspace(0.6, 0.99, 40), "joint": np.linspace(0.65, 0.98, 40)}
    _assert_png(plots.plot_attribute_bars(names, accs, tmp_path / "attr.png"))
    m = np.array([[1.0, -0.3, np.nan], [-0.3, 1.0, 0.2]])
    _assert_png(plots.plot_heatmap(m, ["id", "lm"], ["id", "lm", "attr"], tmp_path / "h.png", "cosines"))
    with pytest.raises(InvalidInputError):
        plots.plot_roc({}, tmp_path / "x.png", "empty")
    with pytest.raises(InvalidInputError):
        plots.plot_attribute_bars(names[:3], accs, tmp_path / "y.png")
    faces = [np.full((32, 32, 3), 40 * k, np.uint8) for k in range(5)]
    _assert_png(plots.plot_image_grid(faces, [f"face {k}" for k in range(5)], tmp_path / "grid.png", "failures", 3))
    with pytest.raises(InvalidInputError):
        plots.plot_image_grid(faces, ["one caption"], tmp_path / "z.png")
    with pytest.raises(InvalidInputError):
        plots.plot_image_grid([np.zeros((32, 32), np.uint8)], ["grey"], tmp_path / "z.png")
