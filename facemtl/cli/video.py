"""``facemtl analyze VIDEO``: faces of every N-th frame and face tracks (the analyze command routes videos here)."""
from __future__ import annotations

import argparse
import sys

from ..errors import InvalidInputError
from ..outputs import OutputDir
from ..video import VIDEO_OUTPUTS, analyze_video
from .common import analyzer_from_args


def run_video(args: argparse.Namespace) -> int:
    """faces.json and tracks.json of one video in --out; exit 1 when the video stopped decoding midway (what
    was analysed up to there is written)."""
    if len(args.paths) != 1:
        raise InvalidInputError("analyze takes one video at a time, without photos or folders beside it")
    OutputDir(args.out, force=args.force).check_free(VIDEO_OUTPUTS)  # before the model loads
    analyzer = analyzer_from_args(args)
    result = analyze_video(analyzer, args.paths[0], args.out, every=args.every, batch_size=args.batch_size,
                           force=args.force)
    n_faces = sum(len(f.faces) for f in result.frames)
    print(f"{len(result.frames)} frame(s) analysed of {result.decoded} decoded (every {args.every}), {n_faces} "
          f"face(s) in {len(result.tracks)} track(s), model {analyzer.model_id} on {analyzer.device}, results in "
          f"{args.out}", file=sys.stderr)
    if result.error is not None:
        print(f"facemtl analyze: error: {result.source}: {result.error}", file=sys.stderr)
        return 1
    return 0
