"""Evaluation metrics (verification, landmarks, attributes, detection); charts live in ``facemtl.evaluate.plots``.

The plots module is not imported here so that computing metrics never loads matplotlib.
"""
from __future__ import annotations

from facemtl.evaluate.attributes import AttributeResult, attribute_accuracy, classification_accuracy
from facemtl.evaluate.detection import (
    SIZE_BANDS,
    DetectionResult,
    MatchResult,
    average_precision,
    box_iou,
    detection_report,
    match_rate,
)
from facemtl.evaluate.landmarks import LandmarkResult, landmark_errors, landmark_metrics, landmark_point_errors
from facemtl.evaluate.verification import (
    VerificationResult,
    cosine_scores,
    make_identity_pairs,
    roc,
    tar_at_far,
    verification_accuracy,
)

__all__ = [
    "SIZE_BANDS",
    "AttributeResult",
    "DetectionResult",
    "LandmarkResult",
    "MatchResult",
    "VerificationResult",
    "attribute_accuracy",
    "average_precision",
    "box_iou",
    "classification_accuracy",
    "cosine_scores",
    "detection_report",
    "landmark_errors",
    "landmark_metrics",
    "landmark_point_errors",
    "make_identity_pairs",
    "match_rate",
    "roc",
    "tar_at_far",
    "verification_accuracy",
]
