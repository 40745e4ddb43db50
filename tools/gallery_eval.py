"""Gallery identification on unseen people: enroll 20 CelebA test identities (5 photos each) through the
whole pipeline, then identify every other photo of theirs; prints top-1 (and top-5) accuracy.

Photos are taken in file-name order per identity (the first 5 enrolled, the rest queried); the identities
are the first 20 of the test split in identity order. The database is a fresh SQLite file.

    python tools/gallery_eval.py [--model weights/facemtl-deepid2.pt] [--people 20] [--enroll 5]
"""
from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from facemtl.analyzer import FaceAnalyzer
from facemtl.data import data_root
from facemtl.data.celeba import read_celeba
from facemtl.gallery import Gallery
from facemtl.io import load_image


def largest_embedding(analyzer: FaceAnalyzer, paths: list[Path]) -> list[np.ndarray | None]:
    return analyzer.embed([load_image(p) for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=data_root())
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--enroll", type=int, default=5)
    args = parser.parse_args()
    by_person: dict[int, list[Path]] = defaultdict(list)
    for face in read_celeba(args.data / "celeba", "test"):
        by_person[face.identity].append(face.path)
    people = sorted(by_person)[:args.people]
    analyzer = FaceAnalyzer(model=args.model, device="cpu")
    threshold = analyzer.threshold if analyzer.threshold is not None else -1.0
    with tempfile.TemporaryDirectory() as tmp:
        with Gallery(Path(tmp) / "faces.db", analyzer.model_id, analyzer.model.config.embedding_dim) as gallery:
            queries: list[tuple[str, np.ndarray | None]] = []
            for person in people:
                files = sorted(by_person[person])
                enrolled = [(p, e) for p, e in zip(files[:args.enroll], largest_embedding(analyzer, files[:args.enroll]))
                            if e is not None]
                gallery.enroll(str(person), np.stack([e for _, e in enrolled]), [str(p) for p, _ in enrolled])
                queries += [(str(person), e) for e in largest_embedding(analyzer, files[args.enroll:])]
            found = [(name, e) for name, e in queries if e is not None]
            results = gallery.identify(np.stack([e for _, e in found]), top_k=5, threshold=threshold)
    top1 = np.mean([r.matches[0].name == name for (name, _), r in zip(found, results)])
    top5 = np.mean([name in {m.name for m in r.matches} for (name, _), r in zip(found, results)])
    accepted = np.mean([r.name == name for (name, _), r in zip(found, results)])
    missed = len(queries) - len(found)
    print(f"{len(people)} people enrolled with {args.enroll} photos each; {len(queries)} query photos "
          f"({missed} without a face, counted wrong)")
    print(f"top-1 accuracy {100 * top1 * len(found) / len(queries):.1f}%  "
          f"top-5 {100 * top5 * len(found) / len(queries):.1f}%  "
          f"top-1 and above the threshold {threshold:.3f}: {100 * accepted * len(found) / len(queries):.1f}%")


if __name__ == "__main__":
    main()
