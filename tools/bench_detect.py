"""Benchmark facemtl's detector against facenet-pytorch's MTCNN (and other offline detectors) on WIDER FACE.

Both MTCNNs use the same weights, thresholds 0.6/0.7/0.7, factor 0.709 and min face 20 on the same decoded
photos, with the same number of torch threads. Per-photo calls of the two are interleaved photo by photo, so
the machine's drift affects both alike. Prints median ms per photo, photos/s, AP (overall and per face-height
band), faces found, the match rate between the two MTCNNs and the speed ratios.

facenet-pytorch 2.6.0 pins an old torch; install it beside ours without its dependencies:
    pip install --no-deps facenet-pytorch==2.6.0 requests tqdm
facemtl's CPU detector tunes glibc's malloc for the whole process (``facemtl.allocator``), so every row runs
under it; ``FACEMTL_MALLOC_TUNING=0`` turns it off. ``--batching`` also times, on one thread, the cascade on
groups of 8 photos per call against the same photos one per call (why a CPU list is run photo by photo).
``--profile N`` runs the torch profiler over the first N photos on one thread for both MTCNNs and prints
where each spends its time (self CPU time by kind of op).
Optional extra rows, when installed: dlib HOG (``pip install face_recognition dlib-bin``), OpenCV Haar
(opencv-python 4.x, which still ships the cascades), mediapipe 0.10.21's full-range detector.

    python tools/bench_detect.py [--data DIR] [--limit N] [--threads 2] [--batch 16] [--batching]
                                 [--profile N] [--json OUT.json] [--plot PR.png]
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from facemtl.allocator import tune_cpu_allocator
from facemtl.data import data_root
from facemtl.detect.detector import FaceDetector
from facemtl.device import torch_threads
from facemtl.data.widerface import read_wider_gt
from facemtl.evaluate.detection import average_precision, detection_report, match_rate
from facemtl.evaluate.plots import plot_pr
from facemtl.io import load_image

Boxes = tuple[np.ndarray, np.ndarray]


def _load(data: Path, limit: int | None) -> tuple[list[str], list[np.ndarray], dict]:
    gt = read_wider_gt(data / "widerface" / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    names = sorted(gt)[:limit] if limit else sorted(gt)
    images = [load_image(data / "widerface" / "WIDER_val" / "images" / n) for n in names]
    return names, images, {n: gt[n] for n in names}


def _facenet() -> Callable[[np.ndarray], Boxes] | None:
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        return None
    mtcnn = MTCNN(keep_all=True, min_face_size=20, thresholds=[0.6, 0.7, 0.7], factor=0.709, device="cpu")

    def run(img: np.ndarray) -> Boxes:
        boxes, probs = mtcnn.detect(img)
        if boxes is None:
            return np.zeros((0, 4)), np.zeros(0)
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(probs, dtype=np.float64)

    return run


def _dlib_hog() -> Callable[[np.ndarray], Boxes] | None:
    try:
        import face_recognition
    except ImportError:
        return None

    def run(img: np.ndarray) -> Boxes:
        locs = face_recognition.face_locations(img, number_of_times_to_upsample=1, model="hog")
        boxes = np.array([[l, t, r, b] for t, r, b, l in locs], dtype=np.float64).reshape(-1, 4)
        return boxes, np.ones(len(boxes))  # HOG gives no usable score: AP is that of one operating point

    return run


def _haar() -> Callable[[np.ndarray], Boxes] | None:
    import cv2
    path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / "haarcascade_frontalface_default.xml"
    if not path.is_file():
        return None
    cascade = cv2.CascadeClassifier(str(path))

    def run(img: np.ndarray) -> Boxes:
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        rects, _, weights = cascade.detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=3, minSize=(20, 20),
                                                      outputRejectLevels=True)
        rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        return boxes, np.asarray(weights, dtype=np.float64).reshape(-1)

    return run


def _mediapipe() -> Callable[[np.ndarray], Boxes] | None:
    try:
        import mediapipe as mp
    except ImportError:
        return None
    detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.3)

    def run(img: np.ndarray) -> Boxes:
        h, w = img.shape[:2]
        res = detector.process(img)
        boxes, scores = [], []
        for det in res.detections or []:
            bb = det.location_data.relative_bounding_box
            boxes.append([bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h])
            scores.append(det.score[0])
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)

    return run


def _ours(detector: FaceDetector) -> Callable[[np.ndarray], Boxes]:
    def run(img: np.ndarray) -> Boxes:
        out = detector.detect_arrays([img])[0]
        return out.boxes.double().numpy(), out.scores.double().numpy()

    return run


def _time_interleaved(runners: dict[str, Callable[[np.ndarray], Boxes]], batched: FaceDetector, batch: int,
                      names: list[str], images: list[np.ndarray]
                      ) -> tuple[dict[str, dict[str, Boxes]], dict[str, list[float]]]:
    """Group by group of ``batch`` photos: every detector on each photo in turn, then facemtl on the whole
    group in one call; each call timed. Interleaving puts the machine's drift on every row alike."""
    key = f"facemtl x{batch}"
    results: dict[str, dict[str, Boxes]] = {k: {} for k in [*runners, key]}
    times: dict[str, list[float]] = {k: [] for k in [*runners, key]}
    for start in range(0, len(images), batch):
        group = list(zip(names[start:start + batch], images[start:start + batch]))
        for name, img in group:
            for k, run in runners.items():
                t0 = time.perf_counter()
                results[k][name] = run(img)
                times[k].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        outs = batched.detect_arrays([img for _, img in group])
        per_photo = (time.perf_counter() - t0) / len(group)
        for (name, _), out in zip(group, outs):
            results[key][name] = (out.boxes.double().numpy(), out.scores.double().numpy())
            times[key].append(per_photo)
    return results, times


def _batching(detector: FaceDetector, images: list[np.ndarray], group: int = 8) -> dict[str, float]:
    """One thread: the cascade on ``group`` photos per call vs the same photos one per call, interleaved group
    by group; mean ms per photo of each."""
    together = alone = 0.0
    with torch_threads(1):
        for start in range(0, len(images), group):
            part = images[start:start + group]
            t0 = time.perf_counter()
            detector.cascade(part)
            t1 = time.perf_counter()
            for img in part:
                detector.cascade([img])
            together, alone = together + t1 - t0, alone + time.perf_counter() - t1
    return {"photos": len(images), "group": group, "batched_ms": together * 1000 / len(images),
            "one_by_one_ms": alone * 1000 / len(images)}


OP_KINDS = (("conv", r"aten::.*convolution.*"), ("gathers", r"aten::(index_select|index|gather)"),
            ("resize", r"aten::(_?adaptive_avg_pool2d|upsample.*|avg_pool2d)"),
            ("max-pool", r"aten::(max_pool2d.*|maximum)"), ("PReLU", r"aten::.*prelu.*"),
            ("NMS", r"torchvision::nms"))
KINDS = (*(kind for kind, _ in OP_KINDS), "other")


def _op_kind(name: str) -> str:
    """The kind of op an aten/torchvision op name belongs to, for the profile table."""
    return next((kind for kind, pattern in OP_KINDS if re.fullmatch(pattern, name)), "other")


def _profile(runners: dict[str, Callable[[np.ndarray], Boxes]], images: list[np.ndarray]) -> dict[str, dict]:
    """One thread, each runner over ``images`` under the torch profiler: ms per photo (profiled) and the share
    of self CPU time of each kind of op."""
    from torch.profiler import ProfilerActivity, profile

    result = {}
    with torch_threads(1):
        for key, run in runners.items():
            run(images[0])
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                for img in images:
                    run(img)
                wall = time.perf_counter() - t0
            shares: dict[str, float] = {}
            for event in prof.key_averages():
                kind = _op_kind(event.key)
                shares[kind] = shares.get(kind, 0.0) + event.self_cpu_time_total
            total = sum(shares.values())
            result[key] = {"ms_per_photo": wall * 1000 / len(images),
                           "shares": {kind: shares.get(kind, 0.0) / total for kind in KINDS}}
    return result


def _print_profile(profiles: dict[str, dict], photos: int) -> None:
    print(f"\nwhere the time goes, one thread, first {photos} photos (torch profiler, % of self CPU time)")
    print(f"{'detector':<18}{'ms/photo':>10}" + "".join(f"{k:>10}" for k in KINDS))
    for key, p in profiles.items():
        print(f"{key:<18}{p['ms_per_photo']:>10.1f}" + "".join(f"{100 * p['shares'][k]:>10.1f}" for k in KINDS))
    print("(ms/photo measured under the profiler, which adds its own overhead; resize: torch's area interpolation,\n"
          " which facemtl replaces by gathers from a summed-area table; max-pool includes facemtl's pooling on views)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=data_root())
    parser.add_argument("--limit", type=int, default=None, help="use the first N photos only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="photos per call for the batched facemtl row")
    parser.add_argument("--batching", action="store_true",
                        help="also time the cascade on groups of 8 photos vs one by one, 1 thread, first 96 photos")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile both MTCNNs on one thread over the first N photos")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write the PR curves (IoU 0.5) of every row as PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names, images, gt = _load(args.data, args.limit)
    detector = FaceDetector(device="cpu", min_face=20, thresholds=(0.6, 0.7, 0.7), factor=0.709)
    runners = {"facemtl": _ours(detector),
               "facemtl edge=pad": _ours(FaceDetector(device="cpu", min_face=20, edge="pad"))}
    for key, make in (("facenet-pytorch", _facenet), ("dlib-hog", _dlib_hog), ("opencv-haar", _haar),
                      ("mediapipe", _mediapipe)):
        run = make()
        if run is not None:
            runners[key] = run
        else:
            print(f"({key}: not installed, row skipped)")
    tuned = tune_cpu_allocator()
    print(f"glibc malloc tuned by facemtl for the whole process (every row): {tuned}")
    for run in runners.values():  # warm-up
        run(images[0])
    results, times = _time_interleaved(runners, detector, args.batch, names, images)

    rows = {}
    for key, res in results.items():
        total, med = sum(times[key]), float(np.median(times[key]))
        rep = detection_report(res, gt)
        rows[key] = {"median_ms": med * 1000, "photos_per_s": len(images) / total,
                     "faces": int(sum(len(b) for b, _ in res.values())), **rep}
    print(f"\nWIDER FACE val, 5-event subset: {len(images)} photos; torch threads {args.threads}")
    header = f"{'detector':<18}{'ms/photo':>10}{'photos/s':>10}{'faces':>7}{'AP':>7}{'<32':>7}{'32-96':>7}{'>96':>7}"
    print(header)
    for key, r in rows.items():
        aps = [r[b]["ap"] for b in ("overall", "<32 px", "32-96 px", ">96 px")]
        print(f"{key:<18}{r['median_ms']:>10.1f}{r['photos_per_s']:>10.2f}{r['faces']:>7d}"
              + "".join(f"{'-':>7}" if v is None else f"{v:>7.3f}" for v in aps))  # None: no face in that band
    print(f"(ms/photo: median per call; for the x{args.batch} row, each call's time / its photos)")
    summary = {"photos": len(images), "threads": args.threads, "malloc_tuned": tuned, "rows": rows}
    if "facenet-pytorch" in results:
        m = match_rate(results["facemtl"], results["facenet-pytorch"], iou=0.9)
        ref = rows["facenet-pytorch"]["photos_per_s"]
        summary["match"] = m.to_dict()
        summary["speedup_single"] = rows["facemtl"]["photos_per_s"] / ref
        summary["speedup_batched"] = rows[f"facemtl x{args.batch}"]["photos_per_s"] / ref
        print(f"\nsame faces (IoU >= 0.9): {summary['match']}")
        print(f"speed vs facenet-pytorch: {summary['speedup_single']:.2f}x one photo per call, "
              f"{summary['speedup_batched']:.2f}x with {args.batch} photos per call")
    if args.batching:
        summary["batching"] = _batching(detector, images[:96])
        b = summary["batching"]
        print(f"\none thread, first {b['photos']} photos: {b['group']} per cascade call "
              f"{b['batched_ms']:.1f} ms/photo, one per call {b['one_by_one_ms']:.1f} ms/photo")
    if args.profile:
        subset = images[:args.profile]
        summary["profile"] = _profile({k: runners[k] for k in ("facemtl", "facenet-pytorch") if k in runners}, subset)
        _print_profile(summary["profile"], len(subset))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=float))
    if args.plot:
        curves = {}
        for key, res in results.items():
            r = average_precision(res, gt)
            curves[key] = (r.recall, r.precision, r.ap)
        plot_pr(curves, args.plot, title=f"WIDER FACE val, 5-event subset ({len(images)} photos), IoU 0.5")
        print(f"PR curves in {args.plot}")


if __name__ == "__main__":
    main()
