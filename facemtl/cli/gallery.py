"""``facemtl verify``, ``facemtl enroll`` and ``facemtl identify``."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..batch import Failure, collect_files, load_batches, report
from ..errors import FacemtlError, InvalidInputError
from ..gallery import Gallery
from ..io import load_image
from ..types import largest
from .common import analyzer_from_args


def _threshold(args: argparse.Namespace, stored: float | None) -> float:
    if args.threshold is not None:
        return float(args.threshold)
    if stored is None:
        raise InvalidInputError("this model carries no calibrated verification threshold; pass --threshold")
    return float(stored)


def run_verify(args: argparse.Namespace) -> int:
    """Same person or not: cosine similarity of the two photos' largest faces against the threshold."""
    analyzer = analyzer_from_args(args)
    faces = analyzer.analyze([load_image(args.photo_a), load_image(args.photo_b)])
    chosen = []
    for path, found in zip((args.photo_a, args.photo_b), faces):
        face = largest(found)
        if face is None:
            raise InvalidInputError(f"{path}: no face found")
        chosen.append(face)
    threshold = _threshold(args, analyzer.threshold)
    similarity = float(np.dot(chosen[0].embedding, chosen[1].embedding))
    verdict = "same person" if similarity >= threshold else "different people"
    print(f"{verdict}: cosine similarity {similarity:.4f}, threshold {threshold:.4f} "
          f"({'given' if args.threshold is not None else 'calibrated, stored in the model'})")
    return 0


def run_enroll(args: argparse.Namespace) -> int:
    """Enroll the largest face of each photo under NAME; photos without a face are reported."""
    analyzer = analyzer_from_args(args)
    files = collect_files(args.photos)
    embeddings, sources, failures = [], [], []
    for paths, images, bad in load_batches(files, 8, "enroll"):
        failures.extend(bad)
        for path, faces in zip(paths, analyzer.analyze(images) if images else []):
            face = largest(faces)
            if face is None:
                failures.append(Failure(str(path), "no face found"))
                continue
            embeddings.append(face.embedding)
            sources.append(str(path))
    if embeddings:
        with Gallery(args.db, analyzer.model_id, analyzer.model.config.embedding_dim) as gallery:
            gallery.enroll(args.name, np.stack(embeddings), sources)
            total = gallery.people().get(args.name, 0)
        print(f"enrolled {len(embeddings)} face(s) of {args.name} ({total} in {args.db})", file=sys.stderr)
    print(report(len(embeddings), failures, "enrolled"), file=sys.stderr)
    return 1 if failures or not embeddings else 0


def run_identify(args: argparse.Namespace) -> int:
    """Name every face in a photo from the gallery ("unknown" below the threshold)."""
    analyzer = analyzer_from_args(args)
    faces = analyzer.analyze(load_image(args.photo))[0]
    if not faces:
        raise FacemtlError(f"{args.photo}: no face found")
    threshold = _threshold(args, analyzer.threshold)
    with Gallery(args.db, analyzer.model_id, analyzer.model.config.embedding_dim, create=False) as gallery:
        results = gallery.identify(np.stack([f.embedding for f in faces]), top_k=args.top_k, threshold=threshold)
    for k, (face, res) in enumerate(zip(faces, results)):
        box = ", ".join(f"{v:.0f}" for v in face.box)
        others = "; ".join(f"{m.name} {m.score:.3f}" for m in res.matches)
        print(f"face {k} [{box}]: {res.name} ({res.score:.3f})  candidates: {others}")
    return 0
