"""Gallery identification on people never trained on: enroll a few CelebA test identities through the whole
pipeline (detect -> align -> embed, the largest face of each photo), then identify every other photo of theirs.

Identities are the first ``people`` of the test split in identity order; each one's photos in file-name order,
the first ``enroll`` enrolled and the rest queried. A query photo without a face counts as a wrong answer.
The database is a fresh SQLite file in a temporary folder.
"""
from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..analyzer import FaceAnalyzer
from ..data.celeba import read_celeba
from ..gallery import Gallery
from ..io import load_image


def evaluate_gallery(analyzer: FaceAnalyzer, root: Path, people: int = 20, enroll: int = 5,
                     limit: int | None = None) -> dict[str, Any]:
    """Top-1 / top-5 accuracy, and top-1 above the model's threshold, over the query photos."""
    by_person: dict[int, list[Path]] = defaultdict(list)
    for face in read_celeba(Path(root) / "celeba", "test"):
        by_person[face.identity].append(face.path)
    chosen = sorted(by_person)[:people]
    threshold = analyzer.threshold if analyzer.threshold is not None else -1.0
    queries: list[tuple[str, np.ndarray | None]] = []
    with tempfile.TemporaryDirectory() as tmp, \
            Gallery(Path(tmp) / "faces.db", analyzer.model_id, analyzer.model.config.embedding_dim) as gallery:
        for person in chosen:
            files = sorted(by_person[person])[:limit]
            shots = [(p, e) for p, e in zip(files[:enroll], _embed(analyzer, files[:enroll])) if e is not None]
            if shots:
                gallery.enroll(str(person), np.stack([e for _, e in shots]), [str(p) for p, _ in shots])
            queries += [(str(person), e) for e in _embed(analyzer, files[enroll:])]
        found = [(name, e) for name, e in queries if e is not None]
        answers = gallery.identify(np.stack([e for _, e in found]), top_k=5, threshold=threshold) if found else []
    n = max(len(queries), 1)
    return {"people": len(chosen), "enrolled_per_person": enroll, "queries": len(queries),
            "queries_without_face": len(queries) - len(found),
            "top1_accuracy": sum(r.matches[0].name == name for (name, _), r in zip(found, answers) if r.matches) / n,
            "top5_accuracy": sum(name in {m.name for m in r.matches} for (name, _), r in zip(found, answers)) / n,
            "top1_above_threshold_accuracy": sum(r.name == name for (name, _), r in zip(found, answers)) / n,
            "threshold": float(threshold)}


def _embed(analyzer: FaceAnalyzer, paths: list[Path]) -> list[np.ndarray | None]:
    return analyzer.embed([load_image(p) for p in paths]) if paths else []
