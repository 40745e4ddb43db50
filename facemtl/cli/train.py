"""``facemtl train --config FILE.toml``: train or resume a multi-task model."""
from __future__ import annotations

import argparse
import tomllib

from ..errors import ConfigError
from ..train.config import load_config
from ..train.trainer import train


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["train.epochs=2", 'model.trunk="resnet"']`` -> {"train.epochs": 2, "model.trunk": "resnet"}."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value
    return out


def run_train(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.set)
    if args.out is not None:
        overrides["out_dir"] = str(args.out)
    if args.init is not None:
        overrides["train.init"] = args.init
    cfg = load_config(args.config, overrides)
    path = train(cfg, reschedule=args.reschedule)
    if path is not None:                            # under torchrun the first process alone writes it
        print(f"model written to {path}")
    return 0
