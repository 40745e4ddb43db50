"""The ``facemtl`` command line: each sub-command is a thin layer over the Python API."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import FacemtlError

log = logging.getLogger("facemtl")


def _add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help="cpu, cuda, cuda:N or auto (default: %(default)s)")


def _detect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="find faces (box, score, 5 landmarks) in photos or folders")
    p.add_argument("paths", nargs="+", help="photo files or folders (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="output folder (faces.json, crops/, annotated/)")
    p.add_argument("--crops", action="store_true", help="write aligned 112x112 crops to OUT/crops/")
    p.add_argument("--draw", action="store_true", help="write annotated copies to OUT/annotated/")
    p.add_argument("--min-face", type=float, default=20.0, help="smallest face side in pixels (default 20)")
    p.add_argument("--batch-size", type=int, default=8, help="photos per detector call (default 8)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs in OUT")
    _add_device(p, "cpu")
    p.set_defaults(run=_run_detect)


def _run_detect(args: argparse.Namespace) -> int:
    from .commands.detect import run_detect
    return run_detect(args)


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train (or resume) the multi-task network from a TOML config")
    p.add_argument("--config", required=True, type=Path, help="TOML file with [model] [data] [train] [augment]")
    p.add_argument("--out", type=Path, default=None, help="run folder (overrides out_dir in the config)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (TOML syntax for the value)")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .commands.train import run_train
    return run_train(args)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    from .commands.evaluate import add_parser
    add_parser(sub)


_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [_detect_parser, _train_parser, _evaluate_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facemtl", description="Face detection, alignment and multi-task "
                                     "face analysis (identity, verification, landmarks, attributes).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _PARSERS:
        add(sub)
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


if __name__ == "__main__":
    sys.exit(main())
