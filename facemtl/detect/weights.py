"""Load and save the detector's weights, and import the published MTCNN weights."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from .._resources import weights_path
from ..errors import WeightsError
from ..serialization import load_file, save_file
from .nets import ONet, PNet, RNet

DETECTOR_FORMAT = "facemtl-mtcnn"
DETECTOR_VERSION = 1
DEFAULT_WEIGHTS = "mtcnn.pt"
_WHEEL_MEMBERS = {"pnet": "facenet_pytorch/data/pnet.pt", "rnet": "facenet_pytorch/data/rnet.pt",
                  "onet": "facenet_pytorch/data/onet.pt"}


def build_nets() -> dict[str, torch.nn.Module]:
    """Fresh, untrained P-, R- and O-Nets."""
    return {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}


def load_detector_nets(path: str | os.PathLike[str] | None = None) -> dict[str, torch.nn.Module]:
    """The three nets with weights from ``path`` (default: the shipped ``weights/mtcnn.pt``), in eval mode."""
    path = Path(path) if path is not None else weights_path(DEFAULT_WEIGHTS)
    body = load_file(path, DETECTOR_FORMAT, DETECTOR_VERSION)
    nets = build_nets()
    for name, net in nets.items():
        try:
            net.load_state_dict(body["state_dicts"][name])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"{path}: weights for {name} do not fit the network: {exc}") from None
        net.eval().requires_grad_(False)
    return nets


def save_detector_nets(path: str | os.PathLike[str], nets: dict[str, torch.nn.Module],
                       provenance: dict[str, Any]) -> None:
    """Save the three nets with a provenance record (source, licence, checksums of the source)."""
    state = {name: {k: v.detach().cpu() for k, v in net.state_dict().items()} for name, net in nets.items()}
    save_file({"state_dicts": state, "provenance": provenance}, path, DETECTOR_FORMAT, DETECTOR_VERSION)


def import_facenet_wheel(wheel: str | os.PathLike[str]) -> dict[str, torch.nn.Module]:
    """Read the published P/R/O-Net tensors from a facenet-pytorch wheel file (no import of that package)."""
    nets = build_nets()
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name, member in _WHEEL_MEMBERS.items():
                state = torch.load(io.BytesIO(zf.read(member)), map_location="cpu", weights_only=True)
                nets[name].load_state_dict(state)
    except (OSError, KeyError, zipfile.BadZipFile, RuntimeError) as exc:
        raise WeightsError(f"{wheel}: not a facenet-pytorch wheel with MTCNN weights: {exc}") from None
    return nets
