"""facemtl: face detection, alignment and a jointly trained multi-task face CNN."""
from __future__ import annotations

__version__ = "0.1.0"
