"""Training augmentation (albumentations, keypoint-aware) on cached context crops.

A cached crop is the face aligned onto the template at the model's input size, with ``padding`` pixels of
context on every side. Training jitters it with a random similarity (so the model learns to refine
imperfect detections), cuts the model-sized centre, flips, and perturbs colour, blur and resolution.
Albumentations keeps the landmarks in step; the horizontal flip is ours, because a flip must also swap the
left/right landmark pairs and the left/right head poses, which albumentations does not know about.
"""
from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

from ..types import FLIP_PERMUTATION

POSE_FLIP = np.array([4, 3, 2, 1, 0])
"""Head-pose class after a horizontal flip (left profile <-> right profile, left <-> right)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of the training augmentation."""

    rotate: float = 12.0
    scale: float = 0.10
    shift: float = 0.05
    flip: float = 0.5
    color: float = 0.8
    gray: float = 0.1
    degrade: float = 0.3
    """Probability of a blur or a down-and-up resample (wild photos hold small, soft faces)."""


def build_augment(size: int, cfg: AugmentConfig) -> A.Compose:
    """The albumentations pipeline: context crop (size + 2*padding) in, ``size`` x ``size`` crop out."""
    return A.Compose(
        [
            A.Affine(scale=(1 - cfg.scale, 1 + cfg.scale), rotate=(-cfg.rotate, cfg.rotate),
                     translate_percent=(-cfg.shift, cfg.shift), border_mode=cv2.BORDER_REPLICATE, p=1.0),
            A.CenterCrop(size, size),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=cfg.color),
            A.ToGray(p=cfg.gray),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.Downscale(scale_range=(0.45, 0.85))], p=cfg.degrade),
        ],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
    )


def center_crop(crop: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """The model-sized centre of a context crop, and the offset to subtract from its coordinates."""
    off = (crop.shape[0] - size) // 2
    return crop[off:off + size, off:off + size], off


def hflip(image: np.ndarray, points: np.ndarray, pose: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Mirror a crop, its landmarks (pairs swapped so the image-left point stays first) and the pose."""
    flipped = np.ascontiguousarray(image[:, ::-1])
    pts = points.copy()
    pts[:, 0] = image.shape[1] - 1 - pts[:, 0]
    pts = pts[list(FLIP_PERMUTATION)]
    return flipped, pts, int(POSE_FLIP[pose]) if pose >= 0 else pose
