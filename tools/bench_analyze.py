"""Benchmark the full pipeline (detect + align + shared CNN) on the 394 WIDER FACE photos.

Prints the median ms per photo for detection alone and for the whole pipeline (measured interleaved,
photo by photo), and faces/s of the shared CNN alone on aligned crops at batch 64.

    python tools/bench_analyze.py [--data DIR] [--model weights/facemtl-deepid2.pt] [--threads 2] [--limit N]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from facemtl.analyzer import FaceAnalyzer
from facemtl.batch import collect_files
from facemtl.cli.bench import bench_pipeline, format_bench
from facemtl.data import data_root
from facemtl.io import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=data_root())
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = collect_files([args.data / "widerface" / "WIDER_val" / "images"])[:args.limit]
    images = [load_image(f) for f in files]
    result = bench_pipeline(FaceAnalyzer(model=args.model, device="cpu"), images)
    print(format_bench(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
