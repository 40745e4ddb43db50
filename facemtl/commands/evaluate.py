"""``facemtl evaluate MODEL``: the standard protocols on the real data; prints a table, writes JSON + plots."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analyzer import FaceAnalyzer
from ..data import data_root
from ..evaluate.suite import PARTS, evaluate_model, headline


def run_evaluate(args: argparse.Namespace) -> int:
    analyzer = FaceAnalyzer(model=args.model, device=args.device, flip=not args.no_flip)
    root = Path(args.data) if args.data else data_root()
    results = evaluate_model(analyzer, root, args.cache, args.parts, args.out)
    print(f"model {results['model']} ({args.model})")
    for key, value in headline(results).items():
        print(f"  {key:<24}{value:8.2f}")
    if "celeba" in results:
        print(f"  verification threshold (cosine, chosen on all CelebA test pairs): "
              f"{results['celeba']['verification']['threshold']:.4f}")
    if args.out:
        print(f"full results in {Path(args.out) / 'evaluation.json'}; plots beside it")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on CelebA test, celeba_wild test and MTFL test")
    p.add_argument("model", type=Path, help="model file (.pt) written by facemtl train")
    p.add_argument("--data", default=None, help="data folder (default $FACEMTL_DATA or ../shared/data)")
    p.add_argument("--out", type=Path, default=None, help="folder for evaluation.json and the plots")
    p.add_argument("--json", type=Path, default=None, help="also write the results JSON here")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--cache", type=Path, default=None, help="detection cache folder")
    p.add_argument("--no-flip", action="store_true", help="do not average with the mirrored face")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=run_evaluate)
