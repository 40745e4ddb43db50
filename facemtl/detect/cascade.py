"""The MTCNN cascade, batched across photos and pyramid levels.

Every resampling step reads one summed-area table per photo, so it is exact "area" averaging (the same
numbers as the reference's ``F.interpolate(mode="area")``) at a few table look-ups per output pixel.
Stage 1 packs every (photo, pyramid level) into one canvas and runs P-Net over it in row bands (cache
sized, memory bounded); only output cells whose 12x12 window lies wholly inside one level are kept, so
packing changes no result. Stages 2 and 3 resample all candidate boxes of a photo in one gather (pixels
outside the photo read as 0, as in the original MTCNN) instead of one resize per box, and all NMS runs on
the tensors' device.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from ..types import DEFAULT_MIN_FACE
from .nets import ONet, PNet, RNet

PNET_CELL = 12
PNET_STRIDE = 2
LEVEL_NMS = 0.5
"""IoU above which P-Net's boxes suppress each other within one pyramid level..."""
CROSS_LEVEL_NMS = 0.7
"""...and then across the levels of a photo (MTCNN's values)."""
RNET_NMS = 0.7
"""IoU above which R-Net's boxes suppress each other within a photo..."""
ONET_NMS = 0.7
"""...and O-Net's, measured as intersection over the smaller box (MTCNN's values)."""


@dataclass(frozen=True)
class CascadeConfig:
    """Cascade settings: the defaults are MTCNN's published ones."""

    min_face: float = DEFAULT_MIN_FACE
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    factor: float = 0.709
    band_pixels: int = 200_000
    """Canvas pixels P-Net sees per call: small enough to stay in cache and to bound peak memory."""
    chunk: int = 128
    """Crops R-Net / O-Net see per call, for the same reason."""
    edge: str = "clip"
    """Boxes crossing the photo border: "clip" reads only the part inside and stretches it (as
    facenet-pytorch does, so both find the same faces), "pad" reads outside pixels as black (as the
    original MTCNN does)."""


@dataclass
class CascadeOutput:
    """Detections of one photo: boxes (k,4) x1y1x2y2, scores (k,), landmarks (k,5,2), best first."""

    boxes: torch.Tensor
    scores: torch.Tensor
    landmarks: torch.Tensor


def pyramid_scales(height: int, width: int, min_face: float, factor: float) -> list[float]:
    """Scales at which a 12 px P-Net window sees faces from ``min_face`` px up to the whole photo."""
    scale = PNET_CELL / min_face
    side = min(height, width) * scale
    scales = []
    while side >= PNET_CELL:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


@dataclass
class _Level:
    """One pyramid level of one photo and its place on the canvas."""

    image: int
    scale: float
    height: int
    width: int
    x: int = 0
    y: int = 0


def _skyline_place(skyline: list[list[int]], width: int, w: int, h: int) -> tuple[int, int]:
    """Put a w x h rectangle at the lowest, then leftmost, spot of a skyline of [x, top, length] segments."""
    best: tuple[int, int] | None = None
    for x, _, _ in skyline:
        if x + w > width:
            break
        top = max(s[1] for s in skyline if s[0] < x + w and s[0] + s[2] > x)
        if best is None or (top, x) < best:
            best = (top, x)
    assert best is not None, "every rectangle fits the canvas width"
    y, x = best
    kept = [[x, y + h, w]]
    for sx, sy, sl in skyline:
        if sx < x:
            kept.append([sx, sy, min(sl, x - sx)])
        if sx + sl > x + w:
            start = max(sx, x + w)
            kept.append([start, sy, sx + sl - start])
    skyline[:] = sorted(kept)
    return x, y


def _pack(levels: list[_Level]) -> tuple[int, int]:
    """Skyline-pack the levels at even offsets into the least-area canvas tried; return its (H, W)."""
    sizes = [(lv.width + lv.width % 2, lv.height + lv.height % 2) for lv in levels]
    order = sorted(range(len(levels)), key=lambda k: (-sizes[k][1], -sizes[k][0]))
    widest = max(w for w, _ in sizes)
    best: tuple[int, int, list[tuple[int, int]]] | None = None
    for stretch in (1.0, 1.25, 1.5, 2.0):
        width = max(widest, int(widest * stretch) // 2 * 2)
        skyline = [[0, 0, width]]
        spots = [(0, 0)] * len(levels)
        for k in order:
            spots[k] = _skyline_place(skyline, width, *sizes[k])
        height = max(y + sizes[k][1] for k, (_, y) in enumerate(spots))
        if best is None or height * width < best[0] * best[1]:
            best = (height, width, spots)
    assert best is not None
    for lv, (x, y) in zip(levels, best[2]):
        lv.x, lv.y = x, y
    return best[0], best[1]


def integral_image(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """Summed-area table (H+1, W+1, 3) of an RGB uint8 photo, exact: int32, or float64 (exact for integer
    sums below 2**53) when a photo's total could overflow int32.

    On the CPU OpenCV builds it about 20x faster than ``torch.cumsum``; elsewhere torch builds it on device.
    """
    h, w = image.shape[:2]
    wide = h * w * 255 >= 2**31
    if device.type == "cpu":
        return torch.from_numpy(cv2.integral(np.ascontiguousarray(image), sdepth=cv2.CV_64F if wide else cv2.CV_32S))
    pixels = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    table = torch.zeros((h + 1, w + 1, 3), dtype=torch.float64 if wide else torch.int32, device=device)
    table[1:, 1:] = pixels.to(table.dtype).cumsum(0).cumsum(1)
    return table


def _window_bounds(start: torch.Tensor, length: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pooling windows ``[start + floor(i*L/size), start + ceil((i+1)*L/size))``, per row."""
    i = torch.arange(size, device=start.device)
    lo = (i[None] * length[:, None]) // size
    hi = ((i[None] + 1) * length[:, None] + size - 1) // size
    return start[:, None] + lo, start[:, None] + hi


def area_resize(table: torch.Tensor, height: int, width: int, out: torch.Tensor) -> None:
    """Write the whole photo area-resampled to (height, width, 3) into ``out``, as ``F.interpolate(mode="area")``.

    Rows go in chunks so the row gathers of a large photo's table never need more than ~32 MB at once.
    """
    zero = torch.zeros(1, dtype=torch.long, device=table.device)
    rs, re = (b[0] for b in _window_bounds(zero, zero + table.shape[0] - 1, height))
    cs, ce = (b[0] for b in _window_bounds(zero, zero + table.shape[1] - 1, width))
    # Every channel's divisor spelt out: broadcasting one over a 3-wide innermost axis is ~8x slower.
    widths = (ce - cs).float().repeat_interleave(table.shape[2])
    area = ((re - rs).float()[:, None] * widths[None, :]).view(height, width, table.shape[2])
    step = max(1, (32 << 20) // (table.shape[1] * table.shape[2] * table.element_size() * 2))
    for r0 in range(0, height, step):
        r1 = min(height, r0 + step)
        band = table.index_select(0, re[r0:r1]).sub_(table.index_select(0, rs[r0:r1]))
        total = band.index_select(1, ce).sub_(band.index_select(1, cs))
        torch.div(total, area[r0:r1], out=out[r0:r1])


def area_crops(table: torch.Tensor, regions: torch.Tensor, size: int) -> torch.Tensor:
    """Area-resample integer pixel regions (k,4: x0,y0,x1,y1, end exclusive) to (k, size, size, 3) float.

    Equals ``F.interpolate(region, mode="area")`` per region, with pixels outside the photo read as 0. One
    gather reads the table on the grid of every window's row bounds x column bounds (int32 indices where the
    table allows: half the index memory of int64, ~20% faster); two differences of its halves give the sums.
    """
    rows, cols, channels = table.shape
    x0, y0, x1, y1 = regions.long().unbind(1)
    xs, xe = _window_bounds(x0, (x1 - x0).clamp(min=0), size)
    ys, ye = _window_bounds(y0, (y1 - y0).clamp(min=0), size)
    inv_area = 1.0 / ((ye - ys)[:, :, None] * (xe - xs)[:, None, :]).clamp(min=1).unsqueeze(3).float()
    inv_area = inv_area.expand(-1, -1, -1, channels).contiguous()  # as in area_resize: no 3-wide broadcast
    index = torch.int32 if rows * cols < 2**31 else torch.long
    row_bounds = torch.cat([ye.clamp(0, rows - 1), ys.clamp(0, rows - 1)], dim=1).to(index) * cols
    col_bounds = torch.cat([xe.clamp(0, cols - 1), xs.clamp(0, cols - 1)], dim=1).to(index)
    grid = (row_bounds[:, :, None] + col_bounds[:, None, :]).view(-1)
    k = len(regions)
    corners = table.reshape(-1, channels).index_select(0, grid).view(k, 2, size, 2 * size * channels)
    row_sums = torch.sub(corners[:, 0], corners[:, 1]).view(k, size, 2, size * channels)
    sums = torch.sub(row_sums[:, :, 0], row_sums[:, :, 1]).view(k, size, size, channels)
    return sums.float().mul_(inv_area)


INPUT_MEAN = 127.5
INPUT_SCALE = 0.0078125


def fold_input_scaling(net: nn.Module) -> nn.Module:
    """Copy of ``net`` that takes raw 0..255 pixels: MTCNN's ``(x - 127.5) / 128`` moved into ``conv1``.

    Exact because ``conv1`` has no padding; it saves a pass over every canvas pixel and crop.
    """
    net = copy.deepcopy(net)
    conv = net.conv1
    with torch.no_grad():
        conv.bias -= INPUT_MEAN * INPUT_SCALE * conv.weight.sum(dim=(1, 2, 3))
        conv.weight *= INPUT_SCALE
    return net


def _pnet_grid(side: int) -> int:
    """P-Net output cells along a canvas side: one per 12-pixel window at stride 2."""
    return (side - PNET_CELL) // PNET_STRIDE + 1


def _level_cells(side: int) -> int:
    """P-Net output cells along a level side, counting MTCNN's last, partly outside, window on odd sides."""
    return (side - 1) // 2 - 4


def _level_maps(levels: list[_Level], height: int, width: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For a packed canvas: the level owning each P-Net cell (-1 for none) and the canvas pixels that
    MTCNN's last, partly outside, window on an odd side reads as outside its level."""
    owner = torch.full((_pnet_grid(height), _pnet_grid(width)), -1, dtype=torch.int32, device=device)
    outside = torch.zeros(height - 2, width - 2, dtype=torch.bool, device=device)
    for k, lv in enumerate(levels):
        y, x, h, w = lv.y, lv.x, lv.height, lv.width
        cy, cx = y // PNET_STRIDE, x // PNET_STRIDE
        owner[cy:cy + _level_cells(h), cx:cx + _level_cells(w)] = k
        if w % 2:
            outside[y:y + h - 1, x + w - 2] = True
        if h % 2:
            outside[y + h - 2, x:x + w - 1] = True
    return owner, outside


def _run_pnet_banded(pnet: PNet, canvas: torch.Tensor, outside: torch.Tensor, owned: torch.Tensor, threshold: float,
                     band_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """P-Net over a canvas in row bands overlapping by one window, so every output cell is computed once:
    face probability (rows, cols) of every cell, regression (rows, cols, 4) of the ``owned`` cells whose
    probability reaches ``threshold`` (other entries are left unset). Both maps are allocated once, so no
    band leaves small tensors behind to fragment the heap under the next band's large ones."""
    height, width = canvas.shape[2], canvas.shape[3]
    rows_out = _pnet_grid(height)
    band_rows = max(1, _pnet_grid(band_pixels // width))
    prob = torch.empty(owned.shape, device=canvas.device)
    reg = torch.empty(*owned.shape, 4, device=canvas.device)
    for start in range(0, rows_out, band_rows):
        n = min(band_rows, rows_out - start)
        y0 = start * PNET_STRIDE
        y1 = y0 + (n - 1) * PNET_STRIDE + PNET_CELL
        _run_pnet_band(pnet, canvas[:, :, y0:y1], outside[y0:y1 - 2], owned[start:start + n], threshold,
                       prob[start:start + n], reg[start:start + n])
    return prob, reg


def _run_pnet_band(pnet: PNet, band: torch.Tensor, outside: torch.Tensor, owned: torch.Tensor, threshold: float,
                   prob: torch.Tensor, reg: torch.Tensor) -> None:
    """Fill one band's rows of the probability and regression maps. Every cell gets only its face logit (one
    matrix-vector product); the regression head runs on the cells kept: a 2-way softmax and a 6-column
    matmul over every cell cost more than the rest of the head."""
    cells = pnet.features(band, outside)[0, :, :len(prob)].permute(1, 2, 0)
    face_w, face_b = pnet.face_logit()
    torch.addmv(face_b, cells.reshape(-1, cells.shape[2]), face_w, out=prob.view(-1)).sigmoid_()
    rows, cols = ((prob >= threshold) & owned).nonzero(as_tuple=True)
    reg[rows, cols] = torch.addmm(pnet.conv4_2.bias, cells[rows, cols], pnet.conv4_2.weight.flatten(1).T)


def cell_boxes(cells: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Photo boxes (k,4) of P-Net's 12x12 windows at output cells (k,2: x, y) of levels at ``scale`` (k,1)."""
    return torch.cat([((PNET_STRIDE * cells + 1) / scale).floor(),
                      ((PNET_STRIDE * cells + PNET_CELL) / scale).floor()], dim=1)


def _levels_may_overlap(scales: list[float], threshold: float) -> bool:
    """Whether P-Net boxes of two different pyramid levels can overlap by more than ``threshold`` IoU.

    At scale s a box's sides (:func:`cell_boxes`) are floor(11/s) or one more (the floors of its two corners; a
    0.01 margin covers float32 rounding), and IoU is at most the smaller box's area over the larger's. With
    MTCNN's factor 0.709 the areas of neighbouring levels differ about 2x, so the cross-level NMS can suppress
    nothing (boxes of one level already overlap by at most ``LEVEL_NMS``) and is skipped: 2.4 ms of a photo's
    ~250 on one thread.
    """
    if LEVEL_NMS > threshold:
        return True
    span = PNET_CELL - 1
    bounds = sorted((math.floor(span / s - 0.01), math.floor(span / s + 0.01) + 1) for s in set(scales))
    return any(largest_small ** 2 > threshold * smallest_large ** 2
               for (_, largest_small), (smallest_large, _) in zip(bounds, bounds[1:]))


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow boxes to squares around their centres (MTCNN's ``rerec``)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    x1 = boxes[:, 0] + w * 0.5 - side * 0.5
    y1 = boxes[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor, plus_one: bool = True) -> torch.Tensor:
    """Apply bounding-box regression offsets given in units of the box size."""
    extra = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    return boxes + reg * torch.stack([w, h, w, h], dim=1)


def _crops(tables: list[torch.Tensor], boxes: torch.Tensor, image_ids: torch.Tensor, size: int,
           edge: str) -> torch.Tensor:
    """Network inputs for boxes grouped by photo: MTCNN's region ``trunc(x1)-1 .. trunc(x2)``, area-resampled.

    With ``edge="clip"`` the region is first cut to the photo (stretching border faces).
    """
    t = boxes.trunc()
    regions = torch.cat([t[:, :2] - 1, t[:, 2:]], dim=1)
    ids, counts = torch.unique_consecutive(image_ids, return_counts=True)
    parts = regions.split(counts.tolist())
    if edge == "clip":
        parts = [torch.minimum(part.clamp(min=0), _limits(tables[i])) for i, part in zip(ids.tolist(), parts)]
    crops = [area_crops(tables[i], part, size) for i, part in zip(ids.tolist(), parts)]
    return (crops[0] if len(crops) == 1 else torch.cat(crops)).permute(0, 3, 1, 2)


def _limits(table: torch.Tensor) -> torch.Tensor:
    """(W, H, W, H) of the photo behind a summed-area table, for clipping regions."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    return torch.tensor([w, h, w, h], dtype=torch.float32, device=table.device)


def _by_image(image_ids: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Reorder tensors so boxes of the same photo are contiguous (stable, so score order is kept)."""
    order = torch.argsort(image_ids, stable=True)
    return (image_ids[order], *(t[order] for t in tensors))


def _chunked(net: nn.Module, x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, ...]:
    """Run ``net`` over ``x`` in chunks; concatenate each output."""
    outs = [net(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    return outs[0] if len(outs) == 1 else tuple(torch.cat(parts) for parts in zip(*outs))


def nms_min(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS with overlap = intersection / smaller area, per group; kept indices, best first.

    Solved as the fixed point of "keep i unless a kept, better box overlaps it": it equals the greedy
    result and needs only tensor ops (a few iterations in practice).
    """
    if len(boxes) == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    b, g = boxes[order], groups[order]
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    wh = (torch.minimum(b[:, None, 2:], b[None, :, 2:]) - torch.maximum(b[:, None, :2], b[None, :, :2]) + 1)
    inter = wh.clamp(min=0).prod(dim=2)
    overlap = inter / torch.minimum(area[:, None], area[None, :])
    n = len(b)
    earlier = torch.ones(n, n, dtype=torch.bool, device=b.device).triu(1)
    suppresses = (overlap > threshold) & earlier & (g[:, None] == g[None, :])
    keep = torch.ones(n, dtype=torch.bool, device=b.device)
    for _ in range(n):
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]


class Cascade(nn.Module):
    """P-Net, R-Net and O-Net with the batched three-stage cascade as ``forward``."""

    def __init__(self, pnet: PNet, rnet: RNet, onet: ONet, config: CascadeConfig = CascadeConfig()) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = (fold_input_scaling(n) for n in (pnet, rnet, onet))
        self.config = config
        self.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, images: list[np.ndarray], config: CascadeConfig | None = None) -> list[CascadeOutput]:
        """Detect faces in RGB uint8 (H, W, 3) photos; results on this module's device, best first."""
        cfg = config or self.config
        device = next(self.parameters()).device
        tables = [integral_image(img, device) for img in images]
        boxes, image_ids = self._stage1(tables, cfg)
        boxes, image_ids = self._stage2(tables, boxes, image_ids, cfg)
        boxes, scores, landmarks, image_ids = self._stage3(tables, boxes, image_ids, cfg)
        outputs = []
        for i in range(len(images)):
            sel = (image_ids == i).nonzero().squeeze(1)
            sel = sel[torch.argsort(scores[sel], descending=True, stable=True)]
            outputs.append(CascadeOutput(boxes[sel], scores[sel], landmarks[sel]))
        return outputs

    def _stage1(self, tables: list[torch.Tensor], cfg: CascadeConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net proposals over every photo and pyramid level at once: squared boxes and photo ids."""
        device = tables[0].device if tables else torch.device("cpu")
        levels = [
            _Level(i, s, int((t.shape[0] - 1) * s + 1), int((t.shape[1] - 1) * s + 1))
            for i, t in enumerate(tables)
            for s in pyramid_scales(t.shape[0] - 1, t.shape[1] - 1, cfg.min_face, cfg.factor)
        ]
        if not levels:
            return torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.long, device=device)
        height, width = _pack(levels)
        canvas = torch.zeros(1, height, width, 3, device=device)
        for lv in levels:
            area_resize(tables[lv.image], lv.height, lv.width, canvas[0, lv.y:lv.y + lv.height, lv.x:lv.x + lv.width])
        owner, outside = _level_maps(levels, height, width, device)
        owned = owner >= 0
        prob, reg = _run_pnet_banded(self.pnet, canvas.permute(0, 3, 1, 2), outside, owned, cfg.thresholds[0],
                                     cfg.band_pixels)
        del canvas
        cy, cx = ((prob >= cfg.thresholds[0]) & owned).nonzero(as_tuple=True)
        scores, offsets = prob[cy, cx], reg[cy, cx]
        level_ids = owner[cy, cx].long()
        origin = torch.tensor([[lv.x // PNET_STRIDE, lv.y // PNET_STRIDE] for lv in levels], device=device)
        scales = [lv.scale for lv in levels]
        scale = torch.tensor(scales, device=device)[level_ids, None]
        boxes = cell_boxes((torch.stack([cx, cy], dim=1) - origin[level_ids]).float(), scale)
        keep = batched_nms(boxes, scores, level_ids, LEVEL_NMS)
        level_image = torch.tensor([lv.image for lv in levels], device=device)
        boxes, scores, offsets, image_ids = boxes[keep], scores[keep], offsets[keep], level_image[level_ids[keep]]
        if _levels_may_overlap(scales, CROSS_LEVEL_NMS):
            keep = batched_nms(boxes, scores, image_ids, CROSS_LEVEL_NMS)
            boxes, offsets, image_ids = boxes[keep], offsets[keep], image_ids[keep]
        return _square(_regress(boxes, offsets, plus_one=False)), image_ids

    def _stage2(self, tables: list[torch.Tensor], boxes: torch.Tensor, image_ids: torch.Tensor,
                cfg: CascadeConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """R-Net refinement: keep confident boxes, NMS per photo, regress and square them."""
        if len(boxes) == 0:
            return boxes, image_ids
        image_ids, boxes = _by_image(image_ids, boxes)
        offsets, scores = _chunked(self.rnet, _crops(tables, boxes, image_ids, 24, cfg.edge), cfg.chunk)
        ok = scores > cfg.thresholds[1]
        boxes, scores, offsets, image_ids = boxes[ok], scores[ok], offsets[ok], image_ids[ok]
        keep = batched_nms(boxes, scores, image_ids, RNET_NMS)
        return _square(_regress(boxes[keep], offsets[keep])), image_ids[keep]

    def _stage3(self, tables: list[torch.Tensor], boxes: torch.Tensor, image_ids: torch.Tensor,
                cfg: CascadeConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """O-Net output: final boxes, scores and five landmarks, after a Min-overlap NMS per photo."""
        if len(boxes) == 0:
            return boxes, boxes.new_zeros(0), boxes.new_zeros(0, 5, 2), image_ids
        image_ids, boxes = _by_image(image_ids, boxes)
        offsets, points, scores = _chunked(self.onet, _crops(tables, boxes, image_ids, 48, cfg.edge), cfg.chunk)
        ok = scores > cfg.thresholds[2]
        boxes, scores, offsets, points, image_ids = boxes[ok], scores[ok], offsets[ok], points[ok], image_ids[ok]
        size = boxes[:, 2:] - boxes[:, :2] + 1
        landmarks = torch.stack([points[:, :5], points[:, 5:]], dim=2) * size[:, None, :] + boxes[:, None, :2] - 1
        boxes = _regress(boxes, offsets)
        keep = nms_min(boxes, scores, image_ids, ONET_NMS)
        return boxes[keep], scores[keep], landmarks[keep], image_ids[keep]
