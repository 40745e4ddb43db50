"""The ``facemtl`` command line: each sub-command is a thin layer over the Python API.

The parser lives here (argparse only, so ``facemtl --help`` starts fast); each command's work is in
``facemtl.cli.<name>``, imported when it runs.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from ..errors import FacemtlError
from ..types import DEFAULT_MIN_FACE

log = logging.getLogger("facemtl")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help="cpu, cuda, cuda:N or auto (default: %(default)s)")


def _refine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", type=int, default=1, metavar="N",
                   help="re-align each face N times on the network's own landmarks before reading landmarks, "
                        "attributes and pose (default 1; 0 = detector alignment only)")


def _min_face(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-face", type=float, default=DEFAULT_MIN_FACE,
                   help=f"smallest face side in pixels (default {DEFAULT_MIN_FACE:g})")


def _models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None, help="multi-task model file (default: the shipped one)")
    p.add_argument("--detector", type=Path, default=None, help="detector weights (default: the shipped MTCNN)")
    _min_face(p)
    p.add_argument("--no-flip", action="store_true", help="do not average each face with its mirror image")
    _refine(p)
    _device(p)


def _batch_outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="photo files or folders (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="photos per detector call (default 8)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs in OUT")


def _command(name: str, func: str = "run") -> object:
    """Resolve ``facemtl.cli.<name>.<func>`` lazily."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"facemtl.cli.{name}"), func)(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facemtl", description="Face detection, alignment and multi-task "
                                     "face analysis (identity, verification, landmarks, attributes).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("analyze", help="every face in photos: box, landmarks, embedding, attributes, pose")
    _batch_outputs(p)
    p.add_argument("--top", type=int, default=3, help="attributes written beside each face (default 3)")
    p.add_argument("--no-draw", action="store_true", help="skip the annotated images")
    p.add_argument("--judgements", action="store_true",
                   help="also draw CelebA's judgements of looks (attractive, chubby, big nose, ...; always in "
                        "faces.json)")
    p.add_argument("--every", type=_positive_int, default=1, metavar="N",
                   help="videos (.mp4 .avi .mov .mkv .webm): analyse every N-th frame (default 1)")
    _models(p)
    p.set_defaults(run=_command("analyze"))

    p = sub.add_parser("cluster", help="group every face of photos by person: clusters.json, a contact sheet per "
                                       "cluster")
    _batch_outputs(p)
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity that links two faces (default: the one calibrated and stored in the model)")
    p.add_argument("--min-size", type=_positive_int, default=2,
                   help="faces a cluster needs; faces of smaller ones are left alone, cluster -1 (default 2)")
    _models(p)
    p.set_defaults(run=_command("cluster"))

    p = sub.add_parser("detect", help="find faces (box, score, 5 landmarks) in photos or folders")
    _batch_outputs(p)
    p.add_argument("--crops", action="store_true", help="write aligned 112x112 crops to OUT/crops/")
    p.add_argument("--draw", action="store_true", help="write annotated copies to OUT/annotated/")
    _min_face(p)
    _device(p, "cpu")
    p.set_defaults(run=_command("detect", "run_detect"))

    p = sub.add_parser("crop", help="aligned face crops only (OUT/crops/<stem>_<k>.png)")
    _batch_outputs(p)
    p.add_argument("--size", type=_positive_int, default=112, help="crop side in pixels (default 112)")
    _min_face(p)
    _device(p, "cpu")
    p.set_defaults(run=_command("detect", "run_crop"))

    p = sub.add_parser("embed", help="identity embeddings of the largest face of each photo (.npy + index)")
    _batch_outputs(p)
    _models(p)
    p.set_defaults(run=_command("analyze", "run_embed"))

    p = sub.add_parser("verify", help="are the faces in two photos the same person?")
    p.add_argument("photo_a", type=Path)
    p.add_argument("photo_b", type=Path)
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity threshold (default: the one calibrated and stored in the model)")
    _models(p)
    p.set_defaults(run=_command("gallery", "run_verify"))

    p = sub.add_parser("enroll", help="add a person's face(s) to a gallery database")
    p.add_argument("name", help="the person's name")
    p.add_argument("photos", nargs="+", help="photos (or folders) of that person")
    p.add_argument("--db", type=Path, required=True, help="gallery database (SQLite), created if absent")
    _models(p)
    p.set_defaults(run=_command("gallery", "run_enroll"))

    p = sub.add_parser("identify", help="who is this? search a gallery for each face in a photo")
    p.add_argument("photo", type=Path)
    p.add_argument("--db", type=Path, required=True, help="gallery database made by facemtl enroll")
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--threshold", type=float, default=None,
                   help="below this cosine similarity the answer is 'unknown' (default: the model's)")
    _models(p)
    p.set_defaults(run=_command("gallery", "run_identify"))

    p = sub.add_parser("serve", help="HTTP service and web page: analyze, verify, enroll, identify (the [serve] extra)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    p.add_argument("--db", type=Path, default=Path("faces.db"),
                   help="gallery database (SQLite), created if absent (default %(default)s)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="worker processes, each loading the model once (default 1)")
    p.add_argument("--api-key", default=None,
                   help="key the enroll and delete calls must send as X-API-Key (default: $FACEMTL_API_KEY; "
                        "prefer the variable, a command line is visible to other users)")
    p.add_argument("--max-upload-mb", type=float, default=32.0,
                   help="largest request body in MiB; larger uploads get 413 (default 32)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take (default 60)")
    _models(p)
    p.set_defaults(run=_command("serve", "run_serve"))

    p = sub.add_parser("train", help="train (or resume) the multi-task network from a TOML config")
    p.add_argument("--config", required=True, type=Path, help="TOML file with [model] [data] [train] [augment]")
    p.add_argument("--out", type=Path, default=None, help="run folder (overrides out_dir in the config)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (TOML syntax for the value)")
    p.add_argument("--reschedule", action="store_true",
                   help="resume a run with a different train.epochs (shorten or extend it; recorded in the model)")
    p.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune: start from this model file's weights ('shipped': the model installed with "
                        "facemtl); sets train.init")
    p.set_defaults(run=_command("train", "run_train"))

    p = sub.add_parser("teach", help="distillation targets: run the teacher (dlib's face descriptor, the "
                                     "[teacher] extra) once on every training face of a config; resumable")
    p.add_argument("--config", required=True, type=Path, help="the training config whose faces to label")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (as for train), e.g. --set data.utkface=true")
    p.add_argument("--workers", type=_positive_int, default=max(1, (os.cpu_count() or 1)),
                   help="teacher processes (default: one per CPU core)")
    p.set_defaults(run=_command("teach", "run_teach"))

    p = sub.add_parser("tables", help="carry a config's crop tables (and teacher targets) to a machine without the "
                                      "photos: pack them here, unpack them there")
    tables = p.add_subparsers(dest="tables_command", required=True, metavar="pack|unpack")
    q = tables.add_parser("pack", help="pack the tables a config trains on (WebP crops, exact labels)")
    q.add_argument("--config", required=True, type=Path)
    q.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    q.add_argument("--out", required=True, type=Path, help="folder for the archives")
    q.add_argument("--quality", type=int, default=85, help="WebP quality of the crops (default 85)")
    q.add_argument("--force", action="store_true", help="replace existing archives")
    q.set_defaults(run=_command("tables", "run_pack"))
    q = tables.add_parser("unpack", help="write archives into a cache folder as the tables training will look for")
    q.add_argument("archives", type=Path, nargs="+")
    q.add_argument("--root", required=True, help="the data root training will be given (data.root)")
    q.add_argument("--cache", type=Path, default=None, help="cache folder (default $FACEMTL_CACHE or ~/.cache/facemtl)")
    q.add_argument("--force", action="store_true", help="replace tables already in the cache")
    q.set_defaults(run=_command("tables", "run_unpack"))

    p = sub.add_parser("ship", help="fit a trained model's embedding projection and calibrate its verification "
                                    "threshold on people never trained on; write the model ready to use")
    p.add_argument("model", type=Path, help="the trained model file (RUN/model.pt)")
    p.add_argument("out", type=Path, help="the model file to write")
    p.add_argument("--config", type=Path, default=None,
                   help="the run's config: its training identities fit the projection (none without it)")
    p.add_argument("--data", type=Path, default=None, help="data folder (default: $FACEMTL_DATA or ../shared/data)")
    p.add_argument("--shrinkage", type=float, nargs="+", default=None,
                   help="shrinkages to try for the projection (default 0.01 0.03 0.1 0.3)")
    p.add_argument("--val-folders", type=Path, default=None, metavar="DIR",
                   help="calibrate on the pairs of these people instead of CelebA val: never trained on, one "
                        "sub-folder of photos each")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(run=_command("ship", "run_ship"))

    p = sub.add_parser("evaluate", help="evaluate a model on CelebA test, celeba_wild test and MTFL test")
    p.add_argument("model", type=Path, help="model file (.pt) written by facemtl train")
    p.add_argument("--data", default=None, help="data folder (default $FACEMTL_DATA or ../shared/data)")
    p.add_argument("--out", type=Path, default=None, help="folder for evaluation.json and the plots")
    parts = ("celeba", "wild", "mtfl", "utkface")
    p.add_argument("--parts", nargs="+", choices=[*parts, "gallery"], default=list(parts),
                   help="protocols to run (default: all but gallery; utkface: age and gender by group, skipped where "
                        "UTKFace is not staged; gallery: enroll 5 photos of 20 unseen CelebA people, identify "
                        "their other photos)")
    p.add_argument("--cache", type=Path, default=None, help="detection cache folder")
    p.add_argument("--no-flip", action="store_true", help="do not average with the mirrored face")
    _refine(p)
    _device(p)
    p.set_defaults(run=_command("evaluate", "run_evaluate"))

    p = sub.add_parser("export", help="export the shared CNN and the detector nets (ONNX / TorchScript)")
    p.add_argument("model", type=Path, nargs="?", default=None, help="model file (default: the shipped one)")
    p.add_argument("--format", nargs="+", choices=("onnx", "torchscript"), default=["onnx", "torchscript"])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--no-detector", action="store_true", help="export only the shared CNN")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(run=_command("export"))

    p = sub.add_parser("bench", help="time detection and the full pipeline on photos")
    p.add_argument("paths", nargs="+", help="photo files or folders")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    _device(p, "cpu")
    p.set_defaults(run=_command("bench"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 some inputs failed, 2 usage or setup error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except FacemtlError as exc:
        print(f"facemtl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facemtl {args.command}: interrupted", file=sys.stderr)
        return 130

