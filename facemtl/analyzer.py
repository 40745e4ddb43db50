"""FaceAnalyzer: photo(s) in, every face out with box, landmarks, embedding, attributes and pose.

It only chains the stages: detect (MTCNN) -> align (five-point template at the model's input size) ->
one batched forward pass of the shared multi-task network over the faces of all photos -> map the
refined landmarks back into photo pixels. With ``flip=True`` each face is also run mirrored and the two
predictions are averaged (embeddings re-normalised, landmark pairs swapped back).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ._resources import weights_path
from .align import align
from .detect.detector import FaceDetector, as_image_list
from .device import resolve_device
from .errors import InvalidInputError
from .model.multitask import MultiTaskNet, load_model
from .types import FLIP_PERMUTATION, Detection, Face

log = logging.getLogger("facemtl")
DEFAULT_MODEL = "facemtl-deepid2.pt"


@dataclass
class CropOutputs:
    """Network outputs for a batch of aligned crops, as numpy arrays."""

    embedding: np.ndarray | None = None
    landmarks: np.ndarray | None = None   # (N,5,2) crop pixels
    attributes: np.ndarray | None = None  # (N,A) probabilities
    pose: np.ndarray | None = None        # (N,5) probabilities
    identity: np.ndarray | None = None    # (N,C) logits / cosines


class FaceAnalyzer:
    """Detector + shared multi-task CNN on one device (``analyzer.device`` says which).

    ``device="auto"`` picks CUDA when present; asking for CUDA where there is none raises DeviceError.
    ``detector`` and ``model`` may be objects or paths; by default the shipped weights are loaded.
    """

    def __init__(self, detector: FaceDetector | str | os.PathLike[str] | None = None,
                 model: MultiTaskNet | str | os.PathLike[str] | None = None, device: str | torch.device = "auto",
                 flip: bool = True, batch_size: int = 128, min_face: float = 20.0) -> None:
        self.device = resolve_device(device)
        if isinstance(detector, FaceDetector):
            self.detector = detector
        else:
            self.detector = FaceDetector(weights=detector, device=self.device, min_face=min_face)
        if isinstance(model, MultiTaskNet):
            self.model = model.to(self.device).eval()
        else:
            self.model = load_model(model if model is not None else weights_path(DEFAULT_MODEL), self.device)
        self.flip = flip
        self.batch_size = batch_size
        self.input_size = self.model.config.input_size
        log.info("FaceAnalyzer on %s (model %s)", self.device, getattr(self.model, "model_id", "?"))

    @property
    def model_id(self) -> str:
        return getattr(self.model, "model_id", "unsaved")

    @property
    def threshold(self) -> float | None:
        """Calibrated verification threshold (cosine similarity) stored in the model file, if any."""
        return self.model.config.verification_threshold

    def analyze(self, images: Any | Sequence[Any]) -> list[list[Face]]:
        """Every face of one photo or many: always one list per photo (empty where no face is found)."""
        arrays = as_image_list(images)
        detections = self.detector.detect_arrays(arrays) if arrays else []
        per_photo = [[Detection(b, s, l) for b, s, l in zip(o.boxes.cpu().numpy(), o.scores.cpu().numpy(),
                                                             o.landmarks.cpu().numpy())] for o in detections]
        return self.describe(arrays, per_photo)

    def describe(self, arrays: Sequence[np.ndarray], detections: Sequence[Sequence[Detection]]) -> list[list[Face]]:
        """Faces for given detections (e.g. from ``detect``): align, run the network once, map back."""
        if len(arrays) != len(detections):
            raise InvalidInputError("describe() needs one detection list per photo")
        crops, matrices, owners = [], [], []
        for k, (image, dets) in enumerate(zip(arrays, detections)):
            if not dets:
                continue
            aligned = align(image, np.stack([d.landmarks5 for d in dets]), size=self.input_size)
            crops.append(aligned.crops)
            matrices.append(aligned.matrices)
            owners += [k] * len(dets)
        faces: list[list[Face]] = [[] for _ in arrays]
        if not crops:
            return faces
        all_crops, all_m = np.concatenate(crops), np.concatenate(matrices)
        out = self.run_crops(all_crops)
        inv = _invert(all_m)
        refined = None if out.landmarks is None else np.einsum("nij,nkj->nki", inv[:, :, :2], out.landmarks) \
            + inv[:, None, :, 2]
        counters = [0] * len(arrays)
        for n, k in enumerate(owners):
            det = detections[k][counters[k]]
            counters[k] += 1
            face = Face.from_detection(det)
            face.crop = all_crops[n]
            if out.embedding is not None:
                face.embedding = out.embedding[n]
            if refined is not None:
                face.landmarks = refined[n].astype(np.float32)
            if out.attributes is not None:
                face.attributes = dict(zip(self.model.config.attribute_names, map(float, out.attributes[n])))
            if out.pose is not None:
                face.pose = dict(zip(self.model.config.pose_names, map(float, out.pose[n])))
            faces[k].append(face)
        return faces

    @torch.inference_mode()
    def run_crops(self, crops: np.ndarray) -> CropOutputs:
        """The network on aligned uint8 crops (N,S,S,3), in batches; flip-averaged when ``flip``."""
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3) or crops.dtype != np.uint8:
            raise InvalidInputError(f"crops must be uint8 (N,{self.input_size},{self.input_size},3), "
                                    f"got {crops.dtype} {crops.shape}")
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(crops), self.batch_size):
            x = torch.from_numpy(crops[start:start + self.batch_size]).to(self.device).permute(0, 3, 1, 2)
            out = {k: v.float() for k, v in self.model(x.float()).items()}
            if self.flip:
                mirrored = {k: v.float() for k, v in self.model(x.flip(3).float()).items()}
                out = _average_flip(out, mirrored, self.input_size)
            for k, v in out.items():
                parts.setdefault(k, []).append(v.cpu().numpy())
        res = {k: np.concatenate(v) for k, v in parts.items()}
        return CropOutputs(
            embedding=res.get("embedding"),
            landmarks=res.get("landmarks"),
            attributes=None if "attributes" not in res else 1.0 / (1.0 + np.exp(-res["attributes"])),
            pose=None if "pose" not in res else _softmax(res["pose"]),
            identity=res.get("identity"),
        )

    def embed(self, images: Any | Sequence[Any]) -> list[np.ndarray | None]:
        """Embedding of the largest face of each photo (None where no face is found)."""
        out = []
        for faces in self.analyze(images):
            if not faces:
                out.append(None)
                continue
            big = max(faces, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
            out.append(big.embedding)
        return out


def _average_flip(out: dict[str, torch.Tensor], flipped: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Average predictions on a crop and its mirror image, undoing the mirror first.

    A pixel column x (landmarks are in crop pixels) maps to ``size - 1 - x`` under the mirror.
    """
    avg: dict[str, torch.Tensor] = {}
    for k, v in out.items():
        f = flipped[k]
        if k == "embedding":
            avg[k] = torch.nn.functional.normalize(v + f, dim=1)
        elif k == "landmarks":
            f = f[:, list(FLIP_PERMUTATION)].clone()
            f[..., 0] = size - 1.0 - f[..., 0]
            avg[k] = (v + f) / 2
        elif k == "pose":
            avg[k] = (torch.softmax(v, 1) + torch.softmax(f, 1)[:, [4, 3, 2, 1, 0]]).log()
        else:
            avg[k] = (v + f) / 2
    return avg


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _invert(m: np.ndarray) -> np.ndarray:
    """Inverse of (N,2,3) affine matrices."""
    lin = np.linalg.inv(m[:, :, :2])
    return np.concatenate([lin, -(lin @ m[:, :, 2:])], axis=2)
