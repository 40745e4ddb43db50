"""``facemtl serve``: the HTTP service and its web page on uvicorn (the ``[serve]`` extra)."""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path

from ..errors import FacemtlError, GalleryError
from ..gallery import Gallery
from ..serve import CONFIG_ENV, ServeConfig

log = logging.getLogger("facemtl")

API_KEY_ENV = "FACEMTL_API_KEY"
APP_FACTORY = "facemtl.serve.app:app_from_env"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_NEEDED = ("fastapi", "uvicorn", "python_multipart", "swagger_ui_bundle")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The service's settings from the command line; the API key falls back to ``$FACEMTL_API_KEY``."""
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    return ServeConfig(
        db=str(args.db), api_key=api_key or None,
        model=None if args.model is None else str(args.model),
        detector=None if args.detector is None else str(args.detector),
        device=args.device, min_face=args.min_face, flip=not args.no_flip, refine=args.refine,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)), timeout_s=args.timeout,
    )


def check_db(path: Path) -> None:
    """Fail before any worker starts when ``path`` cannot hold a gallery (no such folder, a foreign file)."""
    if path.exists() and path.stat().st_size:
        Gallery(path, None, None, create=False).close()
    elif not path.parent.is_dir():
        raise GalleryError(f"cannot create {path}: the folder {path.parent} does not exist")


def run_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted: each of ``--workers`` processes loads the model once and opens the gallery."""
    missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise FacemtlError(f"facemtl serve needs the [serve] extra ({', '.join(missing)} missing): "
                           "pip install 'facemtl[serve]'")
    import uvicorn

    config = config_from_args(args)
    check_db(Path(config.db))
    if args.host not in _LOOPBACK and not config.api_key:
        log.warning("listening on %s with no API key: anyone who reaches it can change the gallery", args.host)
    os.environ[CONFIG_ENV] = config.to_env()
    print(f"facemtl serve: http://{args.host}:{args.port}/ (API docs at /docs), gallery {config.db}, "
          f"{args.workers} worker(s){', API key required to change the gallery' if config.api_key else ''}",
          file=sys.stderr)
    uvicorn.run(APP_FACTORY, factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level="info" if getattr(args, "verbose", False) else "warning", timeout_keep_alive=5)
    return 0
