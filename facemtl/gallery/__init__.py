"""A face gallery: named people's embeddings in a SQLite store (``store``), searched by exact cosine
similarity (``search``)."""
from __future__ import annotations

from .search import Identification, Match
from .store import NO_MATCH_SCORE, SCHEMA_VERSION, UNKNOWN, Gallery, GalleryInputError

__all__ = ["NO_MATCH_SCORE", "SCHEMA_VERSION", "UNKNOWN", "Gallery", "GalleryInputError", "Identification", "Match"]
