"""FaceAnalyzer: photo(s) in, every face out with box, landmarks, embedding, attributes and pose.

It only chains the stages: detect (MTCNN) -> align (five-point template at the model's input size) ->
one batched forward pass of the shared multi-task network over the faces of all photos -> map the
refined landmarks back into photo pixels. With ``flip=True`` each face is also run mirrored and the two
predictions are averaged (embeddings re-normalised, landmark pairs swapped back). With ``refine=n`` each
face is re-aligned n times on the network's own landmarks (closer than the detector's) and landmarks,
attributes and pose are read from the last pass; the embedding stays the one of the detector-aligned
crop, the alignment identity training saw.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from ._resources import DEFAULT_MODEL, weights_path
from .align import align, template, to_photo
from .detect.detector import FaceDetector
from .io import as_image_list
from .device import resolve_device
from .errors import InvalidInputError
from .model.heads import attribute_probabilities, expected_age
from .model.multitask import MultiTaskNet, load_model
from .types import DEFAULT_MIN_FACE, FLIP_PERMUTATION, Detection, Face, largest

if TYPE_CHECKING:
    from .video import VideoResult

log = logging.getLogger("facemtl")


@dataclass
class CropOutputs:
    """Network outputs for a batch of aligned crops, as numpy arrays."""

    embedding: np.ndarray | None = None
    landmarks: np.ndarray | None = None   # (N,5,2) crop pixels
    attributes: np.ndarray | None = None  # (N,A) probabilities
    pose: np.ndarray | None = None        # (N,5) probabilities
    identity: np.ndarray | None = None    # (N,C) logits / cosines
    age: np.ndarray | None = None         # (N,) years


class FaceAnalyzer:
    """Detector + shared multi-task CNN on one device (``analyzer.device`` says which).

    ``device="auto"`` picks CUDA when present; asking for CUDA where there is none raises DeviceError.
    ``detector`` and ``model`` may be objects or paths; by default the shipped weights are loaded.
    """

    def __init__(self, detector: FaceDetector | str | os.PathLike[str] | None = None,
                 model: MultiTaskNet | str | os.PathLike[str] | None = None, device: str | torch.device = "auto",
                 flip: bool = True, batch_size: int = 128, min_face: float = DEFAULT_MIN_FACE, refine: int = 1) -> None:
        self.device = resolve_device(device)
        if isinstance(detector, FaceDetector):
            self.detector = detector
        else:
            self.detector = FaceDetector(weights=detector, device=self.device, min_face=min_face)
        if isinstance(model, MultiTaskNet):
            self.model = model.to(self.device).eval()
        else:
            self.model = load_model(model if model is not None else weights_path(DEFAULT_MODEL), self.device)
        self.model = self.model.to(memory_format=torch.channels_last)   # NHWC convolutions: a third faster on CPUs
        self.flip = flip
        self.refine = _passes(refine)
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

    def analyze(self, images: Any | Sequence[Any], refine: int | None = None) -> list[list[Face]]:
        """Every face of one photo or many: always one list per photo (empty where no face is found).

        ``refine`` overrides the analyzer's number of re-alignment passes for this call."""
        refine = None if refine is None else _passes(refine)
        arrays = as_image_list(images)
        detections = self.detector.detect_arrays(arrays) if arrays else []
        per_photo = [[Detection(b, s, l) for b, s, l in zip(o.boxes.cpu().numpy(), o.scores.cpu().numpy(),
                                                             o.landmarks.cpu().numpy())] for o in detections]
        return self.describe(arrays, per_photo, refine)

    def describe(self, arrays: Sequence[np.ndarray], detections: Sequence[Sequence[Detection]],
                 refine: int | None = None) -> list[list[Face]]:
        """Faces for given detections (e.g. from ``detect``): align, run the network, refine, map back."""
        if len(arrays) != len(detections):
            raise InvalidInputError("describe() needs one detection list per photo")
        faces: list[list[Face]] = [[] for _ in arrays]
        owners = [k for k, dets in enumerate(detections) for _ in dets]
        if not owners:
            return faces
        flat = [d for dets in detections for d in dets]
        crops, matrices = self._align(arrays, owners, np.stack([d.landmarks5 for d in flat]))
        out, matrices = self.refined(lambda points: self._align(arrays, owners, points), self.run_crops(crops),
                                     matrices, self.refine if refine is None else _passes(refine))
        photo_points = None if out.landmarks is None else to_photo(matrices, out.landmarks)
        for n, (k, det) in enumerate(zip(owners, flat)):
            face = Face.from_detection(det)
            face.crop = crops[n]
            if out.embedding is not None:
                face.embedding = out.embedding[n]
            if photo_points is not None:
                face.landmarks = photo_points[n].astype(np.float32)
            if out.attributes is not None:
                face.attributes = dict(zip(self.model.config.attribute_names, map(float, out.attributes[n])))
            if out.pose is not None:
                face.pose = dict(zip(self.model.config.pose_names, map(float, out.pose[n])))
            if out.age is not None:
                face.age = float(out.age[n])
            faces[k].append(face)
        return faces

    def refined(self, realign: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], out: CropOutputs,
                matrices: np.ndarray, passes: int) -> tuple[CropOutputs, np.ndarray]:
        """Re-align ``passes`` times on the predicted landmarks (``realign`` maps (N,5,2) photo points to crops
        and photo->crop matrices) and re-run; the embedding and identity stay those of the first pass.

        A face whose prediction cannot be aligned on (not finite, or all points within a pixel) keeps its
        previous alignment, so one odd face never stops the batch."""
        if out.landmarks is None:
            return out, matrices
        first = out
        for _ in range(passes):
            points = to_photo(matrices, out.landmarks)
            bad = ~np.isfinite(points).all(axis=(1, 2))
            bad |= np.nan_to_num(points).std(axis=1).max(axis=1) < 1.0
            points[bad] = to_photo(matrices[bad], np.broadcast_to(template(self.input_size), (int(bad.sum()), 5, 2)))
            crops, matrices = realign(points)
            out = self.run_crops(crops)
        return replace(out, embedding=first.embedding, identity=first.identity), matrices

    def _align(self, arrays: Sequence[np.ndarray], owners: Sequence[int],
               points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Aligned crops and photo->crop matrices of (N,5,2) landmark sets; ``owners`` (sorted) says whose photo."""
        crops, matrices = [], []
        ids, starts = np.unique(np.asarray(owners), return_index=True)
        for k, lo, hi in zip(ids, starts, [*starts[1:], len(owners)]):
            aligned = align(arrays[k], points[lo:hi], size=self.input_size)
            crops.append(aligned.crops)
            matrices.append(aligned.matrices)
        return np.concatenate(crops), np.concatenate(matrices)

    @torch.inference_mode()
    def run_crops(self, crops: np.ndarray) -> CropOutputs:
        """The network on aligned uint8 crops (N,S,S,3), in batches; flip-averaged when ``flip``."""
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3) or crops.dtype != np.uint8:
            raise InvalidInputError(f"crops must be uint8 (N,{self.input_size},{self.input_size},3), "
                                    f"got {crops.dtype} {crops.shape}")
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(crops), self.batch_size):
            x = torch.from_numpy(crops[start:start + self.batch_size]).to(self.device).permute(0, 3, 1, 2).float()
            n = len(x)
            both = {k: v.float() for k, v in self.model(torch.cat([x, x.flip(3)]) if self.flip else x).items()}
            out = {k: v[:n] for k, v in both.items()}
            if self.flip:                               # the faces and their mirror images in one forward pass
                out = _average_flip(out, {k: v[n:] for k, v in both.items()}, self.input_size)
            for k, v in out.items():
                parts.setdefault(k, []).append(v.cpu().numpy())
        res = {k: np.concatenate(v) for k, v in parts.items()}
        return CropOutputs(
            embedding=res.get("embedding"),
            landmarks=res.get("landmarks"),
            attributes=None if "attributes" not in res else attribute_probabilities(res["attributes"]),
            pose=None if "pose" not in res else _softmax(res["pose"]),
            identity=res.get("identity"),
            age=None if "age" not in res else expected_age(torch.from_numpy(res["age"])).numpy(),
        )

    def analyze_video(self, path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                      every: int = 1, **options: Any) -> "VideoResult":
        """Faces and face tracks of a video, every ``every``-th frame (see :func:`facemtl.video.analyze_video`)."""
        from .video import analyze_video  # here: scipy's optimiser loads only for videos
        return analyze_video(self, path, out_dir, every, **options)

    def embed(self, images: Any | Sequence[Any]) -> list[np.ndarray | None]:
        """Embedding of the largest face of each photo (None where no face is found); no refinement passes,
        since they leave the embedding unchanged."""
        out = []
        for faces in self.analyze(images, refine=0):
            if not faces:
                out.append(None)
                continue
            out.append(largest(faces).embedding)
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


def _passes(refine: Any) -> int:
    """A number of refinement passes, checked."""
    if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 0:
        raise InvalidInputError(f"refine must be a whole number >= 0, got {refine!r}")
    return int(refine)
