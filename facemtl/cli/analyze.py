"""``facemtl analyze`` and ``facemtl embed``: the whole pipeline over photos and folders."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..batch import Failure, collect_files, load_batches, report
from ..draw import draw_faces, face_labels
from ..outputs import OutputDir
from ..io import VIDEO_SUFFIXES
from .common import analyzer_from_args


def run(args: argparse.Namespace) -> int:
    """Analyze every photo: faces.json, embeddings.npy (rows indexed from faces.json), annotated images; a video
    goes to :func:`run_video` (faces per frame and face tracks)."""
    if any(Path(p).suffix.lower() in VIDEO_SUFFIXES for p in args.paths):
        from .video import run_video                     # here: a photo run never loads the video stack
        return run_video(args)
    out = OutputDir(args.out, force=args.force)
    out.check_free(["faces.json", "embeddings.npy", "failures.json", "annotated"])
    files = collect_files(args.paths, exclude=args.out)
    analyzer = analyzer_from_args(args)
    records, failures, embeddings = [], [], []
    for paths, images, bad in load_batches(files, args.batch_size, "analyze"):
        failures.extend(bad)
        for path, image, faces in zip(paths, images, analyzer.analyze(images) if images else []):
            entries = []
            for face in faces:
                entry = face.to_dict()
                if face.embedding is not None:
                    entry["embedding_index"] = len(embeddings)
                    embeddings.append(face.embedding.astype(np.float32))
                entries.append(entry)
            record = {"file": str(path), "width": int(image.shape[1]), "height": int(image.shape[0]),
                      "faces": entries}
            if not args.no_draw:
                try:
                    drawn = draw_faces(image, [f.box for f in faces], [f.landmarks5 for f in faces],
                                       [face_labels(f, args.top, args.judgements) for f in faces])
                    name = out.unique_name("annotated", path.stem, path.suffix.lower() or ".png")
                    out.write_image(f"annotated/{name}", drawn)
                    record["annotated"] = f"annotated/{name}"
                except OSError as exc:
                    failures.append(Failure(str(path), f"could not write the annotated image: {exc}"))
            records.append(record)
    dim = analyzer.model.config.embedding_dim
    out.write_npy("embeddings.npy", np.stack(embeddings) if embeddings else np.zeros((0, dim), np.float32))
    out.write_json("faces.json", records)
    out.write_json("failures.json", [{"file": f.file, "reason": f.reason} for f in failures])
    n_faces = sum(len(r["faces"]) for r in records)
    print(report(len(records), failures, f"analyzed, {n_faces} face(s), model {analyzer.model_id} on "
                 f"{analyzer.device}, results in {out.root}"), file=sys.stderr)
    return 1 if failures else 0


def run_embed(args: argparse.Namespace) -> int:
    """Embedding of the largest face per photo: embeddings.npy plus embeddings.json mapping file -> row."""
    out = OutputDir(args.out, force=args.force)
    out.check_free(["embeddings.npy", "embeddings.json", "failures.json"])
    files = collect_files(args.paths, exclude=args.out)
    analyzer = analyzer_from_args(args)
    rows, index, failures = [], [], []
    for paths, images, bad in load_batches(files, args.batch_size, "embed"):
        failures.extend(bad)
        for path, emb in zip(paths, analyzer.embed(images) if images else []):
            if emb is None:
                failures.append(Failure(str(path), "no face found"))
                continue
            index.append({"file": str(path), "row": len(rows)})
            rows.append(emb.astype(np.float32))
    dim = analyzer.model.config.embedding_dim
    out.write_npy("embeddings.npy", np.stack(rows) if rows else np.zeros((0, dim), np.float32))
    out.write_json("embeddings.json", {"model": analyzer.model_id, "rows": index})
    out.write_json("failures.json", [{"file": f.file, "reason": f.reason} for f in failures])
    print(report(len(rows), failures, f"embedded, results in {Path(out.root)}"), file=sys.stderr)
    return 1 if failures else 0
