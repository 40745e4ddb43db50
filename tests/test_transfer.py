"""Fine-tuning's start: a model file's weights copied into a new network where they still mean the same."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facemtl._resources import DEFAULT_MODEL, weights_path
from facemtl.errors import ConfigError
from facemtl.model.multitask import ModelConfig, MultiTaskNet, load_model
from facemtl.model.transfer import init_from
from facemtl.train.projection import set_projection

PEOPLE = ["ann", "bob", "cy"]


def tiny(**changes: object) -> MultiTaskNet:
    return MultiTaskNet(ModelConfig(**{"width": 0.25, "feature_dim": 32, "embedding_dim": 16,
                                       "num_identities": 3, **changes}))


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    """A trained-looking model file: random weights, a fitted projection, its identities named in the meta."""
    torch.manual_seed(1)
    model = tiny()
    rng = np.random.default_rng(0)
    set_projection(model, rng.normal(size=16).astype(np.float32), rng.normal(size=(16, 16)).astype(np.float32))
    path = tmp_path / "source.pt"
    model.save(path, meta={"identity_names": json.dumps(PEOPLE)})
    return path


def test_everything_that_means_the_same_is_copied_and_the_projection_is_not(source: Path) -> None:
    torch.manual_seed(2)
    model = tiny()
    done = init_from(model, source, PEOPLE)
    theirs = load_model(source).state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("heads.embedding.") and key.split(".")[-1] in ("center", "projection"):
            assert not value.equal(theirs[key]), key              # plain cosine again: identity and zeros
        else:
            assert value.equal(theirs[key]), key
    assert model.heads["embedding"].projection.equal(torch.eye(16))
    assert done.fresh == ("heads.embedding.center", "heads.embedding.projection")
    assert done.source == load_model(source).model_id


def test_heads_over_other_classes_start_fresh(source: Path) -> None:
    torch.manual_seed(2)
    model = tiny(attribute_names=("Smiling", "Male"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    done = init_from(model, source, ["ann", "bob", "dee"])               # same count, other people
    after = model.state_dict()
    for key in ("heads.identity.fc.weight", "heads.attributes.fc.weight", "heads.attributes.fc.bias"):
        assert key in done.fresh and after[key].equal(before[key])
    shared = [k for k in after if k.startswith("sharing.")]
    assert shared and all(after[k].equal(load_model(source).state_dict()[k]) for k in shared)


def test_a_head_with_a_hidden_layer_starts_fresh_and_travels_in_the_model_file(source: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = tiny(head_hidden={"attributes": 32})       # its output layer (40, 32) has the linear head's shape
    done = init_from(model, source, PEOPLE)
    mine = {k for k in model.state_dict() if k.startswith("heads.attributes.")}
    assert mine == {f"heads.attributes.mlp.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    assert mine <= set(done.fresh) and not mine & set(done.copied)
    model.save(tmp_path / "hidden.pt")
    again = load_model(tmp_path / "hidden.pt")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 255
    with torch.no_grad():
        assert again.config.head_hidden == {"attributes": 32}
        assert torch.equal(again(x)["attributes"], model.eval()(x)["attributes"])
    with pytest.raises(ConfigError, match="head_hidden: {'landmarks': 8}"):
        tiny(head_hidden={"landmarks": 8})


def test_a_split_neck_starts_as_the_shared_neck_so_every_output_is_unchanged(source: Path) -> None:
    torch.manual_seed(2)
    model = tiny(sharing_options={"split_neck": ["identity", "verification"]})
    done = init_from(model, source, PEOPLE)
    theirs = load_model(source)
    set_projection(model, theirs.heads["embedding"].center.numpy(), theirs.heads["embedding"].projection.numpy())
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        mine, before = model.eval()(x), theirs(x)
    assert all(torch.equal(mine[k], before[k]) for k in before)
    assert done.fresh == ("heads.embedding.center", "heads.embedding.projection")
    assert model.sharing.split_neck.fc.weight.data_ptr() != model.sharing.neck.fc.weight.data_ptr()


def test_a_network_of_another_shape_is_refused(source: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not fit the config's \\[model\\].*sharing"):
        init_from(tiny(width=0.5), source, PEOPLE)
    with pytest.raises(ConfigError, match="std"):
        init_from(tiny(std=(0.25, 0.25, 0.25)), source, PEOPLE)
    with pytest.raises(ConfigError, match="no model file"):
        init_from(tiny(), tmp_path / "missing.pt", PEOPLE)


def test_the_shipped_model_starts_a_network_of_its_own_config() -> None:
    shipped = load_model(weights_path(DEFAULT_MODEL))
    names = json.loads(shipped.meta["identity_names"])
    config = ModelConfig.from_dict({**vars(shipped.config), "verification_threshold": None})
    done = init_from(MultiTaskNet(config), "shipped", names)
    assert done.source == shipped.model_id
    assert done.fresh == ("heads.embedding.center", "heads.embedding.projection")
