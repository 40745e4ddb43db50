"""Sharing designs (hard, hierarchical, cross_stitch, shared_private): same outputs, gradients, save/load,
where each head reads from, the identity-mixed cross-stitch, the difference loss and masked samples.

Every model here is tiny (width 0.25, feature_dim 32, batch <= 4) so the file runs in seconds on a CPU.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from facemtl.device import torch_threads
from facemtl.errors import ConfigError
from facemtl.train.gradients import pcgrad_backward
from facemtl.train.losses import landmark_loss, masked_cross_entropy
from facemtl.model.heads import Neck
from facemtl.model.multitask import ModelConfig, MultiTaskNet, load_model
from facemtl.model.sharing import SHARING_DESIGNS, TASKS, CrossStitchUnit, difference_loss, task_groups

DESIGNS = SHARING_DESIGNS.names()
VARIANTS = {"hard_split": ("hard", {"split_neck": ["identity", "verification"]})}
"""Designs with options that change their structure, run through every generic test as designs of their own."""
TRUNKS = [("deepid2", 64), ("resnet", 112)]
FEATURE_DIM = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: one thread is as fast as two and leaves the other core free.
    with torch_threads(1):
        yield


def make(design: str, trunk: str, size: int, tasks: tuple[str, ...] = TASKS, **options) -> MultiTaskNet:
    torch.manual_seed(0)
    design, preset = VARIANTS.get(design, (design, {}))
    return MultiTaskNet(ModelConfig(trunk=trunk, input_size=size, sharing=design, sharing_options={**preset, **options},
                                    num_identities=5, width=0.25, feature_dim=FEATURE_DIM, embedding_dim=16,
                                    tasks=tasks))


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255.0


def perturb(model: nn.Module, seed: int = 2) -> None:
    """Move every parameter and BatchNorm statistic off its initial value (e.g. the zero landmark head)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.mul_(1.0 + torch.rand(m.running_var.shape, generator=gen))


def grads_of(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {name: (None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()}


cases = pytest.mark.parametrize("design", [*DESIGNS, *VARIANTS])
trunks = pytest.mark.parametrize("trunk,size", TRUNKS, ids=[t for t, _ in TRUNKS])


def test_every_design_is_registered():
    assert {"hard", "hierarchical", "cross_stitch", "shared_private"} <= set(DESIGNS)


# ---------------------------------------------------------------- same outputs, gradients, save/load
@cases
@trunks
def test_outputs_do_not_depend_on_the_design(design, trunk, size):
    model = make(design, trunk, size).eval()
    with torch.no_grad():
        out = model(images(2, size))
        features = model.sharing(torch.zeros(2, 3, size, size))
    expected = {"identity": (2, 5), "embedding": (2, 16), "landmarks": (2, 5, 2), "attributes": (2, 40),
                "pose": (2, len(model.config.pose_names)), "age": (2, 101)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(torch.isfinite(v).all() for v in out.values())
    sharing = model.sharing
    assert set(sharing.group_of) == set(TASKS)
    assert set(features) == set(sharing.group_of.values())
    assert sharing.feature_dim == FEATURE_DIM
    assert all(tuple(f.shape) == (2, FEATURE_DIM) for f in features.values())


@cases
@trunks
def test_every_parameter_gets_a_gradient(design, trunk, size):
    model = make(design, trunk, size).train()
    out = model(images(2, size))
    extra = model.sharing.extra_losses()
    (sum(v.float().sum() for v in out.values()) + sum(extra.values(), torch.zeros(()))).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    ids = {id(p) for p in model.parameters()}
    shared, last = model.sharing.shared_parameters(), model.sharing.last_shared_parameters()
    assert shared and last
    assert {id(p) for p in last} <= {id(p) for p in shared} <= ids


@cases
def test_shared_parameters_are_reached_by_every_task(design):
    """Shared parameters get a gradient from every head; for all but cross_stitch they are exactly those."""
    model = make(design, "deepid2", 64).eval()
    out = model(images(2, 64))
    params = [p for p in model.parameters() if p.requires_grad]
    reached = None
    for value in out.values():
        grads = torch.autograd.grad(value.float().sum(), params, retain_graph=True, allow_unused=True)
        hit = {id(p) for p, g in zip(params, grads) if g is not None}
        reached = hit if reached is None else reached & hit
    shared = {id(p) for p in model.sharing.shared_parameters()}
    assert shared <= reached
    if design != "cross_stitch":   # there every column is reached through the units; only the units count
        assert shared == reached - {id(p) for p in model.heads.parameters()}


@cases
@trunks
def test_save_load_round_trip_reproduces_outputs(design, trunk, size, tmp_path):
    model = make(design, trunk, size)
    perturb(model)
    model.eval()
    x = images(3, size)
    with torch.no_grad():
        before = model(x)
    model.save(tmp_path / "m.facemtl")
    loaded = load_model(tmp_path / "m.facemtl")
    assert type(loaded.sharing) is type(model.sharing)
    with torch.no_grad():
        after = loaded(x)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


@cases
def test_pcgrad_runs_on_the_shared_parameters(design):
    model = make(design, "deepid2", 64).eval()
    perturb(model)
    out = model(images(2, 64))
    losses = {"landmarks": landmark_loss(out["landmarks"], torch.rand(2, 5, 2) * 64, torch.ones(2, dtype=torch.bool)),
              "identity": masked_cross_entropy(out["identity"], torch.tensor([0, 3]), torch.ones(2, dtype=torch.bool))}
    pcgrad_backward(losses, {}, model.sharing.shared_parameters())
    assert all(p.grad is not None for p in model.sharing.shared_parameters())


# ---------------------------------------------------------------- hierarchical: who reads which block
@trunks
@pytest.mark.parametrize("read_blocks,expected", [
    (None, {"landmarks": 1, "pose": 1, "attributes": 2, "age": 2, "identity": 3, "verification": 3}),
    ({"landmarks": 0, "attributes": -1, "identity": 2}, {"landmarks": 0, "pose": 1, "attributes": 3, "age": 2,
                                                         "identity": 2, "verification": 3}),
], ids=["default", "custom"])
def test_hierarchical_heads_read_the_configured_block(trunk, size, read_blocks, expected):
    options = {} if read_blocks is None else {"read_blocks": read_blocks}
    model = make("hierarchical", trunk, size, **options).eval()
    block_out: dict[int, torch.Tensor] = {}
    neck_io: list[tuple[list[torch.Tensor], torch.Tensor]] = []
    head_in: dict[str, torch.Tensor] = {}
    hooks = [block.register_forward_hook(lambda m, i, o, b=b: block_out.__setitem__(b, o))
             for b, block in enumerate(model.sharing.trunk.blocks)]
    hooks += [m.register_forward_hook(lambda m, i, o: neck_io.append((i[0], o)))
              for m in model.sharing.modules() if isinstance(m, Neck)]
    hooks += [head.register_forward_hook(lambda m, i, o, name=name: head_in.__setitem__(name, i[0]))
              for name, head in model.heads.items()]
    with torch.no_grad():
        model(images(2, size))
    for h in hooks:
        h.remove()
    task_of = {"identity": "identity", "embedding": "verification", "landmarks": "landmarks",
               "attributes": "attributes", "pose": "pose", "age": "age"}
    for head, features in head_in.items():
        necks = [maps for maps, out in neck_io if out is features]
        assert len(necks) == 1, head                       # the head reads one neck's output ...
        assert len(necks[0]) == 1                          # ... which reads one map ...
        blocks = [b for b, o in block_out.items() if o is necks[0][0]]
        assert blocks == [expected[task_of[head]]], head   # ... the configured block's output
    assert len(neck_io) == len(set(expected.values()))     # tasks reading the same block share a neck


def test_hierarchical_shared_parameters_stop_at_the_lowest_block_read():
    model = make("hierarchical", "deepid2", 64, read_blocks={"landmarks": 2, "pose": 2})
    trunk = model.sharing.trunk
    assert [id(p) for p in model.sharing.shared_parameters()] == [id(p) for p in trunk.blocks[:3].parameters()]
    last_conv = [m for m in trunk.blocks[2].modules() if isinstance(m, nn.Conv2d)][-1]
    assert model.sharing.last_shared_parameters() == [last_conv.weight]


def test_hierarchical_builds_no_block_deeper_than_any_task_reads():
    model = make("hierarchical", "deepid2", 64, tasks=("landmarks", "pose"))
    assert len(model.sharing.trunk.blocks) == 2
    assert set(model.sharing.group_of.values()) == {"block1"}


# ---------------------------------------------------------------- cross-stitch
def test_cross_stitch_units_start_near_the_identity_mix():
    unit = CrossStitchUnit(3, 4, self_weight=0.9)
    assert unit.alpha.shape == (3, 3, 4)
    expected = torch.full((3, 3), 0.05)
    expected.fill_diagonal_(0.9)
    assert torch.allclose(unit.alpha, expected.unsqueeze(-1).expand(3, 3, 4))
    model = make("cross_stitch", "deepid2", 64, self_weight=0.8)
    alpha = model.sharing.units[0].alpha
    assert torch.allclose(alpha[:, :, 0], torch.tensor([[0.8, 0.2], [0.2, 0.8]]))
    assert len(model.sharing.units) == len(model.sharing.columns["geometry"].blocks) - 1
    assert [id(p) for p in model.sharing.special_parameters()] == [id(u.alpha) for u in model.sharing.units]


@trunks
def test_identity_mixed_cross_stitch_equals_the_separate_columns(trunk, size):
    model = make("cross_stitch", trunk, size)
    perturb(model)
    sharing = model.sharing.eval()
    x = images(2, size) / 255.0 - 0.5

    def alone() -> dict[str, torch.Tensor]:
        out = {}
        for group, column in sharing.columns.items():
            maps = column(x)
            out[group] = sharing.necks[group]([maps[b] for b in sharing.read])
        return out

    with torch.no_grad():
        mixed, separate = sharing(x), alone()
        assert not torch.equal(mixed["geometry"], separate["geometry"])   # the initial units do mix
        sharing.fix_identity()
        mixed, separate = sharing(x), alone()
    assert mixed.keys() == separate.keys() == {"geometry", "identity"}
    for group in mixed:
        assert torch.equal(mixed[group], separate[group]), group
    assert sharing.shared_parameters() == []
    assert not any(p.requires_grad for p in sharing.special_parameters())


def test_cross_stitch_with_one_group_is_a_single_column():
    model = make("cross_stitch", "deepid2", 64, tasks=("landmarks", "pose"))
    assert list(model.sharing.columns) == ["geometry"]
    assert torch.equal(model.sharing.units[0].alpha, torch.ones(1, 1, model.sharing.units[0].alpha.shape[-1]))
    with torch.no_grad():
        assert model.eval()(images(1, 64))["landmarks"].shape == (1, 5, 2)


# ---------------------------------------------------------------- groups
def test_task_groups_resolution():
    assert task_groups(None, TASKS) == {"geometry": ["landmarks", "pose"],
                                        "identity": ["identity", "verification", "attributes", "age"]}
    assert task_groups(None, ("landmarks",)) == {"geometry": ["landmarks"]}          # empty group dropped
    assert task_groups({"a": ["landmarks"], "b": ["pose"]}, ("pose", "identity", "landmarks")) == {
        "a": ["landmarks"], "b": ["pose", "identity"]}                               # leftovers: last group
    assert task_groups({"a": ["landmarks"], "b": ["pose"]}, ("landmarks", "identity")) == {
        "a": ["landmarks"], "b": ["identity"]}


# ---------------------------------------------------------------- shared-private and the difference loss
def test_difference_loss_hand_values():
    # columns orthogonal over the batch: shared (+1, +1, -1, -1), private (+1, -1, +1, -1)
    s = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    p = torch.tensor([[2.0], [-3.0], [0.5], [-1.0]])
    assert difference_loss(s, p).item() == 0.0
    # shared rows normalise to (1, 0) and (0, 1), private rows to 1 and 1: S^T P = (1, 1), loss 2 / 2^2
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[1.0], [5.0]])
    assert difference_loss(s, p).item() == pytest.approx(0.5)
    s = torch.tensor([[3.0, 4.0]])
    p = torch.tensor([[1.0, 0.0]])
    assert difference_loss(s, p).item() == pytest.approx(0.6 ** 2 + 0.8 ** 2)   # S^T P = (0.6, 0.8)^T


@trunks
def test_shared_private_difference_loss_is_on_centred_pooled_last_maps(trunk, size):
    model = make("shared_private", trunk, size).train()
    sharing = model.sharing
    assert sharing.extra_losses() == {}                 # nothing before the first forward
    last: dict[str, torch.Tensor] = {}
    hooks = [sharing.shared.blocks[-1].register_forward_hook(lambda m, i, o: last.__setitem__("shared", o))]
    hooks += [t.blocks[-1].register_forward_hook(lambda m, i, o, g=g: last.__setitem__(g, o))
              for g, t in sharing.private.items()]
    model(images(4, size))
    for h in hooks:
        h.remove()
    extra = sharing.extra_losses()
    assert list(extra) == ["difference"]

    def centred(maps: torch.Tensor) -> torch.Tensor:
        v = maps.mean(dim=(2, 3))
        return v - v.mean(dim=0)

    expected = sum(difference_loss(centred(last["shared"]), centred(last[g])) for g in sharing.private) / 2
    assert torch.allclose(extra["difference"], expected)
    assert last["shared"].shape[2:] == last["geometry"].shape[2:]
    assert last["geometry"].shape[1] < last["shared"].shape[1]      # private trunk at half width
    extra["difference"].backward()
    assert sharing.shared.blocks[0][0].weight.grad is not None
    assert all(t.blocks[0][0].weight.grad is not None for t in sharing.private.values())
    assert sharing.shared_parameters() == list(sharing.shared.parameters())


@pytest.mark.parametrize("design", [d for d in DESIGNS if d != "shared_private"])
def test_other_designs_have_no_extra_loss(design):
    model = make(design, "deepid2", 64)
    with torch.no_grad():
        model.eval()(images(1, 64))
    assert model.sharing.extra_losses() == {}


# ---------------------------------------------------------------- masked samples and separate columns
def _landmark_grads(model: MultiTaskNet, x: torch.Tensor, mask: list[bool]) -> tuple[dict, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    target = torch.linspace(10.0, 50.0, 10).view(1, 5, 2).expand(x.shape[0], 5, 2)
    landmark_loss(model(x)["landmarks"], target, torch.tensor(mask)).backward()
    return grads_of(model), x.grad


@cases
@pytest.mark.parametrize("trunk,size", [TRUNKS[0]], ids=[TRUNKS[0][0]])
def test_masked_sample_sends_no_gradient(design, trunk, size):
    """Eval mode (BatchNorm on running statistics): sample b, masked out, changes no gradient at all."""
    model = make(design, trunk, size)
    perturb(model)                        # the landmark head starts at zero, which would hide everything
    model.eval()
    a, b, c = images(1, size, seed=1), images(1, size, seed=2), images(1, size, seed=3) * 0.1
    g_ab, x_grad = _landmark_grads(model, torch.cat([a, b]), [True, False])
    g_ac, _ = _landmark_grads(model, torch.cat([a, c]), [True, False])
    g_a, _ = _landmark_grads(model, a, [True])
    assert torch.count_nonzero(x_grad[1]) == 0 and torch.count_nonzero(x_grad[0]) > 0
    reached = [n for n, g in g_a.items() if g is not None and torch.count_nonzero(g) > 0]
    assert reached
    for name, g in g_ab.items():
        assert (g is None) == (g_ac[name] is None) == (g_a[name] is None), name
        if g is None:
            continue
        assert torch.equal(g, g_ac[name]), name      # what b is does not matter at all
        assert torch.allclose(g, g_a[name], rtol=1e-4, atol=1e-7), name   # nor whether it is there


def _geometry_only(model: MultiTaskNet) -> list[tuple[str, nn.Parameter]]:
    sharing = model.sharing
    own = sharing.columns if hasattr(sharing, "columns") else sharing.private
    return list(own["geometry"].named_parameters()) + list(sharing.necks["geometry"].named_parameters())


@pytest.mark.parametrize("design", ["cross_stitch", "shared_private"])
def test_identity_loss_sends_no_gradient_into_the_geometry_group(design):
    model = make(design, "deepid2", 64)
    perturb(model)
    if design == "cross_stitch":
        model.sharing.fix_identity()
    model.train()
    out = model(images(4, 64))
    masked_cross_entropy(out["identity"], torch.tensor([0, 1, 2, 3]), torch.ones(4, dtype=torch.bool)).backward()
    geometry = _geometry_only(model)
    assert geometry
    for name, p in geometry:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
    identity_side = model.sharing.columns["identity"] if design == "cross_stitch" else model.sharing.shared
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in identity_side.blocks[0].parameters())


def test_learned_cross_stitch_units_do_share_gradients():
    model = make("cross_stitch", "deepid2", 64).train()
    out = model(images(2, 64))
    out["identity"].sum().backward()
    assert torch.count_nonzero(model.sharing.columns["geometry"].blocks[0][0].weight.grad) > 0


def test_split_neck_feeds_its_tasks_alone_and_the_trunk_feeds_all():
    model = make("hard_split", "deepid2", 64)
    perturb(model)                                 # the landmark head starts at zero and would pass nothing back
    out = model.train()(images(2, 64))
    sharing = model.sharing
    for name, own, other in [("embedding", sharing.split_neck, sharing.neck), ("landmarks", sharing.neck, sharing.split_neck)]:
        model.zero_grad()
        out[name].float().sum().backward(retain_graph=True)
        assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in other.parameters()), name
        assert all(torch.count_nonzero(p.grad) > 0 for p in own.parameters()), name
        assert torch.count_nonzero(sharing.trunk.blocks[0][0].weight.grad) > 0, name
    assert model.head_group == {"identity": "split", "embedding": "split", "landmarks": "shared",
                                "attributes": "shared", "pose": "shared", "age": "shared"}


@pytest.mark.parametrize("design,options", [("hard", {"split_neck": ["identity"]}),
                                            ("cross_stitch", {"groups": {"a": ["identity"], "b": ["verification"]}})])
def test_identity_on_the_embedding_must_share_the_embeddings_features(design, options):
    with pytest.raises(ConfigError, match="identity reads the verification embedding"):
        MultiTaskNet(ModelConfig(sharing=design, sharing_options=options, num_identities=5, width=0.25,
                                 feature_dim=FEATURE_DIM, identity_from="embedding"))
    make(design, "deepid2", 64, **options)          # reading the features, identity may have a neck of its own


# ---------------------------------------------------------------- bad options
@cases
def test_unknown_option_raises_config_error(design):
    with pytest.raises(ConfigError):
        make(design, "deepid2", 64, no_such_option=1)


@pytest.mark.parametrize("design,options", [
    ("hierarchical", {"read_blocks": {"nose": 1}}),
    ("hierarchical", {"read_blocks": {"landmarks": 4}}),
    ("hierarchical", {"read_blocks": {"landmarks": 1.5}}),
    ("hierarchical", {"read_blocks": [1, 2]}),
    ("cross_stitch", {"groups": {"a": ["nose"]}}),
    ("cross_stitch", {"groups": {"a": ["landmarks"], "b": ["landmarks", "pose"]}}),
    ("cross_stitch", {"groups": {"a.b": ["landmarks"]}}),
    ("cross_stitch", {"groups": {"keys": ["landmarks"]}}),
    ("cross_stitch", {"groups": {}}),
    ("cross_stitch", {"self_weight": 1.5}),
    ("cross_stitch", {"neck_blocks": 0}),
    ("shared_private", {"groups": {"geometry": "landmarks"}}),
    ("shared_private", {"private_width": 0.0}),
    ("shared_private", {"neck_blocks": 5}),
    ("hard", {"split_neck": "verification"}),
    ("hard", {"split_neck": ["nose"]}),
    ("hard", {"split_neck": list(TASKS)}),
])
def test_bad_option_values_raise_config_error(design, options):
    with pytest.raises(ConfigError):
        make(design, "deepid2", 64, **options)
