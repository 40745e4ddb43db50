"""The command that shipped ``weights/facemtl-deepid2.pt`` before it became ``facemtl ship`` (same arguments);
kept so that the model card's commands still run.

    python tools/ship_model.py runs/deepid2/model.pt weights/facemtl-deepid2.pt --config configs/deepid2.toml
"""
from __future__ import annotations

import sys

from facemtl.cli import main

if __name__ == "__main__":
    sys.exit(main(["ship", *sys.argv[1:]]))
