"""``facemtl cluster``: every face of photos and folders grouped by person, with a contact sheet per cluster."""
from __future__ import annotations

import argparse
import sys

from ..batch import report
from ..cluster import cluster_photos, contact_sheet
from ..outputs import OutputDir
from .common import analyzer_from_args


def run(args: argparse.Namespace) -> int:
    """clusters.json (one record per face), sheets/cluster_<k>.jpg, summary.json and failures.json in --out."""
    out = OutputDir(args.out, force=args.force)
    out.check_free(["clusters.json", "summary.json", "failures.json", "sheets"])
    analyzer = analyzer_from_args(args)
    result = cluster_photos(analyzer, args.paths, threshold=args.threshold, min_size=args.min_size,
                            batch_size=args.batch_size, exclude=args.out)
    for k, members in enumerate(result.members()):
        out.write_image(f"sheets/cluster_{k}.jpg", contact_sheet([f.crop for f in members]))
    summary = {"model": analyzer.model_id, **result.summary()}
    out.write_json("clusters.json", [f.to_dict() for f in result.faces])
    out.write_json("summary.json", summary)
    out.write_json("failures.json", [{"file": f.file, "reason": f.reason} for f in result.failures])
    sizes = ", ".join(map(str, summary["sizes"])) or "none"
    print(report(result.photos, result.failures,
                 f"clustered: {summary['faces']} face(s) in {summary['clusters']} cluster(s) (sizes {sizes}), "
                 f"{summary['alone']} left alone; threshold {result.threshold:.3f}, results in {out.root}"),
          file=sys.stderr)
    return 1 if result.failures else 0
