"""Inception-ResNet v2 (Szegedy et al. 2016), timm's layout and key names (`conv2d_1a`, `repeat`,
`repeat_1`, `repeat_2`, `block8`, `classif`), so timm's weights load with strict=True.

Inception modules become residual branches: each block concatenates its branches, projects them
back to the trunk width with a biased 1×1 (`conv2d`, no BN), scales the result (0.17 / 0.10 /
0.20 — the paper's fix for instability in very wide residual nets) and adds it to the input.
Stem as Inception v3's; 10 × Block35 (35×35), Mixed_6a, 20 × Block17 (17×17, 1×7/7×1),
Mixed_7a, 9 × Block8 + a final Block8 without ReLU (8×8, 1×3/3×1), 1×1 to 1536.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from edgecnn.registry import register_model
from edgecnn.zoo.bn_inception import BasicConv2d, scaled
from edgecnn.zoo.inception_v3 import INCEPTION_NORM
from edgecnn.zoo.inception_v4 import TIMM


class Mixed5b(nn.Module):
    """35×35 Inception-A-style entry: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1."""

    def __init__(self, in_ch: int, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch0 = BasicConv2d(in_ch, c(96), 1)
        self.branch1 = nn.Sequential(BasicConv2d(in_ch, c(48), 1), BasicConv2d(c(48), c(64), 5, padding=2))
        self.branch2 = nn.Sequential(BasicConv2d(in_ch, c(64), 1), BasicConv2d(c(64), c(96), 3, padding=1),
                                     BasicConv2d(c(96), c(96), 3, padding=1))
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), BasicConv2d(in_ch, c(64), 1))
        self.out_channels = 2 * c(96) + 2 * c(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Mixed6a(nn.Module):
    """35 → 17: 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2."""

    def __init__(self, in_ch: int, width: float = 1.0, padding: int = 0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch0 = BasicConv2d(in_ch, c(384), 3, stride=2, padding=padding)
        self.branch1 = nn.Sequential(BasicConv2d(in_ch, c(256), 1), BasicConv2d(c(256), c(256), 3, padding=1),
                                     BasicConv2d(c(256), c(384), 3, stride=2, padding=padding))
        self.branch2 = nn.MaxPool2d(3, 2, padding)
        self.out_channels = 2 * c(384) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Mixed7a(nn.Module):
    """17 → 8: 1×1→3×3/2 (×2 widths) | 1×1→3×3→3×3/2 | max-pool/2."""

    def __init__(self, in_ch: int, width: float = 1.0, padding: int = 0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch0 = nn.Sequential(BasicConv2d(in_ch, c(256), 1),
                                     BasicConv2d(c(256), c(384), 3, stride=2, padding=padding))
        self.branch1 = nn.Sequential(BasicConv2d(in_ch, c(256), 1),
                                     BasicConv2d(c(256), c(288), 3, stride=2, padding=padding))
        self.branch2 = nn.Sequential(BasicConv2d(in_ch, c(256), 1), BasicConv2d(c(256), c(288), 3, padding=1),
                                     BasicConv2d(c(288), c(320), 3, stride=2, padding=padding))
        self.branch3 = nn.MaxPool2d(3, 2, padding)
        self.out_channels = c(384) + c(288) + c(320) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class InceptionResNetBlock(nn.Module):
    """relu(x + scale · conv2d(concat(branch0, branch1, ...))): a residual Inception module."""

    def __init__(self, in_ch: int, branches: Sequence[nn.Sequential | BasicConv2d], branch_channels: int,
                 scale: float, relu: bool = True) -> None:
        super().__init__()
        self.num_branches = len(branches)
        for i, branch in enumerate(branches):
            self.add_module(f"branch{i}", branch)
        self.conv2d = nn.Conv2d(branch_channels, in_ch, 1)
        self.scale = scale
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.num_branches)], 1)
        return self.relu(self.conv2d(out) * self.scale + x)


def block35(in_ch: int, width: float = 1.0, scale: float = 0.17) -> InceptionResNetBlock:
    """35×35 (Inception-ResNet-A): 1×1 | 1×1→3×3 | 1×1→3×3→3×3."""
    c = lambda n: scaled(n, width)  # noqa: E731
    branches = [BasicConv2d(in_ch, c(32), 1),
                nn.Sequential(BasicConv2d(in_ch, c(32), 1), BasicConv2d(c(32), c(32), 3, padding=1)),
                nn.Sequential(BasicConv2d(in_ch, c(32), 1), BasicConv2d(c(32), c(48), 3, padding=1),
                              BasicConv2d(c(48), c(64), 3, padding=1))]
    return InceptionResNetBlock(in_ch, branches, 2 * c(32) + c(64), scale)


def block17(in_ch: int, width: float = 1.0, scale: float = 0.10) -> InceptionResNetBlock:
    """17×17 (Inception-ResNet-B): 1×1 | 1×1→1×7→7×1."""
    c = lambda n: scaled(n, width)  # noqa: E731
    branches = [BasicConv2d(in_ch, c(192), 1),
                nn.Sequential(BasicConv2d(in_ch, c(128), 1), BasicConv2d(c(128), c(160), (1, 7), padding="same"),
                              BasicConv2d(c(160), c(192), (7, 1), padding="same"))]
    return InceptionResNetBlock(in_ch, branches, 2 * c(192), scale)


def block8(in_ch: int, width: float = 1.0, scale: float = 0.20, relu: bool = True) -> InceptionResNetBlock:
    """8×8 (Inception-ResNet-C): 1×1 | 1×1→1×3→3×1."""
    c = lambda n: scaled(n, width)  # noqa: E731
    branches = [BasicConv2d(in_ch, c(192), 1),
                nn.Sequential(BasicConv2d(in_ch, c(192), 1), BasicConv2d(c(192), c(224), (1, 3), padding="same"),
                              BasicConv2d(c(224), c(256), (3, 1), padding="same"))]
    return InceptionResNetBlock(in_ch, branches, c(192) + c(256), scale, relu)


class InceptionResNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0,
                 depths: tuple[int, int, int] = (10, 20, 9), small_input: bool = False) -> None:
        """depths: Block35, Block17, Block8 counts (the final ReLU-less block8 comes on top).

        small_input (28 px): every valid 3×3 is padded, conv2d_1a is stride 1 and maxpool_5a is
        dropped, so maxpool_3a alone reduces the stem (28 → 14) and the padded reductions give
        14/7/4 grids (canonical 299 px: 35/17/8).
        """
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        pad = 1 if small_input else 0
        self.conv2d_1a = BasicConv2d(in_chans, c(32), 3, stride=1 if small_input else 2, padding=pad)
        self.conv2d_2a = BasicConv2d(c(32), c(32), 3, padding=pad)
        self.conv2d_2b = BasicConv2d(c(32), c(64), 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, 2, pad)
        self.conv2d_3b = BasicConv2d(c(64), c(80), 1)
        self.conv2d_4a = BasicConv2d(c(80), c(192), 3, padding=pad)
        self.maxpool_5a = nn.Identity() if small_input else nn.MaxPool2d(3, 2)
        self.mixed_5b = Mixed5b(c(192), width)
        trunk = self.mixed_5b.out_channels
        self.repeat = nn.Sequential(*[block35(trunk, width) for _ in range(depths[0])])
        self.mixed_6a = Mixed6a(trunk, width, pad)
        trunk = self.mixed_6a.out_channels
        self.repeat_1 = nn.Sequential(*[block17(trunk, width) for _ in range(depths[1])])
        self.mixed_7a = Mixed7a(trunk, width, pad)
        trunk = self.mixed_7a.out_channels
        self.repeat_2 = nn.Sequential(*[block8(trunk, width) for _ in range(depths[2])])
        self.block8 = block8(trunk, width, scale=1.0, relu=False)
        self.conv2d_7b = BasicConv2d(trunk, c(1536), 1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classif = nn.Linear(c(1536), num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool_3a(self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x))))
        x = self.maxpool_5a(self.conv2d_4a(self.conv2d_3b(x)))
        x = self.repeat(self.mixed_5b(x))
        x = self.repeat_1(self.mixed_6a(x))
        x = self.block8(self.repeat_2(self.mixed_7a(x)))
        return self.conv2d_7b(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classif(torch.flatten(self.global_pool(self.forward_features(x)), 1))


@register_model(reference_params=55_843_464, reference_source=TIMM, input_size=(3, 299, 299),
                min_input_size=(75, 75), **INCEPTION_NORM)
def inception_resnet_v2(**kw) -> InceptionResNetV2:
    """Inception-ResNet v2, ImageNet 299."""
    return InceptionResNetV2(**kw)


@register_model(dataset="fashion_mnist", reference_params=708_010, reference_source="edgecnn (ours)")
def inception_resnet_v2_fmnist(**kw) -> InceptionResNetV2:
    """Inception-ResNet v2 blocks at 3/16 width for 28×28 Fashion-MNIST.

    Scaled: every channel count ×3/16; 2 Block35, 3 Block17, 2 Block8 (+ the final block8)
    instead of 10/20/9; residual scales kept; stem and reductions padded so the blocks run on
    14/7/4 grids (canonical 35/17/8). ~28 M MACs.
    """
    return InceptionResNetV2(width=0.1875, depths=(2, 3, 2), small_input=True, **kw)
