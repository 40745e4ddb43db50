"""Benchmark one face's identity embedding: facemtl's against dlib's descriptor, same CPU, same run.

Both start from a photo and the face's five detector landmarks (detection is timed elsewhere) and end with
the embedding the toolkit compares: facemtl aligns onto its template and runs the shared CNN on the crop
and its mirror image (as ``FaceAnalyzer`` does); dlib runs its 5-point shape predictor, cuts its 150 px
chip and runs its ResNet descriptor. Rounds alternate between the two; each prints the median ms per face
at batch 1 (one face per call) and batched (all faces of the set in one call), and the ratio.

    python tools/bench_embed.py [--faces 64] [--rounds 5] [--threads 2] [--model weights/facemtl-deepid2.pt]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from facemtl import FaceAnalyzer, detect_faces, load_image
from facemtl.align import align
from facemtl.data import data_root
from facemtl.data.celeba import read_celeba
from facemtl.train.teacher import DlibTeacher


def faces_of(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo, five landmarks) of the first ``count`` CelebA test photos with a face."""
    out = []
    for face in read_celeba(data_root() / "celeba", "test"):
        image = load_image(face.path)
        found = detect_faces([image])[0]
        if found:
            out.append((image, found[0].landmarks5))
        if len(out) == count:
            return out
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faces = faces_of(args.faces)
    analyzer = FaceAnalyzer(model=args.model, device="cpu", flip=True)
    teacher = DlibTeacher()
    size = analyzer.input_size

    def ours(batch: list[tuple[np.ndarray, np.ndarray]]) -> None:
        crops = np.concatenate([align(image, points, size=size).crops for image, points in batch])
        analyzer.run_crops(crops)

    def dlib(batch: list[tuple[np.ndarray, np.ndarray]]) -> None:
        chips = [teacher.chip(image, points) for image, points in batch]
        teacher.net.compute_face_descriptor(chips)

    ours(faces[:2]), dlib(faces[:2])                                       # warm-up
    results: dict[str, dict[str, list[float]]] = {"batch 1": {"facemtl": [], "dlib": []},
                                                  f"batch {len(faces)}": {"facemtl": [], "dlib": []}}
    for _ in range(args.rounds):
        for name, fn in (("facemtl", ours), ("dlib", dlib)):
            results["batch 1"][name].append(1000 * sum(timed(lambda f=f: fn([f])) for f in faces) / len(faces))
            results[f"batch {len(faces)}"][name].append(1000 * timed(lambda: fn(faces)) / len(faces))
    print(f"{len(faces)} CelebA test faces, {args.rounds} rounds, torch threads {args.threads}, "
          f"facemtl with mirror averaging; median ms per face")
    for mode, times in results.items():
        a, b = statistics.median(times["facemtl"]), statistics.median(times["dlib"])
        print(f"{mode:>9}: facemtl {a:7.2f} ms   dlib {b:7.2f} ms   facemtl / dlib = {a / b:.3f}")


if __name__ == "__main__":
    main()
