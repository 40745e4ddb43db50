"""The three MTCNN networks (Zhang et al., 2016). Parameter names follow the published weights.

On channels-last inputs (the cascade's) a few layers take faster routes with the same results: torch's
PReLU, masked fill and 2x2 max-pool broadcast over a short innermost channel axis there, which does not
vectorise (10 channels: 4-10x slower than on NCHW), torch's 3x3 max-pool writes argmax indices and
leaves a channel count that is not a multiple of 8 partly scalar, and P-Net's first convolution (3 channels
in, 10 out) runs faster on pairs of pixels. Other inputs (export, tests) take the plain
layers. The cascade reads P-Net's 1x1 heads as matrix products over :meth:`PNet.features` itself, only
where it needs them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PReLU; on channels-last input as one (N*H, W*C) PReLU whose per-column slopes are the channel slopes
    tiled W times, so the slopes run along the long contiguous axis."""
    if not _is_channels_last(x):
        return F.prelu(x, weight)
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h, w * c)
    return F.prelu(rows, weight.repeat(w)).view(n, h, w, c).permute(0, 3, 1, 2)


def _conv3x3_on_pixel_pairs(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv`` (3x3, stride 1, no padding) on channels-last input of even width, run on pairs of adjacent pixels
    taken as single 2C-channel pixels by a 3x2 kernel that gives both output pixels' channels: the same numbers
    in the same (N, O, H-2, W-2) channels-last layout, ~20% faster for P-Net's first layer, whose 3 input and 10
    output channels fill vectors poorly."""
    n, c, h, w = x.shape
    zero = conv.weight.new_zeros(conv.weight.shape[:3])
    w0, w1, w2 = conv.weight.unbind(3)
    even = torch.stack([torch.cat([w0, w1], 1), torch.cat([w2, zero], 1)], dim=3)  # output pixel 2j
    odd = torch.stack([torch.cat([zero, w0], 1), torch.cat([w1, w2], 1)], dim=3)   # output pixel 2j+1
    pairs = x.permute(0, 2, 3, 1).reshape(n, h, w // 2, 2 * c).permute(0, 3, 1, 2)
    out = F.conv2d(pairs, torch.cat([even, odd]), conv.bias.repeat(2))
    return out.permute(0, 2, 3, 1).reshape(n, h - 2, w - 2, -1).permute(0, 3, 1, 2)


def _fill_outside(x: torch.Tensor, outside: torch.Tensor) -> None:
    """Set every channel of the (H, W) positions marked in ``outside`` to -1e30, in place; on channels-last
    input only those positions are written."""
    if not _is_channels_last(x) or x.shape[0] != 1:
        x.masked_fill_(outside, -1e30)
        return
    where = outside.flatten().nonzero().squeeze(1)
    x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).index_fill_(0, where, -1e30)


def _max_pool_2x2(x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """``pool`` (2x2, stride 2, ceil mode); on channels-last input with even sides as two elementwise
    maxima over views (rows in pairs, then column pairs, which lie side by side in memory)."""
    n, c, h, w = x.shape
    if not _is_channels_last(x) or h % 2 or w % 2:
        return pool(x)
    pairs = x.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2 * c)
    rows = torch.maximum(pairs[:, :, 0], pairs[:, :, 1])
    return torch.maximum(rows[..., :c], rows[..., c:]).permute(0, 3, 1, 2)


def _window_max_3s2(v: torch.Tensor, axis: int) -> torch.Tensor:
    """Maxima of 3-wide, stride-2, ceil-mode windows along ``axis`` of a (N, H, W, C) view: the maximum of
    each window's first two elements, then of that and its third where the window has one."""
    n = v.shape[axis]
    out, full = (n - 2) // 2 + 1, (n - 3) // 2 + 1

    def every_other(start: int, count: int) -> torch.Tensor:
        return v.narrow(axis, start, 2 * count - 1).unfold(axis, 1, 2).squeeze(-1)

    res = torch.maximum(every_other(0, out), every_other(1, out))
    head = res.narrow(axis, 0, full)
    torch.maximum(head, every_other(2, full), out=head)
    return res


def _max_pool_3x3_s2(x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """``pool`` (3x3, stride 2, ceil mode); on channels-last input as elementwise maxima over strided views,
    rows first (whole rows are long contiguous runs, and they halve the data for the column pass: ~20% faster
    than columns first). Used where it measured faster than torch's pooling, which also writes argmax indices
    and leaves a channel count that is not a multiple of 8 partly unvectorised (R-Net's 28: ~2x)."""
    if not _is_channels_last(x):
        return pool(x)
    v = x.permute(0, 2, 3, 1)
    return _window_max_3s2(_window_max_3s2(v, 1), 2).permute(0, 3, 1, 2)


class PNet(nn.Module):
    """Proposal net: fully convolutional, one 12x12 window per output cell at stride 2.

    Returns ``(regression (N,4,h,w), face probability (N,h,w))``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def features(self, x: torch.Tensor, outside: torch.Tensor | None = None) -> torch.Tensor:
        """The 32-channel map both 1x1 heads read, one vector per window. ``outside`` (H-2, W-2) marks conv1
        outputs that lie outside the image (packed canvases): they are dropped from the max-pool, as MTCNN's
        ceil-mode pooling drops them at an image's edge."""
        pairs = _is_channels_last(x) and x.shape[3] % 2 == 0
        x = _prelu(_conv3x3_on_pixel_pairs(x, self.conv1) if pairs else self.conv1(x), self.prelu1.weight)
        if outside is not None:
            _fill_outside(x, outside)
        x = _max_pool_2x2(x, self.pool1)
        x = self.prelu2(self.conv2(x))
        return self.prelu3(self.conv3(x))

    def face_logit(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (32,) and bias of the face-minus-background logit: its sigmoid is the softmax's face
        probability, so scoring a window takes one dot product instead of a 2-way softmax."""
        weight = self.conv4_1.weight.flatten(1)
        return weight[1] - weight[0], self.conv4_1.bias[1] - self.conv4_1.bias[0]

    def forward(self, x: torch.Tensor, outside: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Regression (N,4,h,w) and face probability (N,h,w) of every window; see :meth:`features`."""
        x = self.features(x, outside)
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement net on 24x24 crops. Returns ``(regression (N,4), face probability (N,))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = _max_pool_3x3_s2(_prelu(self.conv1(x), self.prelu1.weight), self.pool1)
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The published weights were trained in Caffe, which flattens in (W, H, C) order.
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu4(self.dense4(x))
        prob = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
        return self.dense5_2(x), prob


class ONet(nn.Module):
    """Output net on 48x48 crops.

    Returns ``(regression (N,4), landmarks (N,10) as x1..x5,y1..y5 in box units, face probability (N,))``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = _max_pool_3x3_s2(self.prelu2(self.conv2(x)), self.pool2)
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        prob = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
        return self.dense6_2(x), self.dense6_3(x), prob
