"""VGG (Simonyan & Zisserman 2014), torchvision's layout and key names (configs A, B, D, E).

Only 3×3 convolutions (pad 1) in five stages, each closed by a 2×2 max-pool: two stacked 3×3 see
what one 5×5 sees with 18/25 of its weights, and one more non-linearity.

The `_fmnist` variants keep each config's stage depths, BatchNorm and the three-layer classifier,
at reduced width (VGG-11 at 3/8, VGG-16 at 1/4, so both cost about the same MACs) and a 256-wide
classifier. A 28×28 image survives only four halvings (28→14→7→3→1), so the fourth stage keeps its
resolution (stages 4 and 5 both run at 3×3) and the classifier reads the final 1×1 map.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from edgecnn.registry import register_model

VGG_WIDTHS = (64, 128, 256, 512, 512)
# Convolutions per stage, by the paper's config letter.
VGG_DEPTHS = {
    "A": (1, 1, 2, 2, 2),   # VGG-11
    "B": (2, 2, 2, 2, 2),   # VGG-13
    "D": (2, 2, 3, 3, 3),   # VGG-16
    "E": (2, 2, 4, 4, 4),   # VGG-19
}
ALL_STAGES_POOLED = (True,) * 5
# For 28×28: no pool after stage 4, see the module docstring.
SMALL_INPUT_POOLS = (True, True, True, False, True)


def make_features(in_chans: int, depths: Sequence[int], widths: Sequence[int], batch_norm: bool,
                  pool_after: Sequence[bool]) -> nn.Sequential:
    """One flat Sequential, so module indices match torchvision's `features.N` keys."""
    layers: list[nn.Module] = []
    in_ch = in_chans
    for depth, width, pooled in zip(depths, widths, pool_after):
        for _ in range(depth):
            layers.append(nn.Conv2d(in_ch, width, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            in_ch = width
        if pooled:
            layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, depths: Sequence[int], num_classes: int = 1000, in_chans: int = 3,
                 widths: Sequence[int] = VGG_WIDTHS, batch_norm: bool = False,
                 pool_after: Sequence[bool] = ALL_STAGES_POOLED, pool_size: int = 7, hidden: int = 4096,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = make_features(in_chans, depths, widths, batch_norm, pool_after)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Linear(widths[-1] * pool_size * pool_size, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        # Linear layers keep PyTorch's default init: torchvision's N(0, 0.01) suits 4096-wide layers but
        # shrinks the signal through a narrow classifier so much that the small variants barely move
        # in their first epoch (measured: 18 % vs 71 % train accuracy after 150 steps, vgg16_bn_fmnist).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# Five 2×2 pools need 32 px to leave a 1×1 map.
CANONICAL = dict(reference_source="torchvision 0.29.2", recipe="vgg", min_input_size=(32, 32))


@register_model(reference_params=132_863_336, **CANONICAL)
def vgg11(**kw) -> VGG:
    """VGG-11 (config A), ImageNet 224."""
    return VGG(VGG_DEPTHS["A"], **kw)


@register_model(reference_params=133_047_848, **CANONICAL)
def vgg13(**kw) -> VGG:
    """VGG-13 (config B), ImageNet 224."""
    return VGG(VGG_DEPTHS["B"], **kw)


@register_model(reference_params=138_357_544, **CANONICAL)
def vgg16(**kw) -> VGG:
    """VGG-16 (config D), ImageNet 224."""
    return VGG(VGG_DEPTHS["D"], **kw)


@register_model(reference_params=143_667_240, **CANONICAL)
def vgg19(**kw) -> VGG:
    """VGG-19 (config E), ImageNet 224."""
    return VGG(VGG_DEPTHS["E"], **kw)


@register_model(reference_params=132_868_840, **CANONICAL)
def vgg11_bn(**kw) -> VGG:
    """VGG-11 (config A) with BatchNorm, ImageNet 224."""
    return VGG(VGG_DEPTHS["A"], batch_norm=True, **kw)


@register_model(reference_params=133_053_736, **CANONICAL)
def vgg13_bn(**kw) -> VGG:
    """VGG-13 (config B) with BatchNorm, ImageNet 224."""
    return VGG(VGG_DEPTHS["B"], batch_norm=True, **kw)


@register_model(reference_params=138_365_992, **CANONICAL)
def vgg16_bn(**kw) -> VGG:
    """VGG-16 (config D) with BatchNorm, ImageNet 224."""
    return VGG(VGG_DEPTHS["D"], batch_norm=True, **kw)


@register_model(reference_params=143_678_248, **CANONICAL)
def vgg19_bn(**kw) -> VGG:
    """VGG-19 (config E) with BatchNorm, ImageNet 224."""
    return VGG(VGG_DEPTHS["E"], batch_norm=True, **kw)


@register_model(dataset="fashion_mnist", reference_params=1_417_082, reference_source="edgecnn (ours)")
def vgg11_bn_fmnist(**kw) -> VGG:
    """VGG-11-BN stage depths at 3/8 width, no pool after stage 4, 256-wide classifier, for 28×28."""
    return VGG(VGG_DEPTHS["A"], widths=(24, 48, 96, 192, 192), batch_norm=True,
               pool_after=SMALL_INPUT_POOLS, pool_size=1, hidden=256, **kw)


@register_model(dataset="fashion_mnist", reference_params=1_023_994, reference_source="edgecnn (ours)")
def vgg16_bn_fmnist(**kw) -> VGG:
    """VGG-16-BN stage depths at 1/4 width, no pool after stage 4, 256-wide classifier, for 28×28."""
    return VGG(VGG_DEPTHS["D"], widths=(16, 32, 64, 128, 128), batch_norm=True,
               pool_after=SMALL_INPUT_POOLS, pool_size=1, hidden=256, **kw)
