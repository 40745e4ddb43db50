"""Annotated copies of photos: boxes, landmarks and short labels drawn on faces."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .types import JUDGEMENT_ATTRIBUTES, Face

_BOX = (40, 220, 40)
_POINTS = ((255, 60, 60), (60, 60, 255), (255, 220, 0), (255, 60, 255), (0, 220, 255))


def draw_faces(image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray,
               labels: Sequence[Sequence[str]] | None = None) -> np.ndarray:
    """Copy of an RGB image with each face's box, five points and label lines (beside the box) drawn."""
    out = np.ascontiguousarray(image).copy()
    scale = max(out.shape[:2]) / 800.0
    thick = max(1, round(2 * scale))
    font = max(0.35, 0.5 * scale)
    for k, box in enumerate(np.asarray(boxes).reshape(-1, 4)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), _BOX, thick, cv2.LINE_AA)
        for p, colour in zip(np.asarray(landmarks)[k], _POINTS):
            cv2.circle(out, (int(round(p[0])), int(round(p[1]))), max(1, thick), colour, -1, cv2.LINE_AA)
        y = y1
        for text in labels[k] if labels else []:
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
            x = x2 + thick + 2
            cv2.rectangle(out, (x, y), (x + tw + 4, y + th + base + 4), (20, 20, 20), -1)
            cv2.putText(out, text, (x + 2, y + th + 2), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1,
                        cv2.LINE_AA)
            y += th + base + 5
    return out


def face_labels(face: Face, top: int, judgements: bool = False) -> list[str]:
    """Short lines written beside a face: age and sex, then the most confident other attributes present
    (CelebA's judgements of looks only when ``judgements``)."""
    attrs = {k: v for k, v in face.attributes.items() if judgements or k not in JUDGEMENT_ATTRIBUTES}
    lines = [] if face.age is None else [f"age {face.age:.0f}"]
    if "Male" in attrs:
        male = attrs.pop("Male")
        lines.append(f"male {male:.2f}" if male >= 0.5 else f"female {1 - male:.2f}")
    present = sorted(((p, n) for n, p in attrs.items() if p >= 0.5), reverse=True)
    lines += [f"{n.lower().replace('_', ' ')} {p:.2f}" for p, n in present[:max(0, top - len(lines))]]
    return lines
