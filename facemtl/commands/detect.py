"""``facemtl detect``: faces.json, aligned crops and annotated copies for photos and folders."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..align import align
from ..batch import Failure, collect_files, load_batches, report
from ..detect.detector import FaceDetector
from ..draw import draw_faces
from ..errors import InvalidInputError
from ..outputs import OutputDir
from ..types import Detection


def run_detect(args: argparse.Namespace) -> int:
    """Detect faces in every photo under ``args.paths``; exit 1 when any photo failed."""
    if args.batch_size < 1:
        raise InvalidInputError("--batch-size must be at least 1")
    out = OutputDir(args.out, force=args.force)
    out.check_free(["faces.json", "failures.json", "crops", "annotated"])
    files = collect_files(args.paths, exclude=args.out)
    detector = FaceDetector(device=args.device, min_face=args.min_face)
    records, failures, n_faces = [], [], 0
    for paths, images, bad in load_batches(files, args.batch_size, "detect"):
        failures.extend(bad)
        for path, image, dets in zip(paths, images, detector.detect(images)):
            records.append(_record(path, image.shape, dets))
            n_faces += len(dets)
            try:
                _write_extras(out, path, image, dets, args.crops, args.draw)
            except OSError as exc:
                failures.append(Failure(str(path), f"could not write outputs: {exc}"))
    out.write_json("faces.json", records)
    if failures:
        out.write_json("failures.json", [{"file": f.file, "reason": f.reason} for f in failures])
    print(report(len(records), failures, f"processed, {n_faces} face(s) found, results in {out.root}"),
          file=sys.stderr)
    return 1 if failures else 0


def _record(path: Path, shape: tuple[int, ...], dets: list[Detection]) -> dict:
    """One faces.json entry."""
    return {"file": str(path), "width": int(shape[1]), "height": int(shape[0]),
            "faces": [d.to_dict() for d in dets]}


def _write_extras(out: OutputDir, path: Path, image, dets: list[Detection], crops: bool, draw: bool) -> None:
    """Aligned crops as crops/<stem>_<k>.png and an annotated copy as annotated/<name>."""
    if crops and dets:
        aligned = align(image, [d.landmarks5 for d in dets])
        stem = out.unique_name("crops", path.stem, "").removesuffix("")
        for k, crop in enumerate(aligned.crops):
            out.write_image(f"crops/{stem}_{k}.png", crop)
    if draw:
        name = out.unique_name("annotated", path.stem, path.suffix.lower() or ".png")
        boxes = [d.box for d in dets]
        points = [d.landmarks5 for d in dets]
        out.write_image(f"annotated/{name}", draw_faces(image, boxes, points))
