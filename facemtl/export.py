"""Export the shared CNN and the MTCNN nets to ONNX and TorchScript, each checked against PyTorch.

Files written to ``out_dir``:

- ``facemtl-cnn.onnx`` / ``facemtl-cnn.torchscript.pt``: the :class:`MultiTaskNet`. Input ``crops``:
  aligned RGB crops, NCHW, pixel values 0..255, dynamic batch; uint8 for ONNX (its input type is fixed),
  uint8 or float32 for TorchScript. Outputs, in this order and under these ONNX names, the ones the model
  has of ``identity, embedding, landmarks, attributes, pose, age`` (:data:`OUTPUT_ORDER`). The network
  normalises its input itself, as in PyTorch.
- ``facemtl-cnn.json``: the model config, output names, shapes and meanings, and the input spec.
- ``mtcnn-{pnet,rnet,onet}.onnx`` / ``.torchscript.pt`` and ``mtcnn.json``: the detector nets as the
  cascade runs them, with MTCNN's ``(x - 127.5) / 128`` folded into ``conv1``
  (:func:`facemtl.detect.cascade.fold_input_scaling`), so they too take raw float32 pixels 0..255.
  P-Net has dynamic batch, height and width; R-Net and O-Net a dynamic batch.

ONNX goes through torch's TorchScript-based exporter (``dynamo=False``, deprecated but kept in torch):
for these plain CNNs it works offline on every torch the project allows, in under a second, needing only
``onnx``. The ``torch.export``-based one also needs ``onnxscript``, takes seconds per net and writes the
weights to a second file by default. torch's deprecation notices for these tools are silenced here.
Every artefact is reloaded from disk (TorchScript with ``torch.jit.load``, ONNX with onnxruntime when
installed) and its outputs compared with PyTorch's; :class:`ExportReport` keeps the largest difference.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .detect.cascade import fold_input_scaling
from .detect.weights import load_detector_nets
from .errors import InvalidInputError, OutputExistsError, WeightsError
from .model.multitask import TASK_OUTPUT, ModelConfig, MultiTaskNet
from .serialization import atomic_write_bytes

FORMATS: tuple[str, ...] = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
CNN_STEM = "facemtl-cnn"
CNN_INPUT = "crops"
CNN_SIDECAR_FORMAT = "facemtl-cnn-export"
DETECTOR_SIDECAR = "mtcnn.json"
DETECTOR_SIDECAR_FORMAT = "facemtl-mtcnn-export"
SIDECAR_VERSION = 1
ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4
DEFAULT_CHECK_BATCH = 4
OUTPUT_ORDER: tuple[str, ...] = tuple(TASK_OUTPUT.values())
"""Order of the exported CNN's outputs (those the model has): identity, embedding, landmarks, attributes, pose, age."""

OUTPUT_MEANING = {
    "identity": "logits over the training identities (cosines to the class centres when identity_margin > 0)",
    "embedding": "L2-normalised face embedding; compare two faces by cosine similarity",
    "landmarks": "five (x, y) points in crop pixels, image-left eye first",
    "attributes": "one logit per config.attribute_names entry (sigmoid gives probabilities)",
    "pose": "logits over config.pose_names (softmax gives probabilities)",
    "age": "logits over whole years 0..100 (the age is the softmax's expected value, in years)",
}
DETECTOR_INPUT = "images"
DETECTOR_OUTPUTS: dict[str, tuple[str, ...]] = {
    "pnet": ("regression", "probability"),
    "rnet": ("regression", "probability"),
    "onet": ("regression", "landmarks", "probability"),
}
DETECTOR_CROP = {"rnet": 24, "onet": 48}

Runner = Callable[[np.ndarray], list[np.ndarray]]


@contextlib.contextmanager
def _quiet_torch_deprecations() -> Iterator[None]:
    """Silence torch's deprecation notices for the TorchScript tools used here on purpose (module docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        warnings.filterwarnings("ignore", message=r"The feature will be removed", module=r"torch\.onnx")
        yield


@dataclass
class ExportReport:
    """What an export wrote and how far each artefact's outputs are from PyTorch's."""

    files: list[Path] = field(default_factory=list)
    max_abs_diff: dict[str, dict[str, float]] = field(default_factory=dict)
    """Artefact file name -> output name -> max |exported - PyTorch| over every check input."""
    notes: list[str] = field(default_factory=list)

    def worst(self) -> float:
        """Largest difference over the artefacts checked (skipped ones are in ``notes``); inf if any broke."""
        return max((d for diffs in self.max_abs_diff.values() for d in diffs.values()), default=0.0)

    def format_table(self, tolerance: float = PARITY_TOLERANCE) -> str:
        """Plain-text table of the parity check, one row per artefact and output, for the CLI to print."""
        rows = [(art, out, f"{d:.2e}", "ok" if d <= tolerance else "MISMATCH")
                for art, diffs in self.max_abs_diff.items() for out, d in diffs.items()]
        header = ("artefact", "output", "max |diff|", f"<= {tolerance:g}")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        lines += [f"note: {n}" for n in self.notes] + [f"wrote {p}" for p in self.files]
        return "\n".join(lines)


class _OutputTuple(nn.Module):
    """A MultiTaskNet whose dict of outputs comes back as a tuple in a fixed order (exporters need one)."""

    def __init__(self, model: MultiTaskNet, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(crops)
        return tuple(out[name] for name in self.names)


def output_names(model: MultiTaskNet) -> tuple[str, ...]:
    """The model's outputs in export order (:data:`OUTPUT_ORDER`)."""
    return tuple(name for name in OUTPUT_ORDER if name in model.heads)


def check_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """Validated, de-duplicated format names; a bad name is an InvalidInputError that lists the valid ones."""
    names = (formats,) if isinstance(formats, str) else tuple(formats)
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        raise InvalidInputError(f"unknown export format(s) {bad or '(none given)'}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))


def _claim(paths: Iterable[Path], force: bool) -> None:
    """Refuse to overwrite existing outputs unless ``force`` (checked before anything is written)."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise OutputExistsError(f"{', '.join(existing)} already exist(s); pass force=True to overwrite")


def _require_onnx() -> None:
    """ImportError with the fix when the ``onnx`` package (needed by torch's ONNX exporter) is missing."""
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the 'onnx' package: pip install 'facemtl[onnx]' (or pip install onnx)")


def _import_onnxruntime() -> Any:
    """The onnxruntime module, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("running ONNX files needs onnxruntime: pip install 'facemtl[onnx]' "
                          "(or pip install onnxruntime)") from None
    return onnxruntime


def _ort_session(path: Path, providers: Sequence[str] | None = None, threads: int | None = None) -> Any:
    """An onnxruntime session on ``path`` (CPU unless ``providers`` says otherwise)."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def _torchscript_bytes(module: nn.Module, example: torch.Tensor) -> bytes:
    """``module`` traced on ``example`` and saved as a TorchScript archive."""
    with torch.no_grad(), _quiet_torch_deprecations():
        traced = torch.jit.trace(module, (example,), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def _onnx_bytes(module: nn.Module, example: torch.Tensor, input_name: str, names: Sequence[str],
                dynamic_axes: dict[str, dict[int, str]]) -> bytes:
    """``module`` exported to an ONNX model (legacy exporter, see the module docstring)."""
    _require_onnx()
    buf = io.BytesIO()
    with torch.no_grad(), _quiet_torch_deprecations():
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[input_name], output_names=list(names), dynamic_axes=dynamic_axes)
    return buf.getvalue()


def _artefact_bytes(module: nn.Module, example: torch.Tensor, fmt: str, input_name: str,
                    names: Sequence[str], dynamic_axes: dict[str, dict[int, str]]) -> bytes:
    """One artefact of ``module`` in format ``fmt``."""
    if fmt == "torchscript":
        return _torchscript_bytes(module, example)
    return _onnx_bytes(module, example, input_name, names, dynamic_axes)


def _torch_runner(module: nn.Module) -> Runner:
    """Run a PyTorch or TorchScript module on a numpy batch; outputs as numpy arrays."""
    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(torch.from_numpy(x))]
    return run


def _artefact_runner(fmt: str, path: Path) -> Runner:
    """Run an exported file as its consumers would: ``torch.jit.load`` or an onnxruntime session."""
    if fmt == "torchscript":
        with _quiet_torch_deprecations():
            return _torch_runner(torch.jit.load(str(path), map_location="cpu"))
    session = _ort_session(path, threads=torch.get_num_threads())
    name = session.get_inputs()[0].name
    return lambda x: list(session.run(None, {name: x}))


def _max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want|; inf when the shapes differ or a value is not finite."""
    if got.shape != want.shape:
        return math.inf
    if want.size == 0:
        return 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    return diff if math.isfinite(diff) else math.inf


def _parity(reference: nn.Module, files: dict[str, Path], inputs: Sequence[np.ndarray],
            names: Sequence[str], report: ExportReport) -> None:
    """Compare every artefact in ``files`` with ``reference`` on ``inputs``; record per-output maxima."""
    expected = [_torch_runner(reference)(x) for x in inputs]
    for fmt, path in files.items():
        if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
            report.notes.append(f"{path.name} not checked: onnxruntime is not installed (pip install onnxruntime)")
            continue
        run = _artefact_runner(fmt, path)
        diffs = dict.fromkeys(names, 0.0)
        for x, want in zip(inputs, expected):
            got = run(x)
            for name, g, w in zip(names, got, want):
                diffs[name] = max(diffs[name], _max_abs_diff(g, w) if len(got) == len(want) else math.inf)
        report.max_abs_diff[path.name] = diffs


def _check_crops(crops: np.ndarray | None, size: int) -> np.ndarray:
    """Check inputs as uint8 NCHW: the given (N,S,S,3) crops, or seeded random ones when None."""
    if crops is None:
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (DEFAULT_CHECK_BATCH, 3, size, size), dtype=np.uint8)
    if (not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.ndim != 4
            or crops.shape[1:] != (size, size, 3) or len(crops) == 0):
        got = f"{crops.dtype} {crops.shape}" if isinstance(crops, np.ndarray) else type(crops).__name__
        raise InvalidInputError(f"check_inputs must be uint8 crops (N,{size},{size},3) with N >= 1, got {got}")
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))


def _batches(x: np.ndarray) -> list[np.ndarray]:
    """The parity batches: the first item alone, then all of them (dynamic batch both ways)."""
    return [x[:1]] if len(x) == 1 else [x[:1], x]


def _write(blobs: dict[Path, bytes], force: bool, report: ExportReport) -> None:
    """Write every file atomically, after checking none would overwrite an existing one."""
    _claim(blobs, force)
    for path, data in blobs.items():
        atomic_write_bytes(path, data)
        report.files.append(path)


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode()


def _cnn_sidecar(model: MultiTaskNet, names: Sequence[str], shapes: dict[str, list[int | str]],
                 formats: Sequence[str]) -> dict[str, Any]:
    """The JSON beside the exported CNN: config, outputs and input spec, so no facemtl file is needed."""
    size = model.config.input_size
    return {
        "format": CNN_SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "facemtl_version": __version__,
        "model_id": getattr(model, "model_id", None),
        "files": {fmt: CNN_STEM + SUFFIXES[fmt] for fmt in formats}, "onnx_opset": ONNX_OPSET,
        "input": {"name": CNN_INPUT, "layout": "NCHW", "channels": "RGB", "height": size, "width": size,
                  "batch": "dynamic", "range": [0, 255], "dtype": {"onnx": "uint8", "torchscript": "uint8 or float32"},
                  "content": "face aligned onto facemtl.align's five-point template at this size; "
                             "the network normalises pixels itself"},
        "outputs": [{"name": n, "shape": shapes[n], "meaning": OUTPUT_MEANING[n]} for n in names],
        "config": dataclasses.asdict(model.config),
    }


def export_model(model: MultiTaskNet, out_dir: str | os.PathLike[str], formats: str | Iterable[str] = FORMATS,
                 check_inputs: np.ndarray | None = None, *, force: bool = False) -> ExportReport:
    """Export the shared CNN (dynamic batch, outputs as a fixed-order tuple) and check it against PyTorch.

    ``check_inputs`` are real aligned uint8 crops (N,S,S,3) for the parity check (random crops if None),
    run at batch sizes 1 and N. ``model`` itself is left as it was (a CPU copy in eval mode is exported).
    """
    if not isinstance(model, MultiTaskNet):
        raise InvalidInputError(f"export_model needs a MultiTaskNet, got {type(model).__name__}")
    formats = check_formats(formats)
    inputs = _check_crops(check_inputs, model.config.input_size)
    names = output_names(model)
    wrapper = _OutputTuple(copy.deepcopy(model).cpu().eval(), names).eval()
    example = torch.from_numpy(inputs[:1]).repeat(2, 1, 1, 1)
    with torch.no_grad():
        shapes = {n: ["N", *t.shape[1:]] for n, t in zip(names, wrapper(example))}
    axes = {CNN_INPUT: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    out = Path(out_dir)
    files = {fmt: out / (CNN_STEM + SUFFIXES[fmt]) for fmt in formats}
    blobs = {files[fmt]: _artefact_bytes(wrapper, example, fmt, CNN_INPUT, names, axes) for fmt in formats}
    blobs[out / f"{CNN_STEM}.json"] = _json_bytes(_cnn_sidecar(model, names, shapes, formats))
    report = ExportReport()
    _write(blobs, force, report)
    batches = _batches(inputs)
    source = "the given crops" if check_inputs is not None else "random crops"
    report.notes.append(f"{CNN_STEM}: checked on {source} at batch sizes {', '.join(str(len(b)) for b in batches)}")
    _parity(wrapper, files, batches, names, report)
    return report


def _detector_spec(name: str) -> tuple[torch.Tensor, list[np.ndarray], dict[str, dict[int, str]]]:
    """Trace example, parity inputs (seeded random pixels of plausible sizes) and dynamic axes of one net."""
    rng = np.random.default_rng(1)
    outputs = DETECTOR_OUTPUTS[name]
    if name == "pnet":
        shapes = [(1, 3, 12, 12), (1, 3, 61, 83), (3, 3, 30, 41)]
        example = torch.full((2, 3, 24, 30), 127.0)
        axes = {DETECTOR_INPUT: {0: "batch", 2: "height", 3: "width"},
                "regression": {0: "batch", 2: "rows", 3: "cols"}, "probability": {0: "batch", 1: "rows", 2: "cols"}}
    else:
        side = DETECTOR_CROP[name]
        shapes = [(1, 3, side, side), (16, 3, side, side)]
        example = torch.full((2, 3, side, side), 127.0)
        axes = {n: {0: "batch"} for n in (DETECTOR_INPUT, *outputs)}
    inputs = [rng.uniform(0, 255, s).astype(np.float32) for s in shapes]
    return example, inputs, axes


def _detector_sidecar(formats: Sequence[str]) -> dict[str, Any]:
    """The JSON beside the exported detector nets: files, inputs and outputs of each."""
    nets = {}
    for name, outs in DETECTOR_OUTPUTS.items():
        size = "any height and width >= 12" if name == "pnet" else f"{DETECTOR_CROP[name]}x{DETECTOR_CROP[name]}"
        nets[name] = {"files": {fmt: f"mtcnn-{name}{SUFFIXES[fmt]}" for fmt in formats},
                      "input": {"name": DETECTOR_INPUT, "layout": "NCHW", "channels": "RGB", "dtype": "float32",
                                "range": [0, 255], "size": size},
                      "outputs": list(outs)}
    return {"format": DETECTOR_SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "facemtl_version": __version__,
            "onnx_opset": ONNX_OPSET, "nets": nets,
            "input_scaling": "MTCNN's (x - 127.5) / 128 is folded into conv1: feed raw pixels 0..255"}


def export_detector(out_dir: str | os.PathLike[str], formats: str | Iterable[str] = FORMATS, *,
                    weights: str | os.PathLike[str] | None = None, force: bool = False) -> ExportReport:
    """Export P-, R- and O-Net as the cascade runs them (raw-pixel input) and check them against PyTorch."""
    formats = check_formats(formats)
    nets = {name: fold_input_scaling(net).eval() for name, net in load_detector_nets(weights).items()}
    out = Path(out_dir)
    files = {name: {fmt: out / f"mtcnn-{name}{SUFFIXES[fmt]}" for fmt in formats} for name in nets}
    specs = {name: _detector_spec(name) for name in nets}
    blobs = {files[name][fmt]: _artefact_bytes(net, specs[name][0], fmt, DETECTOR_INPUT, DETECTOR_OUTPUTS[name],
                                               specs[name][2])
             for name, net in nets.items() for fmt in formats}
    blobs[out / DETECTOR_SIDECAR] = _json_bytes(_detector_sidecar(formats))
    report = ExportReport()
    _write(blobs, force, report)
    report.notes.append("mtcnn nets: checked on random pixels, P-Net at three sizes, R-/O-Net at batch 1 and 16")
    for name, net in nets.items():
        _parity(net, files[name], specs[name][1], DETECTOR_OUTPUTS[name], report)
    return report


def _cnn_files(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(ONNX file, JSON sidecar) from an export folder or the ``.onnx`` file itself."""
    path = Path(path)
    onnx_path = path / (CNN_STEM + SUFFIXES["onnx"]) if path.is_dir() else path
    sidecar = onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".json")
    for p in (onnx_path, sidecar):
        if not p.is_file():
            raise WeightsError(f"{p}: no such file (export the model with facemtl.export.export_model)")
    return onnx_path, sidecar


class OnnxCNN:
    """The exported shared CNN on onnxruntime; called on uint8 crops it returns what MultiTaskNet does.

    >>> cnn = OnnxCNN("exported/")                 # facemtl-cnn.onnx + facemtl-cnn.json
    >>> out = cnn(crops)                           # crops: uint8 (N, S, S, 3) from facemtl.align
    >>> out["embedding"].shape                     # numpy arrays keyed like MultiTaskNet.forward
    """

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        _import_onnxruntime()
        onnx_path, sidecar = _cnn_files(path)
        meta = json.loads(sidecar.read_text())
        if meta.get("format") != CNN_SIDECAR_FORMAT or meta.get("format_version", 0) > SIDECAR_VERSION:
            raise WeightsError(f"{sidecar}: not a facemtl CNN export description this facemtl reads")
        self.config = ModelConfig.from_dict(meta["config"])
        self.session = _ort_session(onnx_path, providers, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def __call__(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Aligned RGB uint8 crops (N,S,S,3) -> {output name: array}, as MultiTaskNet.forward gives."""
        size = self.config.input_size
        if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.shape[1:] != (size, size, 3):
            got = f"{crops.dtype} {crops.shape}" if isinstance(crops, np.ndarray) else type(crops).__name__
            raise InvalidInputError(f"crops must be uint8 (N,{size},{size},3), got {got}")
        x = np.ascontiguousarray(crops.transpose(0, 3, 1, 2))
        return dict(zip(self.output_names, self.session.run(list(self.output_names), {self.input_name: x})))
