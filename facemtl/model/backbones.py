"""Shared trunks: ``deepid2`` (small, CPU-trainable) and ``resnet`` (ResNet-style, for GPUs).

Every trunk is a stack of named blocks (``blocks[i]`` maps the previous feature map to the next), so the
sharing designs can read any block's output or interleave two columns block by block. ``block_shapes``
gives each block's output (channels, height, width) for a given input size.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..registry import Registry

TRUNKS: Registry[Callable[..., "Trunk"]] = Registry("trunk")


def create_trunk(name: str, width: float = 1.0) -> "Trunk":
    """Build a registered trunk; ``width`` scales every block's channel count."""
    return TRUNKS.create(name, width=width)


class Trunk(nn.Module):
    """A sequence of blocks; ``forward`` returns every block's output (shallow to deep)."""

    def __init__(self, blocks: list[nn.Module], name: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.name = name

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def block_shapes(self, input_size: int) -> list[tuple[int, int, int]]:
        """(C, H, W) of each block's output for a square input of ``input_size`` pixels."""
        with torch.no_grad():
            was_training = self.training
            self.eval()
            outs = self(torch.zeros(1, 3, input_size, input_size))
            self.train(was_training)
        return [tuple(o.shape[1:]) for o in outs]


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@TRUNKS.register("deepid2")
def deepid2(width: float = 1.0) -> Trunk:
    """DeepID2-sized ConvNet for 64x64 crops: four blocks of 3x3 convs, about 0.11 GMAC per face."""
    c = [max(8, int(round(v * width))) for v in (32, 64, 96, 128)]
    blocks = [
        nn.Sequential(*_conv_bn(3, c[0]), nn.MaxPool2d(2)),
        nn.Sequential(*_conv_bn(c[0], c[1]), *_conv_bn(c[1], c[1]), nn.MaxPool2d(2)),
        nn.Sequential(*_conv_bn(c[1], c[2]), *_conv_bn(c[2], c[2]), nn.MaxPool2d(2)),
        nn.Sequential(*_conv_bn(c[2], c[3]), *_conv_bn(c[3], c[3])),
    ]
    return Trunk(blocks, "deepid2")


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs and a shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@TRUNKS.register("resnet")
def resnet(width: float = 1.0) -> Trunk:
    """ResNet-18-style trunk for 112x112 crops (stem at stride 2, four stages down to 7x7)."""
    c = [max(8, int(round(v * width))) for v in (64, 128, 256, 512)]
    blocks = [nn.Sequential(*_conv_bn(3, c[0], 2), BasicBlock(c[0], c[0], 1), BasicBlock(c[0], c[0], 1))]
    for cin, cout in zip(c[:-1], c[1:]):
        blocks.append(nn.Sequential(BasicBlock(cin, cout, 2), BasicBlock(cout, cout, 1)))
    return Trunk(blocks, "resnet")
