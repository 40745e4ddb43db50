"""One registry for what a config names: trunks, sharing designs and task weightings."""
from __future__ import annotations

from pathlib import Path

import pytest

from facemtl.errors import ConfigError
from facemtl.model.backbones import TRUNKS
from facemtl.model.sharing import SHARING_DESIGNS
from facemtl.registry import Registry
from facemtl.train.config import load_config
from facemtl.train.weighting import WEIGHTINGS

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "deepid2.toml"


def test_each_kind_lists_what_it_holds() -> None:
    assert {"deepid2", "resnet"} <= set(TRUNKS.names())
    assert SHARING_DESIGNS.names() == ["cross_stitch", "hard", "hierarchical", "shared_private"]
    assert WEIGHTINGS.names() == ["dwa", "gradnorm", "static", "uncertainty"]


@pytest.mark.parametrize("key,value,kind", [("model.trunk", "vgg", "trunk"), ("model.sharing", "soft", "sharing design"),
                                            ("train.weighting", "equal", "task weighting")])
def test_a_config_naming_an_unknown_block_is_refused_when_read(key: str, value: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown {kind} '{value}'; choose one of"):
        load_config(CONFIG, {key: value})


def test_registering_twice_and_bad_options_are_errors() -> None:
    reg: Registry = Registry("widget")
    reg.register("a")(lambda size: size * 2)
    assert reg.create("a", size=3) == 6
    with pytest.raises(ValueError, match="twice"):
        reg.register("a")(lambda: 0)
    with pytest.raises(ConfigError, match="bad options for widget 'a'"):
        reg.create("a", colour=1)
