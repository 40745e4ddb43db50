"""WIDER FACE ground-truth reader, VOC-style AP (with invalid faces and size bands) and detector agreement."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from facemtl.data.widerface import WiderFaces, read_wider_gt
from facemtl.errors import DatasetError, InvalidInputError
from facemtl.evaluate import (
    average_precision,
    box_iou,
    detection_report,
    match_rate,
)


def faces(boxes: list[list[float]], invalid: list[bool] | None = None) -> WiderFaces:
    """WiderFaces from x1,y1,x2,y2 boxes with zero attribute codes."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    zeros = np.zeros(len(b), dtype=np.int64)
    inv = np.zeros(len(b), dtype=bool) if invalid is None else np.asarray(invalid, dtype=bool)
    return WiderFaces(b, zeros, zeros, zeros, inv, zeros, zeros)


def dets(*rows: tuple[list[float], float]) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, scores) from (box, score) rows."""
    return np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4), np.array([r[1] for r in rows])


# ------------------------------------------------------------------------------------------------ the reader

GT_TEXT = (
    "0--Parade/a.jpg\r\n"
    "2\r\n"
    "10 20 30 40 2 0 0 0 1 0 \r\n"
    "100 50 8 12 0 1 0 1 2 1 \r\n"
    "0--Parade/empty.jpg\r\n"
    "0\r\n"
    "0 0 0 0 0 0 0 0 0 0 \r\n"
    "4--Dancing/b.jpg\r\n"
    "1\r\n"
    "5 5 100 120 0 0 1 0 0 0\r\n"
    "4--Dancing/empty_at_end.jpg\r\n"
    "0\r\n"
    "0 0 0 0 0 0 0 0 0 0\r\n"
)


def test_read_wider_gt_synthetic(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_bytes(GT_TEXT.encode())
    gt = read_wider_gt(path)
    assert list(gt) == ["0--Parade/a.jpg", "0--Parade/empty.jpg", "4--Dancing/b.jpg", "4--Dancing/empty_at_end.jpg"]
    a = gt["0--Parade/a.jpg"]
    assert a.boxes.tolist() == [[10, 20, 40, 60], [100, 50, 108, 62]]
    assert a.invalid.tolist() == [False, True]
    assert a.blur.tolist() == [2, 0] and a.expression.tolist() == [0, 1]
    assert a.occlusion.tolist() == [1, 2] and a.pose.tolist() == [0, 1]
    assert a.heights.tolist() == [40, 12]
    assert len(gt["0--Parade/empty.jpg"]) == 0 and gt["0--Parade/empty.jpg"].boxes.shape == (0, 4)
    assert gt["4--Dancing/b.jpg"].illumination.tolist() == [1]
    assert len(gt["4--Dancing/empty_at_end.jpg"]) == 0


def test_read_wider_gt_zero_count_without_placeholder(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_text("x/a.jpg\n0\nx/b.jpg\n1\n1 2 3 4 0 0 0 0 0 0\nx/c.jpg\n0\n")
    gt = read_wider_gt(path)
    assert [len(v) for v in gt.values()] == [0, 1, 0]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("x/a.jpg\ntwo\n", 2),  # count not an integer
        ("x/a.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n1 2 3 4 0 0 0 0 0\n", 4),  # 9 fields
        ("x/a.jpg\n1\n1 2 3 a 0 0 0 0 0 0\n", 3),  # not a number
        ("x/a.jpg\n1\n1 2 -3 4 0 0 0 0 0 0\n", 3),  # negative width
        ("x/a.jpg\n3\n1 2 3 4 0 0 0 0 0 0\n", 2),  # file ends before 3 faces
        ("x/a.jpg\n0\n0 0 5 0 0 0 0 0 0 0\n", 3),  # count 0 but a real face line
        ("x/a.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n7\n", 4),  # a count where a path belongs
        ("x/a.jpg\n0\nx/a.jpg\n0\n", 3),  # duplicate image
        ("x/a.jpg\n", 1),  # no count
    ],
)
def test_read_wider_gt_malformed_names_line(tmp_path: Path, text: str, line: int) -> None:
    path = tmp_path / "gt.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=f"line {line}:"):
        read_wider_gt(path)


def test_read_wider_gt_real_file(wider_dir: Path) -> None:
    gt = read_wider_gt(wider_dir / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    assert len(gt) == 394
    assert sum(len(v) for v in gt.values()) == 5289
    assert all((wider_dir / "WIDER_val" / "images" / name).is_file() for name in list(gt)[:5])
    # The ground truth scored against itself (valid faces, score = height) is perfect.
    perfect = {k: (v.boxes[~v.invalid], v.heights[~v.invalid]) for k, v in gt.items()}
    report = detection_report(perfect, gt)
    assert report["overall"]["ap"] == 1.0
    # 205 faces are marked invalid; two valid ones have zero width (one all-zero line) and are not scorable.
    assert report["n_invalid_faces"] == 205 and report["n_ignored_faces"] == 207
    assert report["overall"]["n_positives"] == 5289 - 207
    assert sum(report[band]["n_positives"] for band in ("<32 px", "32-96 px", ">96 px")) == 5289 - 207
    assert report["n_faces"] == 5289 and report["n_images"] == 394


# --------------------------------------------------------------------------------------------------- AP


def test_box_iou_by_hand() -> None:
    iou = box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [3, 3, 3, 3]])
    assert iou == pytest.approx(np.array([[1 / 3, 1.0, 0.0, 0.0]]))


def test_perfect_detections_give_ap_one() -> None:
    gt = {"a": faces([[0, 0, 10, 10], [20, 20, 40, 40]]), "b": faces([[5, 5, 50, 50]]), "c": faces([])}
    det = {"a": dets(([0, 0, 10, 10], 0.9), ([20, 20, 40, 40], 0.3)), "b": dets(([5, 5, 50, 50], 0.5))}
    res = average_precision(det, gt)
    assert res.ap == 1.0 and res.tp == 3 and res.fp == 0 and res.n_positives == 3
    assert res.recall[-1] == 1.0 and np.all(res.precision == 1.0)


def test_ap_by_hand_with_envelope() -> None:
    # 2 faces; ranked detections TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    gt = {"a": faces([[0, 0, 10, 10], [20, 0, 30, 10]])}
    det = {"a": dets(([0, 0, 10, 10], 0.9), ([50, 50, 60, 60], 0.8), ([20, 0, 30, 10], 0.7))}
    res = average_precision(det, gt)
    assert res.precision == pytest.approx([1.0, 0.5, 2 / 3])
    assert res.recall == pytest.approx([0.5, 0.5, 1.0])
    assert res.ap == pytest.approx(0.5 * 1 + 0.5 * (2 / 3))
    assert res.tp == 2 and res.fp == 1
    d = res.to_dict()
    json.dumps(d)
    assert d["ap"] == pytest.approx(0.8333, abs=1e-4)


def test_duplicates_are_false_positives_and_ranking_is_global() -> None:
    gt = {"a": faces([[0, 0, 10, 10]]), "b": faces([[0, 0, 10, 10]])}
    det = {
        "a": dets(([0, 0, 10, 10], 0.9), ([0, 0, 10, 9], 0.95)),  # the higher-scored box takes the face
        "b": dets(([0, 0, 10, 10], 0.5)),
    }
    res = average_precision(det, gt)
    # Global ranking: a@0.95 TP, a@0.9 duplicate FP, b@0.5 TP.
    assert res.scores.tolist() == [0.95, 0.9, 0.5]
    assert res.ap == pytest.approx(0.5 + 0.5 * (2 / 3)) and res.fp == 1
    # Below the IoU threshold a detection is a plain FP and the face is missed.
    miss = average_precision({"a": dets(([0, 0, 10, 4], 1.0))}, {"a": faces([[0, 0, 10, 10]])})
    assert miss.ap == 0.0 and miss.fp == 1 and miss.tp == 0


def test_invalid_faces_are_ignored() -> None:
    gt = {"a": faces([[0, 0, 10, 10], [20, 0, 30, 10]], invalid=[False, True])}
    det = {"a": dets(([20, 0, 30, 10], 0.99), ([0, 0, 10, 10], 0.5))}
    res = average_precision(det, gt)
    assert res.ap == 1.0 and res.n_positives == 1 and res.n_ignored == 1 and res.fp == 0
    only_invalid = average_precision({"a": dets(([20, 0, 30, 10], 0.99))}, gt)
    assert only_invalid.ap == 0.0 and only_invalid.n_detections == 0
    # A zero-width face cannot be matched and is not a positive either.
    degenerate = average_precision({"a": dets(([0, 0, 10, 10], 0.5))}, {"a": faces([[0, 0, 10, 10], [5, 5, 5, 9]])})
    assert degenerate.n_positives == 1 and degenerate.ap == 1.0
    # Plain (n, 4) arrays are accepted as ground truth with every face valid.
    plain = average_precision(det, {"a": np.array([[0, 0, 10, 10], [20, 0, 30, 10]])})
    assert plain.n_positives == 2 and plain.ap == 1.0


BAND_GT = {"a": faces([[0, 0, 20, 20], [100, 0, 200, 100]])}  # heights 20 and 100
BAND_DET = {
    "a": dets(
        ([100, 0, 200, 100], 0.95),  # the large face
        ([300, 0, 310, 10], 0.90),  # nothing there, 10 px high
        ([400, 0, 450, 50], 0.85),  # nothing there, 50 px high
        ([0, 0, 20, 20], 0.80),  # the small face
    )
}


def test_height_band_filtering() -> None:
    small = average_precision(BAND_DET, BAND_GT, height_band=(0, 32))
    # Kept: the 10 px FP (0.90), then the small face TP (0.80); the large-face hit and the 50 px FP are ignored.
    assert small.n_positives == 1 and small.n_ignored == 2
    assert small.precision == pytest.approx([0.0, 0.5]) and small.ap == pytest.approx(0.5)
    large = average_precision(BAND_DET, BAND_GT, height_band=(96, math.inf))
    assert large.n_positives == 1 and large.ap == 1.0 and large.fp == 0
    overall = average_precision(BAND_DET, BAND_GT)
    # TP, FP, FP, TP: precision 1, 1/2, 1/3, 1/2 at recall 1/2, 1/2, 1/2, 1 -> AP = 0.5 + 0.5 * 0.5.
    assert overall.ap == pytest.approx(0.75) and overall.n_positives == 2


def test_detection_report_bands() -> None:
    report = detection_report(BAND_DET, BAND_GT)
    json.dumps(report)
    assert report["overall"]["ap"] == pytest.approx(0.75)
    assert report["<32 px"]["ap"] == pytest.approx(0.5) and report["<32 px"]["n_positives"] == 1
    assert report["32-96 px"]["n_positives"] == 0 and report["32-96 px"]["ap"] is None
    assert report["32-96 px"]["fp"] == 1  # the 50 px box on nothing
    assert report[">96 px"]["ap"] == 1.0 and report[">96 px"]["height_band"] == [96.0, None]
    assert report["n_detections"] == 4 and report["n_faces"] == 2


def test_average_precision_errors() -> None:
    with pytest.raises(InvalidInputError, match="missing from the ground truth"):
        average_precision({"images/a": dets(([0, 0, 1, 1], 1.0))}, {"a": faces([[0, 0, 1, 1]])})
    with pytest.raises(InvalidInputError):
        average_precision({"a": (np.zeros((2, 4)), np.zeros(3))}, {"a": faces([[0, 0, 1, 1]])})
    empty = average_precision({}, {"a": faces([[0, 0, 10, 10]])})
    assert empty.ap == 0.0 and empty.tp == 0


# -------------------------------------------------------------------------------------------- match rate


def test_match_rate_by_hand() -> None:
    a = {"x": np.array([[0, 0, 10, 10], [20, 20, 30, 30]])}
    b = {"x": (np.array([[0, 0, 10, 10.5]]), np.array([0.9])), "y": np.array([[5, 5, 9, 9]])}
    res = match_rate(a, b, iou=0.9)  # IoU of the first boxes: 100 / 105 = 0.952
    assert res.n_a == 2 and res.n_b == 2
    assert res.a_in_b == 0.5 and res.b_in_a == 0.5 and res.rate == 0.5
    strict = match_rate(a, b, iou=0.96)
    assert strict.rate == 0.0
    assert match_rate(a, a).rate == 1.0
    assert math.isnan(match_rate({}, {}).rate) and match_rate({}, {}).to_dict()["rate"] is None
