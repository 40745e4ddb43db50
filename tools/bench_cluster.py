"""Benchmark face clustering: facemtl's Chinese whispers on facemtl embeddings beside dlib's, same faces, one run.

Real mode (default): every photo of celeba_wild/test (one folder per person: the folder is the truth), its
largest face found by facemtl's detector, described by facemtl's CNN and by dlib's ResNet descriptor (dlib's
shape predictor and chip on the same five detector points). Both embeddings are clustered by both methods
(facemtl at the model's calibrated threshold and several ``k``, dlib's ``chinese_whispers_clustering`` at its
usual 0.5 distance, each threshold converted for the other's embedding: dlib's descriptors are not unit vectors,
so its distance becomes a cosine at their median norm), plus connected components on facemtl's graph, and
scored against the folders: pairwise and BCubed precision / recall / F1 (a face left alone counts as a cluster
of one), clusters found, seconds.

Synthetic mode (``--synthetic N``): N noisy unit vectors around ``--people`` random centres, clustered by
facemtl alone; prints the time (wall clock, and CPU time summed over threads, which on a shared machine says
more) and the memory peak (numpy's allocations traced by tracemalloc, and the process's maximum resident
size), the scale check for large photo collections.

    python tools/bench_cluster.py [--cache /tmp/wild.npz] [--threads 1] [--model RUN/model.pt]
    python tools/bench_cluster.py --synthetic 100000 [--people 5000] [--noise 0.8]
"""
from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.sparse import csgraph

from facemtl.cluster import cluster_embeddings, neighbour_graph

DLIB_DISTANCE = 0.5
"""The Euclidean distance threshold dlib's own face clustering example uses."""


def pair_counts(sizes: np.ndarray) -> int:
    """Unordered pairs inside groups of these sizes."""
    return int((sizes * (sizes - 1) // 2).sum())


def scores(truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pairwise and BCubed precision / recall / F1 of ``labels`` against ``truth``; -1 (alone) counts as a
    cluster of one."""
    labels = np.where(labels < 0, labels.max(initial=0) + 1 + np.arange(len(labels)), labels)
    _, cluster = np.unique(labels, return_inverse=True)
    _, person = np.unique(truth, return_inverse=True)
    _, cell, both = np.unique(np.stack([cluster, person], 1), axis=0, return_inverse=True, return_counts=True)
    n_cluster, n_person = np.bincount(cluster), np.bincount(person)
    same = pair_counts(both)
    p = same / max(pair_counts(n_cluster), 1)
    r = same / max(pair_counts(n_person), 1)
    bp = float(np.mean(both[cell.ravel()] / n_cluster[cluster]))
    br = float(np.mean(both[cell.ravel()] / n_person[person]))
    return {"clusters": len(n_cluster), "P": p, "R": r, "F1": f1(p, r), "bP": bp, "bR": br, "bF1": f1(bp, br)}


def f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def wild_faces(data: Path, threads: int, model: str | None = None) -> dict[str, np.ndarray]:
    """Largest face of every celeba_wild test photo: facemtl embedding, dlib descriptor, person, file."""
    import torch

    from facemtl import FaceAnalyzer
    from facemtl.batch import collect_files, load_batches
    from facemtl.train.teacher import DlibTeacher

    torch.set_num_threads(threads)
    analyzer = FaceAnalyzer(model=model, device="cpu")
    teacher = DlibTeacher()
    files = collect_files([data / "celeba_wild" / "test"])
    keep, ours, theirs = [], [], []
    for paths, images, _ in load_batches(files, 16, "faces"):
        found = [(p, max(fs, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))))
                 for p, fs in zip(paths, analyzer.analyze(images, refine=0)) if fs]
        if found:
            keep += [p for p, _ in found]
            ours += [f.embedding for _, f in found]
            theirs.append(teacher([(str(p), f.landmarks5) for p, f in found])[:, 0])
    return {"files": np.array([str(p) for p in keep]), "person": np.array([p.parent.name for p in keep]),
            "facemtl": np.stack(ours), "dlib": np.concatenate(theirs), "photos": np.array(len(files)),
            "threshold": np.array(analyzer.threshold)}


def dlib_whispers(x: np.ndarray, distance: float) -> np.ndarray:
    import dlib
    return np.asarray(dlib.chinese_whispers_clustering([dlib.vector(v.tolist()) for v in x], distance))


def components(x: np.ndarray, threshold: float) -> np.ndarray:
    return csgraph.connected_components(neighbour_graph(x, threshold), directed=False)[1]


def real(args: argparse.Namespace) -> None:
    if args.cache and args.cache.exists():
        faces = dict(np.load(args.cache))
    else:
        from facemtl.data import data_root
        faces = wild_faces(args.data or data_root(), args.threads, args.model)
        if args.cache:
            np.savez(args.cache, **faces)
    truth, ours, theirs = faces["person"], faces["facemtl"], unit(faces["dlib"])
    cos = float(faces["threshold"])
    norm = float(np.median(np.linalg.norm(faces["dlib"], axis=1)))  # dlib's descriptors are not unit vectors
    as_cos = 1 - DLIB_DISTANCE ** 2 / (2 * norm ** 2)  # dlib's distance between two of median norm, as a cosine
    runs = [(f"facemtl whispers, k={k}", "facemtl", f"cos {cos:.3f}",
             lambda k=k: cluster_embeddings(ours, cos, k=k, min_size=1)) for k in args.k]
    runs += [("connected components, k=20", "facemtl", f"cos {cos:.3f}", lambda: components(ours, cos)),
             ("dlib whispers", "facemtl", f"dist {np.sqrt(2 - 2 * cos):.3f}",
              lambda: dlib_whispers(ours, np.sqrt(2 - 2 * cos))),
             ("dlib whispers", "dlib", f"dist {DLIB_DISTANCE}", lambda: dlib_whispers(faces["dlib"], DLIB_DISTANCE)),
             ("facemtl whispers, k=20", "dlib (unit)", f"cos {as_cos:.3f}",
              lambda: cluster_embeddings(theirs, as_cos, min_size=1))]
    print(f"celeba_wild test: {int(faces['photos'])} photos, {len(truth)} with a face (the largest one each), "
          f"{len(np.unique(truth))} people")
    print("| method | embedding | threshold | clusters | pairwise P | R | F1 | BCubed P | R | F1 | seconds |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method, embedding, threshold, fn in runs:
        labels, seconds = timed(fn)
        s = scores(truth, labels)
        print(f"| {method} | {embedding} | {threshold} | {s['clusters']} | {s['P']:.3f} | {s['R']:.3f} | "
              f"{s['F1']:.3f} | {s['bP']:.3f} | {s['bR']:.3f} | {s['bF1']:.3f} | {seconds:.2f} |")


def synthetic(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((args.people, args.dim)))
    truth = rng.integers(0, args.people, args.synthetic)
    x = unit(centres[truth] + args.noise * rng.standard_normal((args.synthetic, args.dim)) / np.sqrt(args.dim))
    tracemalloc.start()
    cpu = time.process_time()
    labels, seconds = timed(lambda: cluster_embeddings(x, args.threshold, min_size=1))
    cpu = time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    s = scores(truth, labels)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"synthetic: {args.synthetic:,} unit vectors ({args.dim}-D, {x.nbytes / 2**20:.0f} MiB) around "
          f"{args.people:,} centres, noise {args.noise}, threshold {args.threshold}")
    print("| faces | people | clusters | pairwise F1 | BCubed F1 | seconds | CPU seconds | peak traced MiB "
          "| max RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.synthetic:,} | {len(np.unique(truth)):,} | {s['clusters']:,} | {s['F1']:.3f} | {s['bF1']:.3f} | "
          f"{seconds:.1f} | {cpu:.1f} | {peak / 2**20:.0f} | {rss:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="data folder (default $FACEMTL_DATA or ../shared/data)")
    parser.add_argument("--cache", type=Path, default=None,
                        help=".npz keeping the faces' embeddings between runs (one per model)")
    parser.add_argument("--model", default=None, help="facemtl model file (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for detection and the CNN")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 32], help="neighbours per face to try")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N", help="cluster N synthetic embeddings")
    parser.add_argument("--people", type=int, default=5000, help="synthetic: number of centres")
    parser.add_argument("--dim", type=int, default=128, help="synthetic: dimensions")
    parser.add_argument("--noise", type=float, default=0.8, help="synthetic: noise norm relative to the centre")
    parser.add_argument("--threshold", type=float, default=0.357, help="synthetic: cosine threshold")
    args = parser.parse_args()
    synthetic(args) if args.synthetic else real(args)


if __name__ == "__main__":
    main()
