"""Five-point alignment: exact similarity fits, photo <-> crop point mappings, parity with cv2, typed errors.

Expectations are computed independently of facemtl.align: the similarity that maps a point set onto the
template is the least-squares solution of a *linear* system in (a, b, tx, ty) for the matrix
[[a, -b, tx], [b, a, ty]] (a rotation-and-scale matrix cannot reflect), solved here with numpy.lstsq.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facemtl import _resources
from facemtl.align import align, similarity_transform, template
from facemtl.errors import InvalidInputError
from facemtl.io import load_image

TOL_PX = 1e-3  # the acceptance bar: points mapped into a crop and back land within 1e-3 px


def similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    """2x3 matrix of x -> scale * R(angle) x + t."""
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]], dtype=np.float64)


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares proper similarity src -> dst by a linear solve (independent of the Umeyama code)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        rhs += [u, v]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def test_template_values_and_scaling() -> None:
    t112 = template()
    assert t112.shape == (5, 2)
    np.testing.assert_allclose(t112[0], [38.2946, 51.6963], atol=1e-4)
    np.testing.assert_allclose(template(56), t112 / 2, atol=1e-5)
    assert t112[0, 0] < t112[1, 0] and t112[3, 0] < t112[4, 0]  # image-left point of each pair first


# ---------------------------------------------------------------- property-based round trips

transforms = st.tuples(
    st.floats(0.2, 5.0),                       # scale
    st.floats(-math.pi, math.pi),              # rotation
    st.floats(-500.0, 500.0), st.floats(-500.0, 500.0),   # translation
)
extra_points = st.lists(st.tuples(st.floats(-1000, 1000), st.floats(-1000, 1000)), min_size=1, max_size=8)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=transforms, points=extra_points, hw=st.tuples(st.integers(16, 80), st.integers(16, 80)),
       seed=st.integers(0, 2**32 - 1))
def test_exact_similarity_maps_landmarks_onto_template_and_back(t, points, hw, seed) -> None:
    forward = similarity(*t)                     # template -> photo
    landmarks = apply(forward, template().astype(np.float64))
    image = np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)
    aligned = align(image, landmarks)

    assert aligned.crops.shape == (1, 112, 112, 3) and aligned.crops.dtype == np.uint8
    assert aligned.size == 112 and aligned.matrices.shape == (1, 2, 3)
    # the photo -> crop matrix is the inverse of the drawn transform
    scale, angle, tx, ty = t
    inverse = similarity(1 / scale, -angle, 0, 0)
    inverse[:, 2] = -inverse[:, :2] @ np.array([tx, ty])
    np.testing.assert_allclose(aligned.matrices[0], inverse, rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(aligned.to_crop(landmarks[None])[0], template(), atol=TOL_PX)

    p = np.array(points, dtype=np.float64)[None]
    np.testing.assert_allclose(aligned.to_image(aligned.to_crop(p)), p, atol=TOL_PX)
    q = p / 10.0  # crop-side points: crop -> photo -> crop
    np.testing.assert_allclose(aligned.to_crop(aligned.to_image(q)), q, atol=TOL_PX)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=transforms, noise=st.lists(st.floats(-8.0, 8.0), min_size=10, max_size=10), points=extra_points,
       size=st.sampled_from([32, 64, 112]), padding=st.integers(0, 20))
def test_noisy_landmarks_round_trip_and_least_squares_fit(t, noise, points, size, padding) -> None:
    forward = similarity(*t)
    landmarks = apply(forward, template().astype(np.float64)) + t[0] * np.reshape(noise, (5, 2))
    image = np.zeros((40, 50, 3), np.uint8)
    aligned = align(image, landmarks, size=size, padding=padding)
    assert aligned.crops.shape == (1, size + 2 * padding, size + 2 * padding, 3)

    expected = lstsq_similarity(landmarks, template(size).astype(np.float64) + padding)
    np.testing.assert_allclose(aligned.matrices[0], expected, rtol=1e-5, atol=1e-5)  # template is float32
    p = np.array(points, dtype=np.float64)[None]
    np.testing.assert_allclose(aligned.to_image(aligned.to_crop(p)), p, atol=TOL_PX)


# ---------------------------------------------------------------- similarity_transform itself


def test_similarity_transform_recovers_known_transforms_exactly() -> None:
    src = np.random.default_rng(0).uniform(-100, 300, (3, 5, 2))
    truth = np.stack([similarity(0.37, 2.9, 12.5, -40.0), similarity(3.2, -1.1, -480, 220),
                      similarity(1.0, 0.0, 0.0, 0.0)])
    dst = np.stack([apply(m, s) for m, s in zip(truth, src)])
    got = similarity_transform(torch.from_numpy(src), torch.from_numpy(dst))
    assert got.shape == (3, 2, 3) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), truth, atol=1e-9)


def test_similarity_transform_broadcasts_a_single_destination() -> None:
    src = np.random.default_rng(1).uniform(0, 200, (4, 5, 2))
    dst = template().astype(np.float64)
    got = similarity_transform(torch.from_numpy(src), torch.from_numpy(dst)).numpy()
    for k in range(4):
        np.testing.assert_allclose(got[k], lstsq_similarity(src[k], dst), atol=1e-9)


def test_similarity_transform_excludes_reflections() -> None:
    src = template().astype(np.float64)
    mirrored = src * np.array([-1.0, 1.0]) + np.array([200.0, 0.0])  # a mirror image: only a reflection fits
    got = similarity_transform(torch.from_numpy(src[None]), torch.from_numpy(mirrored)).numpy()[0]
    lin = got[:, :2]
    assert np.linalg.det(lin) > 0
    # the linear part is a scaled rotation [[a, -b], [b, a]], never a reflection [[a, b], [b, -a]]
    assert lin[0, 0] == pytest.approx(lin[1, 1], abs=1e-12) and lin[0, 1] == pytest.approx(-lin[1, 0], abs=1e-12)
    np.testing.assert_allclose(got, lstsq_similarity(src, mirrored), atol=1e-9)


# ---------------------------------------------------------------- parity with cv2 on a real photo


@pytest.fixture(scope="module")
def photo_and_landmarks() -> tuple[np.ndarray, np.ndarray]:
    from facemtl.detect.detector import FaceDetector

    image = load_image(_resources.sample_photo())
    faces = FaceDetector(device="cpu").detect(image)[0]
    assert len(faces) == 1
    return image, faces[0].landmarks5.astype(np.float64)


@pytest.mark.parametrize("size,padding", [(112, 0), (64, 0), (112, 16), (64, 16)])
def test_crops_match_cv2_warp_affine(photo_and_landmarks, size: int, padding: int) -> None:
    image, landmarks = photo_and_landmarks
    aligned = align(image, landmarks, size=size, padding=padding)
    out = size + 2 * padding
    assert aligned.crops.shape == (1, out, out, 3) and aligned.size == out
    np.testing.assert_allclose(aligned.matrices[0], lstsq_similarity(landmarks, template(size) + padding),
                               atol=1e-6)
    reference = cv2.warpAffine(image, aligned.matrices[0], (out, out), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT)
    diff = np.abs(aligned.crops[0].astype(int) - reference.astype(int))
    assert diff.max() <= 1, f"max difference {diff.max()} grey levels"
    assert diff.mean() < 0.5
    # the template sits at its size's scale, shifted by the padding (the fit is not exact for real points)
    residual = aligned.to_crop(landmarks[None])[0] - (template(size) + padding)
    assert np.abs(residual).max() < 0.06 * size
    np.testing.assert_allclose(residual.mean(axis=0), 0.0, atol=1e-6)  # least squares: zero mean residual
    np.testing.assert_allclose(aligned.to_image(aligned.to_crop(landmarks[None])), landmarks[None], atol=TOL_PX)


@pytest.mark.parametrize("scale,angle", [(0.6, 0.0), (0.45, 2.5), (1.3, -0.7)])
def test_pixel_centres_follow_the_matrix(scale: float, angle: float) -> None:
    """A smooth blob centred at a sub-pixel photo point c appears in the crop centred at M @ c.

    Checks the cv2 pixel-centre convention without cv2: a half-pixel slip would move the centroid by
    about half a pixel.
    """
    landmarks = apply(similarity(scale, angle, 60.3, 70.8), template().astype(np.float64))
    c = landmarks[2] + np.array([0.37, -0.21])  # near the nose, off the pixel grid
    yy, xx = np.mgrid[0:300, 0:300]
    blob = 255 * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * 3.0 ** 2))
    image = np.repeat(np.rint(blob).astype(np.uint8)[:, :, None], 3, axis=2)
    aligned = align(image, landmarks)
    crop = aligned.crops[0, :, :, 1].astype(np.float64)
    gy, gx = np.mgrid[0:112, 0:112]
    centroid = np.array([(crop * gx).sum(), (crop * gy).sum()]) / crop.sum()
    np.testing.assert_allclose(centroid, apply(aligned.matrices[0], c), atol=0.1)


# ---------------------------------------------------------------- many faces at once


def test_many_faces_at_once_equal_one_at_a_time(photo_and_landmarks) -> None:
    image, landmarks = photo_and_landmarks
    rng = np.random.default_rng(3)
    many = np.stack([landmarks] + [apply(similarity(rng.uniform(0.5, 1.5), rng.uniform(-0.5, 0.5), 0, 0),
                                         landmarks - landmarks.mean(0)) + rng.uniform(100, 400, 2)
                                   for _ in range(5)])
    together = align(image, many, size=64, padding=8)
    assert together.crops.shape == (6, 80, 80, 3)
    for k in range(len(many)):
        alone = align(image, many[k], size=64, padding=8)
        np.testing.assert_allclose(together.matrices[k], alone.matrices[0], atol=1e-9)
        diff = np.abs(together.crops[k].astype(int) - alone.crops[0].astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert not np.array_equal(together.crops[0], together.crops[1])


def test_zero_faces_give_empty_crops() -> None:
    aligned = align(np.zeros((20, 30, 3), np.uint8), np.zeros((0, 5, 2)), size=32, padding=4)
    assert aligned.crops.shape == (0, 40, 40, 3) and aligned.crops.dtype == np.uint8
    assert aligned.matrices.shape == (0, 2, 3)


def test_align_does_not_modify_inputs_and_accepts_read_only_images() -> None:
    image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    image.flags.writeable = False
    landmarks = apply(similarity(0.3, 0.1, 10, 10), template().astype(np.float64))
    before = landmarks.copy()
    align(image, landmarks, size=32)
    np.testing.assert_array_equal(landmarks, before)


# ---------------------------------------------------------------- typed errors

GOOD_LANDMARKS = template().astype(np.float64) + 5.0
IMAGE = np.zeros((120, 120, 3), np.uint8)


@pytest.mark.parametrize("landmarks,words", [
    (np.full((5, 2), 7.0), "degenerate"),
    (np.stack([GOOD_LANDMARKS, np.full((5, 2), 3.0)]), "degenerate"),
    (np.where(np.eye(5, 2, dtype=bool), np.nan, GOOD_LANDMARKS), "nan"),
    (np.where(np.eye(5, 2, dtype=bool), np.inf, GOOD_LANDMARKS), "infinite"),
    (np.where(np.eye(5, 2, dtype=bool), -np.inf, GOOD_LANDMARKS), "infinite"),
    (np.zeros((4, 2)), "shape"),
    (np.zeros((5, 3)), "shape"),
    (np.zeros((2, 4, 2)), "shape"),
    (np.zeros(10), "shape"),
    (np.zeros((1, 1, 5, 2)), "shape"),
], ids=["all-equal", "one-of-two-degenerate", "nan", "inf", "-inf", "4x2", "5x3", "2x4x2", "flat", "4d"])
def test_bad_landmarks_raise_invalid_input(landmarks: np.ndarray, words: str) -> None:
    with pytest.raises(InvalidInputError, match=f"(?i){words}"):
        align(IMAGE, landmarks)


@pytest.mark.parametrize("image", [
    IMAGE.astype(np.float32),
    IMAGE.astype(np.float64) / 255,
    IMAGE[:, :, 0],
    np.zeros((120, 120, 4), np.uint8),
    np.zeros((120, 120, 1), np.uint8),
    IMAGE.astype(np.uint16),
    IMAGE.tolist(),
    None,
    np.zeros((0, 120, 3), np.uint8),
    np.zeros((120, 0, 3), np.uint8),
], ids=["float32", "float64", "gray-2d", "rgba", "hw1", "uint16", "list", "none", "no-rows", "no-columns"])
def test_image_not_uint8_rgb_raises_invalid_input(image) -> None:
    with pytest.raises(InvalidInputError, match="RGB uint8"):
        align(image, GOOD_LANDMARKS)


@pytest.mark.parametrize("kwargs,words", [
    ({"size": 7}, "size"), ({"size": 0}, "size"), ({"size": -112}, "size"), ({"size": 64.0}, "size"),
    ({"padding": -1}, "padding"), ({"padding": 1.5}, "padding"),
])
def test_bad_size_or_padding_raise_invalid_input(kwargs: dict, words: str) -> None:
    with pytest.raises(InvalidInputError, match=words):
        align(IMAGE, GOOD_LANDMARKS, **kwargs)


def test_smallest_size_is_accepted() -> None:
    aligned = align(IMAGE, GOOD_LANDMARKS, size=8)
    assert aligned.crops.shape == (1, 8, 8, 3)
    np.testing.assert_allclose(aligned.to_crop(GOOD_LANDMARKS[None])[0], template(8), atol=TOL_PX)
