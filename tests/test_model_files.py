"""Model and detector weight files: every bad file is refused with a WeightsError that says what is wrong,
no file can run code on load, and a saved model comes back identical.
"""
from __future__ import annotations

import pathlib
import pickle
import shutil
import struct
import zipfile
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from facemtl._resources import weights_path
from facemtl.detect.weights import DETECTOR_FORMAT, load_detector_nets
from facemtl.errors import ConfigError, WeightsError
from facemtl.model.multitask import MODEL_FORMAT, MODEL_VERSION, ModelConfig, MultiTaskNet, load_model
from facemtl.serialization import CHECKSUM_KEY, checksum, save_file

MTCNN = weights_path("mtcnn.pt")
LOADERS = {"load_model": load_model, "load_detector_nets": load_detector_nets}


def tiny_model(seed: int = 0, width: float = 0.25) -> MultiTaskNet:
    torch.manual_seed(seed)
    return MultiTaskNet(ModelConfig(num_identities=5, width=width)).eval()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    tiny_model().save(path, meta={"note": "test"})
    return path


def refused(loader, path: Path) -> str:
    """The message of the WeightsError ``loader(path)`` raises (any other outcome fails the test)."""
    with pytest.raises(WeightsError) as caught:
        loader(path)
    assert type(caught.value) is WeightsError
    message = str(caught.value)
    assert str(path) in message  # every refusal names the file
    return message


def tensor_data_offset(path: Path) -> tuple[int, int]:
    """Start and size of the largest stored tensor record inside a torch zip file."""
    with zipfile.ZipFile(path) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


# ---------------------------------------------------------------- round trip


def test_round_trip_gives_identical_outputs_and_config(model_file: Path) -> None:
    model = tiny_model()
    loaded = load_model(model_file)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.meta == {"note": "test"}
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 255
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert expected.keys() == got.keys() == {"identity", "embedding", "landmarks", "attributes", "pose"}
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_model_id_is_stable_and_names_the_weights(model_file: Path, tmp_path: Path) -> None:
    first, second = load_model(model_file), load_model(model_file)
    assert first.model_id == second.model_id
    assert first.model_id.startswith("deepid2-hard/") and len(first.model_id.split("/")[1]) == 12
    copy = tmp_path / "same.pt"
    tiny_model(seed=0).save(copy, meta={"note": "test"})
    assert load_model(copy).model_id == first.model_id       # same weights and config, same id
    other = tmp_path / "other.pt"
    tiny_model(seed=1).save(other, meta={"note": "test"})
    assert load_model(other).model_id != first.model_id      # different weights, different id


def test_shipped_detector_weights_load() -> None:
    nets = load_detector_nets(MTCNN)
    assert set(nets) == {"pnet", "rnet", "onet"}
    assert all(not net.training for net in nets.values())
    assert all(not p.requires_grad for net in nets.values() for p in net.parameters())


# ---------------------------------------------------------------- refusals


def test_plain_state_dict_is_not_a_facemtl_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(tiny_model().state_dict(), path)
    for loader in LOADERS.values():
        assert "format" in refused(loader, path)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_missing_file(loader: str, tmp_path: Path) -> None:
    assert "no such file" in refused(LOADERS[loader], tmp_path / "absent.pt")
    assert "no such file" in refused(LOADERS[loader], tmp_path)  # a folder is not a file either


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_empty_and_garbage_files(loader: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    refused(LOADERS[loader], empty)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 this is not really a zip file" * 10)
    refused(LOADERS[loader], garbage)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.01])
def test_truncated_model_file(model_file: Path, tmp_path: Path, fraction: float) -> None:
    raw = model_file.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(raw[:int(len(raw) * fraction)])
    refused(load_model, cut)


def test_truncated_detector_file(tmp_path: Path) -> None:
    raw = MTCNN.read_bytes()
    cut = tmp_path / "mtcnn-cut.pt"
    cut.write_bytes(raw[:len(raw) // 2])
    refused(load_detector_nets, cut)


def test_byte_flipped_inside_tensor_data_fails_checksum(model_file: Path, tmp_path: Path) -> None:
    start, size = tensor_data_offset(model_file)
    raw = bytearray(model_file.read_bytes())
    raw[start + size // 2] ^= 0x10
    damaged = tmp_path / "flipped.pt"
    damaged.write_bytes(bytes(raw))
    torch.load(damaged, weights_only=True)  # the zip itself is still readable: only the checksum can tell
    assert "checksum" in refused(load_model, damaged)


def test_modified_tensor_without_new_checksum(model_file: Path, tmp_path: Path) -> None:
    body = torch.load(model_file, weights_only=True)
    assert body[CHECKSUM_KEY] == checksum(body)
    key = next(k for k, v in body["state_dict"].items() if v.is_floating_point() and v.numel() > 10)
    body["state_dict"][key].view(-1)[3] += 1e-3
    damaged = tmp_path / "modified.pt"
    torch.save(body, damaged)
    assert "checksum" in refused(load_model, damaged)


def test_modified_detector_tensor_without_new_checksum(tmp_path: Path) -> None:
    body = torch.load(MTCNN, weights_only=True)
    body["state_dicts"]["onet"][next(iter(body["state_dicts"]["onet"]))].view(-1)[0] *= -1
    damaged = tmp_path / "mtcnn-modified.pt"
    torch.save(body, damaged)
    assert "checksum" in refused(load_detector_nets, damaged)


@pytest.mark.parametrize("version", [99, MODEL_VERSION + 1, 0, -1, "1", 1.0, None])
def test_unsupported_format_version(tmp_path: Path, version: object) -> None:
    body = {"format": MODEL_FORMAT, "format_version": version, "config": asdict(ModelConfig(num_identities=5)),
            "state_dict": {}}
    body[CHECKSUM_KEY] = checksum(body)
    path = tmp_path / "future.pt"
    torch.save(body, path)
    message = refused(load_model, path)
    assert "version" in message and repr(version) in message and f"1..{MODEL_VERSION}" in message


def test_detector_file_given_to_load_model() -> None:
    assert f"holds a '{DETECTOR_FORMAT}' file" in refused(load_model, MTCNN)


def test_model_file_given_to_load_detector_nets(model_file: Path) -> None:
    assert f"holds a '{MODEL_FORMAT}' file" in refused(load_detector_nets, model_file)


def test_state_dict_that_does_not_fit_the_config(tmp_path: Path) -> None:
    half = tiny_model(width=0.5)
    config = dict(asdict(half.config), width=1.0)
    path = tmp_path / "mismatch.pt"
    save_file({"config": config, "state_dict": half.state_dict(), "meta": {}}, path, MODEL_FORMAT, MODEL_VERSION)
    message = refused(load_model, path)
    assert "does not match" in message and "size mismatch" in message


@pytest.mark.parametrize("config,payload", [
    ({"trunk": "no-such-trunk"}, {}),
    ({"sharing": "no-such-design"}, {}),
    ({"unknown_option": 1}, {}),
    ({"tasks": ["no-such-task"]}, {}),
    ({"dropout": 2.0}, {}),                 # nn.Dropout raises ValueError: escaped load_model before the fix
    ({}, {"config": None}),
    ({}, {"state_dict": None}),
    ({}, {"state_dict": {"heads.pose.weight": torch.zeros(2)}}),
    ({}, {"state_dict": torch.zeros(2)}),
], ids=["trunk", "sharing", "unknown-option", "task", "dropout", "config-none", "state-none", "state-partial",
        "state-tensor"])
def test_checksummed_model_file_with_bad_content(tmp_path: Path, config: dict, payload: dict) -> None:
    model = tiny_model()
    body = {"config": dict(asdict(model.config), **config), "state_dict": model.state_dict(), "meta": {}}
    body.update(payload)
    path = tmp_path / "bad.pt"
    save_file(body, path, MODEL_FORMAT, MODEL_VERSION)
    assert "does not match" in refused(load_model, path)


@pytest.mark.parametrize("state_dicts", [None, "text", [1, 2], {"pnet": torch.zeros(3)}, {}],
                         ids=["none", "str", "list", "tensor", "empty"])
def test_checksummed_detector_file_with_bad_content(tmp_path: Path, state_dicts: object) -> None:
    good = torch.load(MTCNN, weights_only=True)["state_dicts"]
    if isinstance(state_dicts, dict) and state_dicts:
        state_dicts = dict(good, **state_dicts)
    path = tmp_path / "bad-mtcnn.pt"
    save_file({"state_dicts": state_dicts, "provenance": {}}, path, DETECTOR_FORMAT, 1)
    assert "do not fit" in refused(load_detector_nets, path)


# ---------------------------------------------------------------- malicious pickles


class TouchOnLoad:
    """Unpickling this object creates ``marker``: proof that a file ran code when it was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def write_malicious(kind: str, path: Path, marker: Path) -> None:
    payload = TouchOnLoad(marker)
    if kind == "plain-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif kind == "torch-zip":
        torch.save({"format": MODEL_FORMAT, "format_version": 1, "config": payload, "state_dict": {}}, path)
    elif kind == "torch-legacy":
        torch.save({"format": DETECTOR_FORMAT, "state_dicts": payload}, path, _use_new_zipfile_serialization=False)
    else:  # a facemtl file, checksummed by the library's own saver, with the object inside
        save_file({"config": {}, "state_dict": {}, "extra": payload}, path, MODEL_FORMAT, MODEL_VERSION)


KINDS = ["plain-pickle", "torch-zip", "torch-legacy", "facemtl-saved"]


@pytest.mark.parametrize("kind", KINDS)
def test_malicious_payload_is_live(kind: str, tmp_path: Path) -> None:
    """Control: the crafted files do run their payload under an unrestricted load (so the next test can fail)."""
    marker = tmp_path / "control"
    path = tmp_path / "model.pt"
    write_malicious(kind, path, marker)
    if kind == "plain-pickle":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("kind", KINDS)
def test_malicious_pickle_is_refused_without_running(kind: str, loader: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    write_malicious(kind, path, marker)
    message = refused(LOADERS[loader], path)
    assert "not a readable facemtl file" in message
    assert not marker.exists(), "loading the file ran the payload"


def test_loading_does_not_modify_the_file(model_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.pt"
    shutil.copy(model_file, copy)
    before = copy.read_bytes()
    load_model(copy)
    assert copy.read_bytes() == before


def test_identity_head_can_read_the_embedding() -> None:
    torch.manual_seed(0)
    net = MultiTaskNet(ModelConfig(num_identities=7, identity_from="embedding", width=0.25)).eval()
    x = torch.rand(3, 3, 64, 64) * 255
    out = net(x)
    assert out["identity"].shape == (3, 7)
    with torch.no_grad():                                  # the logits follow the embedding head's weights
        next(net.heads["embedding"].parameters()).mul_(-1.0)
    assert not torch.allclose(net(x)["identity"], out["identity"])
    assert set(MultiTaskNet(ModelConfig(tasks=["landmarks"], identity_from="embedding"))(x)) == {"landmarks"}
    with pytest.raises(ConfigError, match="verification"):
        ModelConfig(tasks=["identity"], num_identities=7, identity_from="embedding")


def test_shipped_model_loads_with_its_calibrated_threshold() -> None:
    model = load_model(weights_path("facemtl-deepid2.pt"))
    assert model.config.trunk == "deepid2" and model.config.num_identities == 390
    assert -1.0 < model.config.verification_threshold < 1.0
    assert "val_accuracy" in model.meta["verification_threshold"]
