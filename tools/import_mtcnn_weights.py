"""Convert the published MTCNN weights (Zhang et al. 2016, MIT) into ``weights/mtcnn.pt``.

The P/R/O-Net tensors are read from the MIT-licensed facenet-pytorch 2.6.0 wheel file; the package itself
is not imported. Get the wheel with:

    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/wheels
    python tools/import_mtcnn_weights.py /tmp/wheels/facenet_pytorch-2.6.0-py3-none-any.whl
"""
from __future__ import annotations

import argparse
import hashlib
import zipfile
from pathlib import Path

from facemtl.detect.weights import import_facenet_wheel, save_detector_nets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel", type=Path, help="facenet_pytorch-2.6.0-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "weights" / "mtcnn.pt")
    args = parser.parse_args()
    nets = import_facenet_wheel(args.wheel)
    with zipfile.ZipFile(args.wheel) as zf:
        members = {n: hashlib.sha256(zf.read(f"facenet_pytorch/data/{n}.pt")).hexdigest()
                   for n in ("pnet", "rnet", "onet")}
    provenance = {
        "model": "MTCNN (Zhang, Zhang, Li, Qiao: Joint Face Detection and Alignment Using Multitask "
                 "Cascaded Convolutional Networks, IEEE SPL 2016)",
        "licence": "MIT (original MTCNN release and facenet-pytorch)",
        "source": f"{args.wheel.name}: facenet_pytorch/data/{{pnet,rnet,onet}}.pt",
        "wheel_sha256": hashlib.sha256(args.wheel.read_bytes()).hexdigest(),
        "member_sha256": members,
    }
    save_detector_nets(args.out, nets, provenance)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
