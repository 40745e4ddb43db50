"""``facemtl bench``: time detection, the full pipeline and the shared CNN alone on given photos."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch

from ..analyzer import FaceAnalyzer
from ..batch import collect_files
from ..detect.detector import FaceDetector
from ..errors import FacemtlError, InvalidInputError
from ..io import load_image


def bench_pipeline(analyzer: FaceAnalyzer, images: Sequence[np.ndarray], cnn_batch: int = 64,
                   repeats: int = 5) -> dict[str, Any]:
    """Median ms per photo for detection alone, for the whole pipeline without and with the analyzer's
    refinement passes (interleaved photo by photo), and faces/s of the shared CNN alone on aligned crops at
    ``cnn_batch`` (with and without mirror)."""
    detector: FaceDetector = analyzer.detector
    analyzer.analyze(images[0])
    det_ms, plain_ms, full_ms, crops = [], [], [], []
    for img in images:
        t0 = time.perf_counter()
        detector.detect_arrays([img])
        det_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        analyzer.analyze(img, refine=0)
        plain_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        faces = analyzer.analyze(img)[0]
        full_ms.append((time.perf_counter() - t0) * 1000)
        crops += [f.crop for f in faces]
    result: dict[str, Any] = {"photos": len(images), "faces": len(crops), "threads": torch.get_num_threads(),
                              "detect_median_ms": float(np.median(det_ms)),
                              "refine_passes": analyzer.refine,
                              "pipeline_refine0_median_ms": float(np.median(plain_ms)),
                              "pipeline_median_ms": float(np.median(full_ms)),
                              "pipeline_photos_per_s": len(images) / (sum(full_ms) / 1000)}
    if crops:
        batch = np.stack([crops[i % len(crops)] for i in range(cnn_batch)])
        for flip in (False, True):
            analyzer.flip = flip
            analyzer.run_crops(batch)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                analyzer.run_crops(batch)
                times.append(time.perf_counter() - t0)
            result[f"cnn_faces_per_s{'_flip' if flip else ''}"] = cnn_batch / float(np.median(times))
        analyzer.flip = True
    return result


def format_bench(r: dict[str, Any]) -> str:
    lines = [f"{r['photos']} photos, {r['faces']} faces, {r['threads']} torch threads",
             f"  detection only        {r['detect_median_ms']:8.1f} ms/photo (median)",
             f"  detect+align+CNN      {r['pipeline_refine0_median_ms']:8.1f} ms/photo (median), no refinement",
             f"  + {r['refine_passes']} refinement pass(es){r['pipeline_median_ms']:8.1f} ms/photo (median), "
             f"{r['pipeline_photos_per_s']:.2f} photos/s"]
    if "cnn_faces_per_s" in r:
        lines.append(f"  shared CNN alone      {r['cnn_faces_per_s']:8.0f} faces/s at batch 64 "
                     f"({r['cnn_faces_per_s_flip']:.0f} with mirror averaging)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    images = []
    for path in collect_files(args.paths):
        try:
            images.append(load_image(path))
        except FacemtlError as exc:
            print(f"skipped {path}: {exc}", file=sys.stderr)
    if not images:
        raise InvalidInputError("no readable photo to benchmark")
    analyzer = FaceAnalyzer(model=args.model, device=args.device)
    print(format_bench(bench_pipeline(analyzer, images)))
    return 0
