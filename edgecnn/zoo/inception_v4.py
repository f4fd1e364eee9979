"""Inception v4 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning"), timm's layout and key names (`features.N`, `last_linear`), so timm's
`inception_v4.tf_in1k` weights load with strict=True.

A uniform, deeper v3: a stem whose every reduction concatenates a stride-2 conv with a pooling
branch (Mixed3a, Mixed5a), then 4 × Inception-A (35×35), Reduction-A, 7 × Inception-B (17×17,
1×7/7×1), Reduction-B, 3 × Inception-C (8×8, split 1×3/3×1 outputs). No auxiliary classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from edgecnn.registry import register_model
from edgecnn.zoo.bn_inception import BasicConv2d, scaled
from edgecnn.zoo.inception_v3 import INCEPTION_NORM


class Mixed3a(nn.Module):
    """Stem reduction: max-pool/2 | 3×3/2 conv."""

    def __init__(self, in_ch: int, width: float = 1.0, stride: int = 2, padding: int = 0) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride, padding)
        self.conv = BasicConv2d(in_ch, scaled(96, width), 3, stride, padding)
        self.out_channels = in_ch + scaled(96, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.maxpool(x), self.conv(x)], 1)


class Mixed4a(nn.Module):
    """Stem: 1×1→3×3 | 1×1→1×7→7×1→3×3 (valid 3×3s shrink the grid by 2)."""

    def __init__(self, in_ch: int, width: float = 1.0, padding: int = 0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch0 = nn.Sequential(BasicConv2d(in_ch, c(64), 1), BasicConv2d(c(64), c(96), 3, padding=padding))
        self.branch1 = nn.Sequential(BasicConv2d(in_ch, c(64), 1),
                                     BasicConv2d(c(64), c(64), (1, 7), padding="same"),
                                     BasicConv2d(c(64), c(64), (7, 1), padding="same"),
                                     BasicConv2d(c(64), c(96), 3, padding=padding))
        self.out_channels = 2 * c(96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x)], 1)


class Mixed5a(nn.Module):
    """Stem reduction: 3×3/2 conv | max-pool/2."""

    def __init__(self, in_ch: int, width: float = 1.0, stride: int = 2, padding: int = 0) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_ch, scaled(192, width), 3, stride, padding)
        self.maxpool = nn.MaxPool2d(3, stride, padding)
        self.out_channels = scaled(192, width) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.maxpool(x)], 1)


def _pool_branch(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), BasicConv2d(in_ch, out_ch, 1))


class InceptionA(nn.Module):
    """35×35: 1×1 | 1×1→3×3 | 1×1→3×3→3×3 | avg-pool→1×1."""

    def __init__(self, in_ch: int, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch0 = BasicConv2d(in_ch, c(96), 1)
        self.branch1 = nn.Sequential(BasicConv2d(in_ch, c(64), 1), BasicConv2d(c(64), c(96), 3, padding=1))
        self.branch2 = nn.Sequential(BasicConv2d(in_ch, c(64), 1), BasicConv2d(c(64), c(96), 3, padding=1),
                                     BasicConv2d(c(96), c(96), 3, padding=1))
        self.branch3 = _pool_branch(in_ch, c(96))
        self.out_channels = 4 * c(96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class ReductionA(nn.Module):
    """35 → 17: 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2."""

    def __init__(self, in_ch: int, width: float = 1.0, padding: int = 0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch0 = BasicConv2d(in_ch, c(384), 3, stride=2, padding=padding)
        self.branch1 = nn.Sequential(BasicConv2d(in_ch, c(192), 1), BasicConv2d(c(192), c(224), 3, padding=1),
                                     BasicConv2d(c(224), c(256), 3, stride=2, padding=padding))
        self.branch2 = nn.MaxPool2d(3, 2, padding)
        self.out_channels = c(384) + c(256) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class InceptionB(nn.Module):
    """17×17, 7×7 factorized: 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avg-pool→1×1."""

    def __init__(self, in_ch: int, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch0 = BasicConv2d(in_ch, c(384), 1)
        self.branch1 = nn.Sequential(BasicConv2d(in_ch, c(192), 1),
                                     BasicConv2d(c(192), c(224), (1, 7), padding="same"),
                                     BasicConv2d(c(224), c(256), (7, 1), padding="same"))
        self.branch2 = nn.Sequential(BasicConv2d(in_ch, c(192), 1),
                                     BasicConv2d(c(192), c(192), (7, 1), padding="same"),
                                     BasicConv2d(c(192), c(224), (1, 7), padding="same"),
                                     BasicConv2d(c(224), c(224), (7, 1), padding="same"),
                                     BasicConv2d(c(224), c(256), (1, 7), padding="same"))
        self.branch3 = _pool_branch(in_ch, c(128))
        self.out_channels = c(384) + 2 * c(256) + c(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class ReductionB(nn.Module):
    """17 → 8: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2."""

    def __init__(self, in_ch: int, width: float = 1.0, padding: int = 0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch0 = nn.Sequential(BasicConv2d(in_ch, c(192), 1),
                                     BasicConv2d(c(192), c(192), 3, stride=2, padding=padding))
        self.branch1 = nn.Sequential(BasicConv2d(in_ch, c(256), 1),
                                     BasicConv2d(c(256), c(256), (1, 7), padding="same"),
                                     BasicConv2d(c(256), c(320), (7, 1), padding="same"),
                                     BasicConv2d(c(320), c(320), 3, stride=2, padding=padding))
        self.branch2 = nn.MaxPool2d(3, 2, padding)
        self.out_channels = c(192) + c(320) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class InceptionC(nn.Module):
    """8×8: 1×1 | 1×1→(1×3 ‖ 3×1) | 1×1→3×1→1×3→(1×3 ‖ 3×1) | avg-pool→1×1."""

    def __init__(self, in_ch: int, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch0 = BasicConv2d(in_ch, c(256), 1)
        self.branch1_0 = BasicConv2d(in_ch, c(384), 1)
        self.branch1_1a = BasicConv2d(c(384), c(256), (1, 3), padding="same")
        self.branch1_1b = BasicConv2d(c(384), c(256), (3, 1), padding="same")
        self.branch2_0 = BasicConv2d(in_ch, c(384), 1)
        self.branch2_1 = BasicConv2d(c(384), c(448), (3, 1), padding="same")
        self.branch2_2 = BasicConv2d(c(448), c(512), (1, 3), padding="same")
        self.branch2_3a = BasicConv2d(c(512), c(256), (1, 3), padding="same")
        self.branch2_3b = BasicConv2d(c(512), c(256), (3, 1), padding="same")
        self.branch3 = _pool_branch(in_ch, c(256))
        self.out_channels = 6 * c(256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.branch1_0(x)
        x2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([self.branch0(x), self.branch1_1a(x1), self.branch1_1b(x1),
                          self.branch2_3a(x2), self.branch2_3b(x2), self.branch3(x)], 1)


class InceptionV4(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0,
                 depths: tuple[int, int, int] = (4, 7, 3), small_input: bool = False) -> None:
        """depths: Inception-A, -B, -C module counts.

        small_input (28 px): every valid 3×3 is padded, the first conv and Mixed5a are stride 1, so
        Mixed3a alone reduces the stem (28 → 14) and the padded reductions give 14/7/4 grids for the
        A/B/C modules (canonical 299 px: 35/17/8).
        """
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        pad = 1 if small_input else 0
        layers: list[nn.Module] = [
            BasicConv2d(in_chans, c(32), 3, stride=1 if small_input else 2, padding=pad),
            BasicConv2d(c(32), c(32), 3, padding=pad),
            BasicConv2d(c(32), c(64), 3, padding=1),
        ]
        in_ch = c(64)

        def add(block: nn.Module) -> None:
            nonlocal in_ch
            layers.append(block)
            in_ch = block.out_channels

        add(Mixed3a(in_ch, width, padding=pad))
        add(Mixed4a(in_ch, width, padding=pad))
        add(Mixed5a(in_ch, width, stride=1 if small_input else 2, padding=pad))
        for _ in range(depths[0]):
            add(InceptionA(in_ch, width))
        add(ReductionA(in_ch, width, padding=pad))
        for _ in range(depths[1]):
            add(InceptionB(in_ch, width))
        add(ReductionB(in_ch, width, padding=pad))
        for _ in range(depths[2]):
            add(InceptionC(in_ch, width))
        self.features = nn.Sequential(*layers)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_linear(torch.flatten(self.global_pool(self.features(x)), 1))


TIMM = "timm 1.0.31"


@register_model(reference_params=42_679_816, reference_source=TIMM, input_size=(3, 299, 299),
                min_input_size=(75, 75), **INCEPTION_NORM)
def inception_v4(**kw) -> InceptionV4:
    """Inception v4, ImageNet 299."""
    return InceptionV4(**kw)


@register_model(dataset="fashion_mnist", reference_params=583_180, reference_source="edgecnn (ours)")
def inception_v4_fmnist(**kw) -> InceptionV4:
    """Inception v4 modules at 3/16 width for 28×28 Fashion-MNIST.

    Scaled: every channel count ×3/16; 1 Inception-A, 2 Inception-B (1×7/7×1), 1 Inception-C
    instead of 4/7/3; stem and reductions padded so the modules run on 14/7/4 grids (canonical
    35/17/8). ~29 M MACs.
    """
    return InceptionV4(width=0.1875, depths=(1, 2, 1), small_input=True, **kw)
