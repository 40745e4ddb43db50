"""The detection stage: exactness of the batched cascade's pieces, and behaviour on real photos."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import box_iou

from facemtl import _resources
from facemtl.detect import cascade
from facemtl.detect.cascade import (_Level, _levels_may_overlap, _pack, area_crops, area_resize, cell_boxes,
                                    fold_input_scaling, integral_image, nms_min, pyramid_scales)
from facemtl.detect.detector import FaceDetector, detect
from facemtl.detect.nets import _conv3x3_on_pixel_pairs, _max_pool_3x3_s2
from facemtl.detect.weights import load_detector_nets
from facemtl.device import torch_threads
from facemtl.errors import InvalidInputError
from facemtl.io import load_image

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(_resources.sample_photo())


def test_astronaut_one_face_with_ordered_landmarks(detector: FaceDetector, astronaut: np.ndarray) -> None:
    faces = detector.detect(astronaut)
    assert len(faces) == 1 and len(faces[0]) == 1
    face = faces[0][0]
    x1, y1, x2, y2 = face.box
    assert face.score > 0.99
    assert 150 < x1 < 220 and 40 < y1 < 110 and 60 < x2 - x1 < 140  # the face sits left of centre, near the top
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks5
    assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0]            # image-left point of each pair first
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    assert all(x1 <= p[0] <= x2 and y1 <= p[1] <= y2 for p in face.landmarks5)


def test_batch_mixing_sizes_gray_and_no_face_equals_single_calls(detector: FaceDetector,
                                                                 astronaut: np.ndarray) -> None:
    gray = np.asarray(astronaut.mean(axis=2), dtype=np.uint8)                  # 2-D grayscale array
    small = astronaut[::2, ::2]                                                # another size
    blank = np.full((300, 450, 3), 128, np.uint8)                              # no face at all
    batch = [astronaut, gray, blank, small]
    together = detector.detect(batch)
    assert [len(r) for r in together] == [1, 1, 0, 1]
    for image, faces in zip(batch, together):
        alone = detector.detect(image)[0]
        assert len(alone) == len(faces)
        for a, b in zip(alone, faces):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks5, b.landmarks5, atol=1e-3)


def test_empty_inputs_and_bad_settings(detector: FaceDetector) -> None:
    assert detector.detect([]) == []
    assert detector.detect(np.zeros((8, 8, 3), np.uint8)) == [[]]                  # smaller than one window
    with pytest.raises(InvalidInputError):
        detector.detect(np.zeros((50, 50, 3), np.uint8), min_face=0)
    with pytest.raises(InvalidInputError):
        FaceDetector(factor=1.2)
    with pytest.raises(InvalidInputError):
        FaceDetector(edge="wrap")


def test_a_list_on_the_cpu_leaves_torch_thread_count_as_it_was(detector: FaceDetector, astronaut: np.ndarray) -> None:
    """Workers run single-threaded; the caller's thread count is back afterwards, also after an error."""
    with torch_threads(2):
        assert len(detector.detect_arrays([astronaut, astronaut[:200]])) == 2
        assert torch.get_num_threads() == 2
        with pytest.raises(InvalidInputError), torch_threads(1):
            detector.detect_arrays([astronaut], min_face=0)
        assert torch.get_num_threads() == 2


def test_module_level_detect_returns_one_list_per_photo(astronaut: np.ndarray) -> None:
    out = detect([astronaut, np.full((64, 64, 3), 200, np.uint8)])
    assert isinstance(out, list) and len(out) == 2 and len(out[0]) == 1 and out[1] == []


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.sampled_from([24, 48]))
def test_area_crops_equal_torch_area_interpolation(seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (40, 57, 3), dtype=np.uint8)
    table = integral_image(image, CPU)
    x0, y0 = int(rng.integers(-10, 50)), int(rng.integers(-10, 35))
    w, h = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    regions = torch.tensor([[x0, y0, x0 + w, y0 + h]])
    got = area_crops(table, regions, size)[0]
    padded = np.zeros((40 + 140, 57 + 140, 3), np.float32)          # zeros outside the photo
    padded[70:110, 70:127] = image
    region = torch.from_numpy(padded[70 + y0:70 + y0 + h, 70 + x0:70 + x0 + w]).permute(2, 0, 1)[None]
    want = F.interpolate(region, size=(size, size), mode="area")[0].permute(1, 2, 0)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_area_resize_equals_torch_area_interpolation() -> None:
    image = np.random.default_rng(1).integers(0, 256, (123, 211, 3), dtype=np.uint8)
    got = torch.empty(61, 150, 3)
    area_resize(integral_image(image, CPU), 61, 150, got)
    want = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(61, 150), mode="area")
    torch.testing.assert_close(got, want[0].permute(1, 2, 0), atol=1e-4, rtol=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(12, 300), st.integers(12, 300)), min_size=1, max_size=25))
def test_packing_places_levels_apart_inside_the_canvas_at_even_offsets(sizes: list[tuple[int, int]]) -> None:
    levels = [_Level(0, 1.0, h, w) for h, w in sizes]
    height, width = _pack(levels)
    occupied = np.zeros((height, width), bool)
    for lv in levels:
        assert lv.x % 2 == 0 and lv.y % 2 == 0
        block = occupied[lv.y:lv.y + lv.height + lv.height % 2, lv.x:lv.x + lv.width + lv.width % 2]
        assert block.shape == (lv.height + lv.height % 2, lv.width + lv.width % 2), "level leaves the canvas"
        assert not block.any(), "levels overlap"
        block[:] = True


@pytest.mark.parametrize("threshold", [0.0, 0.02])
def test_pnet_on_a_packed_canvas_equals_pnet_on_each_level_alone(threshold: float) -> None:
    """Packing (with MTCNN's ceil-mode cells on odd sides) changes no P-Net output cell: every probability, and
    the regression of every cell at or above the threshold (the only ones the banded run computes)."""
    from facemtl.detect.cascade import _level_cells, _level_maps, _run_pnet_banded
    pnet = fold_input_scaling(load_detector_nets()["pnet"]).eval()
    rng = np.random.default_rng(0)
    levels = [_Level(i, 1.0, h, w) for i, (h, w) in enumerate([(37, 52), (40, 33), (25, 25), (60, 91)])]
    images = [rng.integers(0, 256, (lv.height, lv.width, 3)).astype(np.float32) for lv in levels]
    height, width = _pack(levels)
    canvas = torch.zeros(1, height, width, 3)
    for lv, img in zip(levels, images):
        canvas[0, lv.y:lv.y + lv.height, lv.x:lv.x + lv.width] = torch.from_numpy(img)
    owner, outside = _level_maps(levels, height, width, torch.device("cpu"))
    with torch.no_grad():
        prob, reg = _run_pnet_banded(pnet, canvas.permute(0, 3, 1, 2), outside, owner >= 0, threshold,
                                     band_pixels=3000)
        kept = 0
        for lv, img in zip(levels, images):
            alone_reg, alone_prob = pnet(torch.from_numpy(img).permute(2, 0, 1)[None])
            rows, cols = _level_cells(lv.height), _level_cells(lv.width)
            assert alone_prob.shape[1:] == (rows, cols)
            got = prob[lv.y // 2:lv.y // 2 + rows, lv.x // 2:lv.x // 2 + cols]
            torch.testing.assert_close(got, alone_prob[0], atol=1e-5, rtol=0)
            r, c = (got >= threshold).nonzero(as_tuple=True)
            got_reg = reg[lv.y // 2:lv.y // 2 + rows, lv.x // 2:lv.x // 2 + cols][r, c]
            torch.testing.assert_close(got_reg, alone_reg[0, :, r, c].T, atol=1e-4, rtol=0)
            kept += len(r)
    assert kept > 0


@pytest.mark.parametrize("height,width", [(200, 300), (51, 77), (12, 12), (40, 13)])
def test_channels_last_fast_paths_equal_the_plain_layers(height: int, width: int) -> None:
    """The three nets' channels-last routes (first conv on pixel pairs, tiled PReLU, sparse outside fill, pooling
    on views) give the plain NCHW layers' outputs, even and odd sides alike."""
    nets = {k: fold_input_scaling(v).eval() for k, v in load_detector_nets().items()}
    rng = torch.Generator().manual_seed(height * width)
    x = torch.rand(1, 3, height, width, generator=rng) * 255
    outside = torch.rand(height - 2, width - 2, generator=rng) < 0.05
    with torch.no_grad():
        plain = nets["pnet"](x, outside.clone())
        fast = nets["pnet"](x.contiguous(memory_format=torch.channels_last), outside)
        crops = torch.rand(37, 3, 24, 24, generator=rng) * 255
        plain_r = nets["rnet"](crops)
        fast_r = nets["rnet"](crops.contiguous(memory_format=torch.channels_last))
        crops = torch.rand(11, 3, 48, 48, generator=rng) * 255
        plain_o = nets["onet"](crops)
        fast_o = nets["onet"](crops.contiguous(memory_format=torch.channels_last))
    for a, b in zip((*plain, *plain_r, *plain_o), (*fast, *fast_r, *fast_o)):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("out_channels", [10, 28])
def test_conv_on_pixel_pairs_equals_the_conv(out_channels: int) -> None:
    """A 3x3 convolution run on pairs of adjacent pixels gives the convolution's output in its channels-last
    layout, for every even width from the smallest on and for several photos at once."""
    rng = torch.Generator().manual_seed(out_channels)
    conv = torch.nn.Conv2d(3, out_channels, 3)
    for height, width in [(3, 4), (12, 12), (5, 30), (41, 64), (130, 242)]:
        x = (torch.rand(3, 3, height, width, generator=rng) * 255).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            got, want = _conv3x3_on_pixel_pairs(x, conv), conv(x)
        assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-6)


def test_strided_3x3_pool_equals_torch_pooling_on_every_side() -> None:
    """The 3x3 / stride-2 / ceil-mode pool on strided views equals ``nn.MaxPool2d`` for odd and even sides,
    including windows cut short at the far edge."""
    pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)
    rng = torch.Generator().manual_seed(3)
    for height in range(3, 30):
        for width in (3, 4, 9, 22, 23):
            x = torch.randn(2, 28, height, width, generator=rng).contiguous(memory_format=torch.channels_last)
            assert torch.equal(_max_pool_3x3_s2(x, pool), pool(x)), (height, width)


def _greedy_min_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, t: float) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            if groups[i] != groups[j]:
                continue
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1 + 1) * max(0.0, yy2 - yy1 + 1)
            area = lambda b: (b[2] - b[0] + 1) * (b[3] - b[1] + 1)  # noqa: E731
            if inter / min(area(boxes[i]), area(boxes[j])) > t:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(0, 40))
def test_min_nms_equals_the_greedy_loop(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1).astype(np.float32)
    scores = rng.permutation(n).astype(np.float32)
    groups = rng.integers(0, 3, n)
    got = nms_min(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.7).tolist()
    assert got == _greedy_min_nms(boxes, scores, groups, 0.7)


@settings(max_examples=30, deadline=None)
@given(min_face=st.floats(12, 80), factor=st.floats(0.5, 0.95))
def test_cross_level_nms_is_skipped_only_where_levels_cannot_overlap(min_face: float, factor: float) -> None:
    """Where the skip rule says no two boxes of different pyramid levels can overlap by more than 0.7 IoU, none
    of the boxes of every cell of a 30x30 patch of each level does; close factors do overlap (the rule fires)."""
    scales = pyramid_scales(2000, 3000, min_face, factor)
    grid = torch.stack(torch.meshgrid(torch.arange(30.0), torch.arange(30.0), indexing="xy"), dim=2).view(-1, 2)
    per_level = []
    for s in scales[:6]:
        origin = round(300 * s / 2)                                    # the same photo region at every level
        per_level.append(cell_boxes(grid + origin, torch.full((len(grid), 1), s, dtype=torch.float32)))
    worst = max(float(box_iou(a, b).max()) for i, a in enumerate(per_level) for b in per_level[i + 1:])
    may_overlap = _levels_may_overlap(scales, 0.7)
    if not may_overlap:
        assert worst <= 0.7
    if factor >= 0.9:
        assert may_overlap and worst > 0.7


def test_skipping_the_cross_level_nms_changes_no_detection(astronaut: np.ndarray, monkeypatch) -> None:
    """The cascade with the cross-level NMS forced on finds exactly what it finds with the NMS skipped."""
    photos = [astronaut, np.ascontiguousarray(astronaut[::2, ::3]), np.ascontiguousarray(astronaut[50:, 20:400])]
    skipped = FaceDetector(device="cpu").detect_arrays(photos)
    monkeypatch.setattr(cascade, "_levels_may_overlap", lambda scales, threshold: True)
    forced = FaceDetector(device="cpu").detect_arrays(photos)
    for a, b in zip(skipped, forced):
        assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores)
        assert torch.equal(a.landmarks, b.landmarks)


def test_edge_modes_differ_only_for_faces_at_the_border(detector: FaceDetector, astronaut: np.ndarray) -> None:
    cut = np.ascontiguousarray(astronaut[:, 185:])                       # slice the face at the left border
    clip = detector.detect(cut)[0]
    pad = FaceDetector(device="cpu", edge="pad").detect(cut)[0]
    assert len(clip) >= 1 and len(pad) >= 1
    inner = detector.detect(astronaut)[0][0]
    padded_inner = FaceDetector(device="cpu", edge="pad").detect(astronaut)[0][0]
    np.testing.assert_allclose(inner.box, padded_inner.box, atol=1e-3)  # a face away from the border: same


def test_large_photo_peak_memory_under_2_gib(tmp_path) -> None:
    """A 6000x4000 photo (the sample face tiled in) is processed with peak RSS under 2 GiB."""
    script = textwrap.dedent(f"""
        import resource, numpy as np, torch
        torch.set_num_threads(2)
        from facemtl.io import load_image
        from facemtl.detect.detector import FaceDetector
        face = load_image({str(_resources.sample_photo())!r})
        big = np.zeros((4000, 6000, 3), np.uint8)
        big[:] = 90
        big[1000:1512, 2000:2512] = face
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        faces = FaceDetector(device="cpu").detect(big)[0]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(len(faces), base, peak)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    n_faces, _, peak_kib = (int(v) for v in out.stdout.split())
    assert n_faces >= 1
    assert peak_kib * 1024 < 2 * 2**30, f"peak RSS {peak_kib / 2**20:.2f} GiB"
