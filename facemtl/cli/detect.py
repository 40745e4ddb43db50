"""``facemtl detect`` and ``facemtl crop``: faces.json, aligned crops and annotated copies."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..align import align
from ..batch import Failure, collect_files, load_batches, report
from ..detect.detector import FaceDetector
from ..draw import draw_faces
from ..errors import InvalidInputError
from ..outputs import OutputDir
from ..types import Detection


def run_detect(args: argparse.Namespace) -> int:
    """Detect faces in every photo under ``args.paths``; exit 1 when any photo failed."""
    return _run(args, write_json=True, crop_size=112 if args.crops else 0, draw=args.draw)


def run_crop(args: argparse.Namespace) -> int:
    """Only the aligned crops, at ``args.size`` pixels."""
    if args.size < 8:
        raise InvalidInputError("--size must be at least 8")
    return _run(args, write_json=False, crop_size=args.size, draw=False)


def _run(args: argparse.Namespace, write_json: bool, crop_size: int, draw: bool) -> int:
    out = OutputDir(args.out, force=args.force)
    out.check_free((["faces.json"] if write_json else []) + ["failures.json", "crops", "annotated"])
    files = collect_files(args.paths, exclude=args.out)
    detector = FaceDetector(device=args.device, min_face=args.min_face)
    records, failures, n_faces = [], [], 0
    for paths, images, bad in load_batches(files, args.batch_size, "detect"):
        failures.extend(bad)
        for path, image, dets in zip(paths, images, detector.detect(images) if images else []):
            record = _record(path, image.shape, dets)
            n_faces += len(dets)
            try:
                record.update(_write_extras(out, path, image, dets, crop_size, draw))
            except OSError as exc:
                failures.append(Failure(str(path), f"could not write outputs: {exc}"))
            records.append(record)
    if write_json:
        out.write_json("faces.json", records)
    out.write_json("failures.json", [{"file": f.file, "reason": f.reason} for f in failures])
    print(report(len(records), failures, f"processed, {n_faces} face(s) found, results in {out.root}"),
          file=sys.stderr)
    return 1 if failures else 0


def _record(path: Path, shape: tuple[int, ...], dets: list[Detection]) -> dict:
    """One faces.json entry."""
    return {"file": str(path), "width": int(shape[1]), "height": int(shape[0]),
            "faces": [d.to_dict() for d in dets]}


def _write_extras(out: OutputDir, path: Path, image: np.ndarray, dets: list[Detection], crop_size: int,
                  draw: bool) -> dict[str, object]:
    """Aligned crops as crops/<stem>_<k>.png and an annotated copy as annotated/<name>; returns their names."""
    written: dict[str, object] = {}
    if crop_size and dets:
        aligned = align(image, np.stack([d.landmarks5 for d in dets]), size=crop_size)
        stem = out.unique_name("crops", path.stem, "")
        written["crops"] = [f"crops/{stem}_{k}.png" for k in range(len(aligned.crops))]
        for name, crop in zip(written["crops"], aligned.crops):
            out.write_image(name, crop)
    if draw:
        name = out.unique_name("annotated", path.stem, path.suffix.lower() or ".png")
        out.write_image(f"annotated/{name}", draw_faces(image, [d.box for d in dets], [d.landmarks5 for d in dets]))
        written["annotated"] = f"annotated/{name}"
    return written
