"""Write a small synthetic data folder in the real datasets' layouts, made from the shipped sample photo.

For checking the training and evaluation code paths where the real data cannot go (a GPU machine with no
network, a user's laptop): CelebA (aligned crops, the three official lists), celeba_wild (one folder per
person, whole photos) and MTFL (``training.txt``/``testing.txt`` with CRLF and ``\\`` separators). Every image
is the sample portrait under a random similarity warp and colour change, so faces are real and the MTFL
landmarks are exact (the warp of the detector's points on the original). Nothing here teaches a model
anything useful; it only exercises the code.

    python tools/make_synthetic_data.py OUT [--people 24] [--per-person 8] [--mtfl 400]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from facemtl import load_image
from facemtl.detect.detector import detect
from facemtl._resources import sample_photo
from facemtl.data.celeba import CELEBA_ATTRIBUTES
from facemtl.data.mtfl import MATLAB_ORIGIN


def random_warp(rng: np.random.Generator, centre: np.ndarray, out_size: tuple[int, int],
                target: np.ndarray, scale: float) -> np.ndarray:
    """A 2x3 similarity taking ``centre`` near ``target`` with a random angle, scale and shift."""
    angle = rng.uniform(-12, 12)
    s = scale * rng.uniform(0.9, 1.1)
    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, s)
    m[:, 2] += target - centre + rng.uniform(-4, 4, 2)
    return m


def render(image: np.ndarray, m: np.ndarray, size: tuple[int, int], tint: np.ndarray) -> np.ndarray:
    """Warp the photo and apply a per-channel gain (the 'person' look)."""
    out = cv2.warpAffine(image, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.clip(out.astype(np.float32) * tint, 0, 255).astype(np.uint8)


def save_jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--people", type=int, default=24)
    parser.add_argument("--per-person", type=int, default=8)
    parser.add_argument("--mtfl", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    photo = load_image(sample_photo())
    face = detect(photo)[0][0]
    points = np.asarray(face.landmarks5, dtype=np.float64)
    centre = points.mean(axis=0)
    eye_dist = float(np.linalg.norm(points[1] - points[0]))
    tints = rng.uniform(0.6, 1.3, (args.people, 3)).astype(np.float32)

    celeba = args.out / "celeba"
    ident, attrs, parts = [], [], []
    n = 0
    for p in range(args.people):
        split = 0 if p < args.people * 2 // 3 else (1 if p < args.people * 5 // 6 else 2)
        for _ in range(args.per_person):
            n += 1
            name = f"{n:06d}.jpg"
            m = random_warp(rng, centre, (178, 218), np.array([89.0, 120.0]), 38.0 / eye_dist)
            save_jpeg(celeba / "img_align_celeba" / name, render(photo, m, (178, 218), tints[p]))
            ident.append(f"{name} {p + 1}")
            attrs.append(f"{name} " + " ".join(rng.choice(["1", "-1"], len(CELEBA_ATTRIBUTES))))
            parts.append(f"{name} {split}")
    (celeba / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")
    (celeba / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    (celeba / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(CELEBA_ATTRIBUTES)}\n" + "\n".join(attrs) + "\n")

    for p in range(args.people):
        split = "train" if p < args.people * 2 // 3 else "test"
        for k in range(args.per_person):
            size = (224, int(rng.integers(160, 225)))
            m = random_warp(rng, centre, size, np.array(size, dtype=np.float64) / 2, 30.0 / eye_dist)
            save_jpeg(args.out / "celeba_wild" / split / f"{1000 + p}" / f"{k:03d}.jpg",
                      render(photo, m, size, tints[p]))

    mtfl = args.out / "MTFL"
    for listing, folder, count in (("training", "lfw_5590", args.mtfl), ("testing", "AFLW", args.mtfl // 4)):
        lines = []
        for k in range(count):
            m = random_warp(rng, centre, (250, 250), np.array([125.0, 125.0]), 50.0 / eye_dist)
            save_jpeg(mtfl / folder / f"{k:05d}.jpg", render(photo, m, (250, 250), rng.uniform(0.6, 1.3, 3)))
            warped = points @ m[:, :2].T + m[:, 2] + MATLAB_ORIGIN   # MTFL lists hold 1-based pixels
            labels = [int(rng.integers(1, 3)) for _ in range(3)] + [int(rng.integers(1, 6))]
            lines.append(f" {folder}\\{k:05d}.jpg " + " ".join(f"{v:.2f}" for v in warped[:, 0]) + " "
                         + " ".join(f"{v:.2f}" for v in warped[:, 1]) + " " + " ".join(map(str, labels)))
        (mtfl / f"{listing}.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    print(f"wrote {n} CelebA crops, {args.people * args.per_person} wild photos, "
          f"{args.mtfl + args.mtfl // 4} MTFL faces under {args.out}")


if __name__ == "__main__":
    main()
