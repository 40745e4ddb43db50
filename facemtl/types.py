"""The records facemtl returns, and the conventions they follow (stated here once).

Boxes are ``x1, y1, x2, y2`` in pixels of the original image. Landmarks are ``(5, 2)`` arrays of
``(x, y)`` in the order eye, eye, nose, mouth corner, mouth corner, the image-left point of each pair
first (MTFL's and MTCNN's convention: MTFL's "left eye" is the one with the smaller x). A horizontal flip
must therefore swap the two eyes and the two mouth corners. Embeddings are L2-normalised float32 vectors
compared by cosine similarity. Attributes are probabilities keyed by CelebA's 40 attribute names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

LANDMARK_NAMES: tuple[str, ...] = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
FLIP_PERMUTATION: tuple[int, ...] = (1, 0, 2, 4, 3)
"""Index permutation that restores the image-left-first order after a horizontal flip."""

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
"""CelebA's 40 attribute names in CelebA's order: the attribute head's outputs."""

DEFAULT_MIN_FACE = 20.0
"""The smallest face side (pixels) the detector looks for unless told otherwise."""

POSE_NAMES: tuple[str, ...] = ("left_profile", "left", "frontal", "right", "right_profile")
"""MTFL's five head-pose classes, in MTFL's order (labels 1..5)."""

JUDGEMENT_ATTRIBUTES: tuple[str, ...] = ("Attractive", "Chubby", "Big_Lips", "Big_Nose", "Narrow_Eyes",
                                        "Oval_Face", "Pointy_Nose", "Young")
"""CelebA labels that record an annotator's judgement of looks or age rather than something visible on the
face; they stay in faces.json as CelebA's labels but are not drawn on photos unless asked for."""

AGE_MAX = 100
"""The age head scores each whole year 0..AGE_MAX (older people count as AGE_MAX); the age it reports is
the expected value of that distribution, in years."""


def _as_float_array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Return ``value`` as a float32 array of ``shape``, or raise a clear ValueError."""
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def box_area(box: np.ndarray) -> float:
    """Area of an ``x1, y1, x2, y2`` box in square pixels."""
    return float((box[2] - box[0]) * (box[3] - box[1]))


def largest(faces: Sequence[Any]) -> Any:
    """The face (anything with a ``box``) with the largest box, the photo's subject in portrait-style photos;
    None for no face."""
    return max(faces, key=lambda f: box_area(f.box)) if faces else None


@dataclass(slots=True)
class Detection:
    """One face found by the detector: box, confidence and the five landmarks."""

    box: np.ndarray
    score: float
    landmarks5: np.ndarray

    def __post_init__(self) -> None:
        self.box = _as_float_array(self.box, (4,), "box")
        self.landmarks5 = _as_float_array(self.landmarks5, (5, 2), "landmarks5")
        self.score = float(self.score)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as written to ``faces.json``."""
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(self.score, 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks5],
        }


@dataclass(slots=True)
class Face:
    """Everything facemtl knows about one face in one photo (fields are fixed: a typo raises)."""

    box: np.ndarray
    score: float
    landmarks5: np.ndarray
    landmarks: np.ndarray | None = None
    embedding: np.ndarray | None = None
    attributes: dict[str, float] = field(default_factory=dict)
    pose: dict[str, float] = field(default_factory=dict)
    age: float | None = None
    """Estimated age in years (an estimate from the face alone; see the model card for its error by group)."""
    crop: np.ndarray | None = None

    @classmethod
    def from_detection(cls, det: Detection) -> "Face":
        """Start a Face from a detector result."""
        return cls(box=det.box, score=det.score, landmarks5=det.landmarks5)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the crop and the embedding vector are written elsewhere)."""
        out = Detection(self.box, self.score, self.landmarks5).to_dict()
        if self.landmarks is not None:
            out["landmarks_refined"] = [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks]
        if self.attributes:
            out["attributes"] = {k: round(float(v), 4) for k, v in self.attributes.items()}
        if self.pose:
            out["pose"] = {k: round(float(v), 4) for k, v in self.pose.items()}
        if self.age is not None:
            out["age"] = round(float(self.age), 1)
        return out
