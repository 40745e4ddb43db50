"""ONNX / TorchScript export: the exported shared CNN and detector nets match PyTorch on real face crops."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from facemtl._resources import sample_photo
from facemtl.align import align
from facemtl.detect.cascade import fold_input_scaling
from facemtl.detect.detector import FaceDetector
from facemtl.detect.weights import load_detector_nets
from facemtl.errors import InvalidInputError, OutputExistsError
from facemtl.export import ExportReport, OnnxCNN, export_detector, export_model, output_names
from facemtl.io import load_image
from facemtl.model.multitask import ModelConfig, MultiTaskNet
from facemtl.model.sharing import TASKS

TOL = 1e-4
HAS_ONNX = importlib.util.find_spec("onnx") is not None
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_image(sample_photo())


@pytest.fixture(scope="module")
def crops(photo: np.ndarray) -> np.ndarray:
    """Three real 64 px crops of the sample photo's face: aligned, mirrored, and with a wider margin."""
    faces = FaceDetector().detect(photo)[0]
    assert faces, "the sample photo should hold a face"
    pts = faces[0].landmarks5
    wider = pts.mean(0) + 1.2 * (pts - pts.mean(0))
    aligned = align(photo, np.stack([pts, wider]), size=64).crops
    return np.ascontiguousarray(np.concatenate([aligned[:1], aligned[:1, :, ::-1], aligned[1:]]))


def _tiny_model() -> MultiTaskNet:
    """A tiny model with every weight random, BN statistics and the zero-initialised landmark head included."""
    torch.manual_seed(0)
    net = MultiTaskNet(ModelConfig(num_identities=5, width=0.25, tasks=TASKS))              # every output, age too
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        net.heads["landmarks"].fc.weight.normal_(0.0, 0.01)
    return net.eval()


@pytest.fixture(scope="module")
def model() -> MultiTaskNet:
    return _tiny_model()


def _nchw(crops: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))


def _pytorch(model: MultiTaskNet, crops: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(torch.from_numpy(_nchw(crops))).items()}


def _assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert np.abs(got[name] - want[name]).max() < TOL, name


def _assert_report_ok(report: ExportReport, artefacts: list[str]) -> None:
    assert sorted(report.max_abs_diff) == sorted(artefacts)
    assert report.worst() < TOL
    table = report.format_table()
    assert all(a in table for a in artefacts) and "MISMATCH" not in table


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory, model: MultiTaskNet, crops: np.ndarray) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path_factory.mktemp("onnx")
    report = export_model(model, out, "onnx", check_inputs=crops)
    _assert_report_ok(report, ["facemtl-cnn.onnx"])
    return out


def test_torchscript_matches_pytorch_on_real_crops(tmp_path: Path, model: MultiTaskNet, crops: np.ndarray) -> None:
    report = export_model(model, tmp_path, "torchscript", check_inputs=crops)
    _assert_report_ok(report, ["facemtl-cnn.torchscript.pt"])
    assert sorted(p.name for p in report.files) == ["facemtl-cnn.json", "facemtl-cnn.torchscript.pt"]
    scripted = torch.jit.load(str(tmp_path / "facemtl-cnn.torchscript.pt"))
    for batch in (crops[:1], crops):
        with torch.no_grad():
            got = scripted(torch.from_numpy(_nchw(batch)))
        _assert_close({n: t.numpy() for n, t in zip(output_names(model), got)}, _pytorch(model, batch))


def test_onnx_matches_pytorch_on_real_crops(onnx_dir: Path, model: MultiTaskNet, crops: np.ndarray) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_dir / "facemtl-cnn.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == list(output_names(model))
    for batch in (crops[:1], crops):
        got = session.run(None, {"crops": _nchw(batch)})
        _assert_close(dict(zip(names, got)), _pytorch(model, batch))


def test_onnx_cnn_swaps_in_for_the_model(onnx_dir: Path, model: MultiTaskNet, crops: np.ndarray) -> None:
    cnn = OnnxCNN(onnx_dir, threads=1)
    assert cnn.config == model.config
    got = cnn(crops)
    assert set(got) == set(model.heads)
    _assert_close({k: got[k] for k in _pytorch(model, crops)}, _pytorch(model, crops))
    with pytest.raises(InvalidInputError):
        cnn(crops.astype(np.float32))


def test_onnx_cnn_without_onnxruntime_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install"):
        OnnxCNN(tmp_path)


def test_detector_nets_export_with_parity(tmp_path: Path, photo: np.ndarray) -> None:
    formats = ["torchscript", "onnx"] if HAS_ONNX else ["torchscript"]
    report = export_detector(tmp_path, formats)
    suffixes = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    checked = [f for f in formats if f == "torchscript" or has_ort]
    _assert_report_ok(report, [f"mtcnn-{n}{suffixes[f]}" for n in ("pnet", "rnet", "onet") for f in checked])
    # P-Net takes raw pixels of any size, like the cascade's folded copy: check it on a real photo.
    scripted = torch.jit.load(str(tmp_path / "mtcnn-pnet.torchscript.pt"))
    x = torch.from_numpy(np.ascontiguousarray(photo[::5, ::3])).permute(2, 0, 1)[None].float()
    reference = fold_input_scaling(load_detector_nets()["pnet"])
    with torch.no_grad():
        for got, want in zip(scripted(x), reference(x)):
            assert got.shape == want.shape and (got - want).abs().max() < TOL


def test_refuses_to_overwrite_unless_forced(tmp_path: Path, model: MultiTaskNet) -> None:
    export_model(model, tmp_path, "torchscript")
    before = (tmp_path / "facemtl-cnn.json").read_bytes()
    with pytest.raises(OutputExistsError, match="force=True"):
        export_model(model, tmp_path, "torchscript")
    assert (tmp_path / "facemtl-cnn.json").read_bytes() == before
    assert export_model(model, tmp_path, "torchscript", force=True).worst() < TOL


def test_unknown_format_and_bad_check_inputs_are_refused(tmp_path: Path, model: MultiTaskNet) -> None:
    with pytest.raises(InvalidInputError, match="tflite"):
        export_model(model, tmp_path, ("onnx", "tflite"))
    with pytest.raises(InvalidInputError):
        export_detector(tmp_path, [])
    with pytest.raises(InvalidInputError, match="check_inputs"):
        export_model(model, tmp_path, "torchscript", check_inputs=np.zeros((2, 32, 32, 3), np.uint8))
    assert not any(tmp_path.iterdir())


def test_export_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    net = _tiny_model().train()
    export_model(net, tmp_path, "torchscript")
    assert net.training and all(m.training for m in net.modules())


@pytest.mark.parametrize("changes", [{"sharing": "hierarchical"}, {"sharing": "cross_stitch"},
                                     {"sharing": "shared_private"}, {"head_hidden": {"attributes": 16, "pose": 8}}],
                         ids=["hierarchical", "cross_stitch", "shared_private", "hidden_heads"])
def test_every_sharing_design_and_hidden_heads_export_with_parity(tmp_path: Path, crops: np.ndarray,
                                                                  changes: dict) -> None:
    """Inference is blind to the sharing design and the heads' depth: each exports to TorchScript (and ONNX)
    within 1e-4."""
    torch.manual_seed(1)
    net = MultiTaskNet(ModelConfig(num_identities=5, width=0.25, tasks=TASKS, **changes)).eval()
    formats = ["torchscript"]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        formats.append("onnx")
    except ImportError:
        pass
    report = export_model(net, tmp_path, formats, check_inputs=crops)
    assert report.worst() < TOL, report.format_table()
