"""``facemtl evaluate MODEL``: the standard protocols on the real data; prints a table, writes JSON + plots."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..analyzer import FaceAnalyzer
from ..data import data_root
from ..evaluate.suite import evaluate_model, headline


def run_evaluate(args: argparse.Namespace) -> int:
    analyzer = FaceAnalyzer(model=args.model, device=args.device, flip=not args.no_flip, refine=args.refine)
    root = Path(args.data) if args.data else data_root()
    results = evaluate_model(analyzer, root, args.cache, args.parts, args.out)
    print(f"model {results['model']} ({args.model})")
    for key, value in headline(results).items():
        print(f"  {key:<24}{value:8.2f}")
    if "verification" in results.get("celeba", {}):
        print(f"  verification threshold (cosine, chosen on all CelebA test pairs): "
              f"{results['celeba']['verification']['threshold']:.4f}")
    if args.out:
        print(f"full results in {Path(args.out) / 'evaluation.json'}; plots beside it")
    return 0
