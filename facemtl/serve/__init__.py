"""The HTTP service (``facemtl serve``, the ``[serve]`` extra): the app lives in :mod:`facemtl.serve.app`.

This module holds only the service's settings, free of third-party imports, so the command line can read
them without FastAPI installed; they reach uvicorn's worker processes as JSON in one environment variable.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from facemtl.errors import ConfigError
from facemtl.types import DEFAULT_MIN_FACE

__all__ = ["CONFIG_ENV", "ServeConfig"]

CONFIG_ENV = "FACEMTL_SERVE_CONFIG"
"""Environment variable carrying a :class:`ServeConfig` as JSON to every worker process."""


@dataclass(frozen=True)
class ServeConfig:
    """What one worker needs: model options, the gallery file, the API key and the request limits."""

    db: str = "faces.db"
    api_key: str | None = None  # when set, enroll and delete need it in the X-API-Key header
    model: str | None = None  # None: the shipped model
    detector: str | None = None  # None: the shipped MTCNN
    device: str = "auto"
    min_face: float = DEFAULT_MIN_FACE
    flip: bool = True
    refine: int = 1
    max_upload_bytes: int = 32 << 20  # a whole request body; larger uploads get 413 before any decoding
    max_pixels: int = 50_000_000  # a decoded photo (about 150 MB as RGB); larger ones get 400
    timeout_s: float = 60.0  # a request's work (decode, model, gallery), and the longest wait for upload bytes

    def __post_init__(self) -> None:
        if self.max_upload_bytes < 1 or self.max_pixels < 1 or not self.timeout_s > 0:
            raise ConfigError("max_upload_bytes, max_pixels and timeout_s must be positive; got "
                              f"{self.max_upload_bytes}, {self.max_pixels}, {self.timeout_s}")

    def to_env(self) -> str:
        """The JSON text that :meth:`from_env` reads back in a worker process."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        """The config the parent process put in ``$FACEMTL_SERVE_CONFIG``."""
        text = os.environ.get(CONFIG_ENV)
        if text is None:
            raise ConfigError(f"${CONFIG_ENV} is not set; start the service with facemtl serve")
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"${CONFIG_ENV} is not valid JSON: {exc}") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(values, dict) or not set(values) <= known:
            raise ConfigError(f"${CONFIG_ENV} must be a JSON object with keys among {sorted(known)}")
        return cls(**values)
