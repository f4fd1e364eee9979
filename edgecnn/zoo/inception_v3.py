"""Inception v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture"), torchvision's
layout and key names, so torchvision's weights load with strict=True.

What v3 adds over BN-Inception: n×n convolutions factorized into 1×n then n×1 on the 17×17 grid
(Mixed_6b–6e, n=7; the paper found it works on 12–20 px grids, not early), grid reductions that
run a stride-2 conv branch beside a pooling branch (Mixed_6a, Mixed_7a) instead of pooling first,
a BN auxiliary classifier on the 17×17 grid, and label smoothing (ε = 0.1).

torchvision's `transform_input` is left out: its pretrained weights expect inputs normalised with
mean = std = 0.5, which is what the configs' mean/std say, so the manifest does the preprocessing.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.layers import AuxHead, AuxOutputs
from edgecnn.registry import register_model
from edgecnn.zoo.bn_inception import BasicConv2d, scaled


class InceptionA(nn.Module):
    """35×35 module: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1."""

    def __init__(self, in_ch: int, pool_features: int, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch1x1 = BasicConv2d(in_ch, c(64), 1)
        self.branch5x5_1 = BasicConv2d(in_ch, c(48), 1)
        self.branch5x5_2 = BasicConv2d(c(48), c(64), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, padding=1)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.branch_pool = BasicConv2d(in_ch, c(pool_features), 1)
        self.out_channels = c(64) + c(64) + c(96) + c(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(self.pool(x))], 1)


class InceptionB(nn.Module):
    """35 → 17 grid reduction: stride-2 3×3 | 1×1→3×3→3×3/2 | max-pool/2, concatenated."""

    def __init__(self, in_ch: int, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch3x3 = BasicConv2d(in_ch, c(384), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, c(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(64), c(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(c(96), c(96), 3, stride=2)
        self.pool = nn.MaxPool2d(3, 2)
        self.out_channels = c(384) + c(96) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, self.pool(x)], 1)


class InceptionC(nn.Module):
    """17×17 module with 7×7 factorized into 1×7 + 7×1: 1×1 | 1×7→7×1 | (7×1→1×7)×2 | pool→1×1."""

    def __init__(self, in_ch: int, channels_7x7: int, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        c7, out = c(channels_7x7), c(192)
        self.branch1x1 = BasicConv2d(in_ch, out, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding="same")
        self.branch7x7_3 = BasicConv2d(c7, out, (7, 1), padding="same")
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding="same")
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding="same")
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding="same")
        self.branch7x7dbl_5 = BasicConv2d(c7, out, (1, 7), padding="same")
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.branch_pool = BasicConv2d(in_ch, out, 1)
        self.out_channels = 4 * out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(self.pool(x))], 1)


class InceptionD(nn.Module):
    """17 → 8 grid reduction: 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2."""

    def __init__(self, in_ch: int, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch3x3_1 = BasicConv2d(in_ch, c(192), 1)
        self.branch3x3_2 = BasicConv2d(c(192), c(320), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, c(192), 1)
        self.branch7x7x3_2 = BasicConv2d(c(192), c(192), (1, 7), padding="same")
        self.branch7x7x3_3 = BasicConv2d(c(192), c(192), (7, 1), padding="same")
        self.branch7x7x3_4 = BasicConv2d(c(192), c(192), 3, stride=2)
        self.pool = nn.MaxPool2d(3, 2)
        self.out_channels = c(320) + c(192) + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, self.pool(x)], 1)


class InceptionE(nn.Module):
    """8×8 module with the 3×3 outputs split into parallel 1×3 and 3×1 (expanded filter bank)."""

    def __init__(self, in_ch: int, width: float = 1.0) -> None:
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self.branch1x1 = BasicConv2d(in_ch, c(320), 1)
        self.branch3x3_1 = BasicConv2d(in_ch, c(384), 1)
        self.branch3x3_2a = BasicConv2d(c(384), c(384), (1, 3), padding="same")
        self.branch3x3_2b = BasicConv2d(c(384), c(384), (3, 1), padding="same")
        self.branch3x3dbl_1 = BasicConv2d(in_ch, c(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(c(448), c(384), 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c(384), c(384), (1, 3), padding="same")
        self.branch3x3dbl_3b = BasicConv2d(c(384), c(384), (3, 1), padding="same")
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.branch_pool = BasicConv2d(in_ch, c(192), 1)
        self.out_channels = c(320) + 4 * c(384) + c(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(self.pool(x))], 1)


class InceptionAux(AuxHead):
    """Auxiliary classifier on the 17×17 grid: avg-pool 5/3 → 1×1 → 5×5 → FC (torchvision's)."""

    def __init__(self, in_ch: int, num_classes: int, width: float = 1.0, kernel_size: int = 5) -> None:
        """kernel_size is the pooled grid (5 for 17×17; a smaller grid takes a smaller conv)."""
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)
        self.conv0 = BasicConv2d(in_ch, scaled(128, width), 1)
        self.conv1 = BasicConv2d(scaled(128, width), scaled(768, width), kernel_size)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(scaled(768, width), num_classes)
        self.fc.stddev = 0.001  # read by InceptionV3._init_weights
        self.kernel_size = kernel_size
        self.min_grid = 3 * (kernel_size - 1) + 5  # smallest grid the 5/3 pool turns into kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Below the canonical grid (e.g. 224 px input → 12×12, where torchvision's head fails) pool
        # adaptively to the conv's kernel size instead; at 299 px this is torchvision's op exactly.
        if min(x.shape[-2:]) >= self.min_grid:
            x = self.pool(x)
        else:
            x = F.adaptive_avg_pool2d(x, self.kernel_size)
        x = self.conv1(self.conv0(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InceptionV3(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True,
                 drop_rate: float = 0.5, width: float = 1.0, stem_stride: int = 2, stem_pool: bool = True,
                 small_input: bool = False, pool_features: Sequence[int] = (32, 64, 64),
                 channels_7x7: Sequence[int] = (128, 160, 160, 192), num_e_blocks: int = 2,
                 aux_kernel_size: int = 5) -> None:
        """stem_stride / stem_pool: stride of Conv2d_1a_3x3 and whether maxpool1 follows the first
        three convs (the low-resolution study). small_input pads the stem convs ('same') and drops
        both stem pools, so a 28×28 image reaches Mixed_5b at 28×28 (canonical: 299 → 35)."""
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        self._block_names: list[str] = []  # Mixed_* in forward order (AuxLogits sits between 6e and 7a)
        pad = 1 if small_input else 0
        self.Conv2d_1a_3x3 = BasicConv2d(in_chans, c(32), 3, stride=stem_stride, padding=pad)
        self.Conv2d_2a_3x3 = BasicConv2d(c(32), c(32), 3, padding=pad)
        self.Conv2d_2b_3x3 = BasicConv2d(c(32), c(64), 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, 2) if stem_pool and not small_input else nn.Identity()
        self.Conv2d_3b_1x1 = BasicConv2d(c(64), c(80), 1)
        self.Conv2d_4a_3x3 = BasicConv2d(c(80), c(192), 3, padding=pad)
        self.maxpool2 = nn.Identity() if small_input else nn.MaxPool2d(3, 2)
        in_ch = c(192)
        for letter, pf in zip("bcd", pool_features):
            in_ch = self._add(f"Mixed_5{letter}", InceptionA(in_ch, pf, width))
        in_ch = self._add("Mixed_6a", InceptionB(in_ch, width))
        for letter, c7 in zip("bcde", channels_7x7):
            in_ch = self._add(f"Mixed_6{letter}", InceptionC(in_ch, c7, width))
        self.AuxLogits = InceptionAux(in_ch, num_classes, width, aux_kernel_size) if aux_logits else None
        in_ch = self._add("Mixed_7a", InceptionD(in_ch, width))
        for letter in "bc"[:num_e_blocks]:
            in_ch = self._add(f"Mixed_7{letter}", InceptionE(in_ch, width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_ch, num_classes)
        self._init_weights()

    def _add(self, name: str, block: nn.Module) -> int:
        setattr(self, name, block)
        self._block_names.append(name)
        return block.out_channels

    def _init_weights(self) -> None:
        """torchvision's: truncated normal (std 0.1, or a layer's `stddev`), BN γ=1, β=0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=getattr(m, "stddev", 0.1), a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | AuxOutputs:
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        aux = None
        for name in self._block_names:
            if name == "Mixed_7a" and self.AuxLogits is not None and self.training:
                aux = self.AuxLogits(x)
            x = getattr(self, name)(x)
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return logits if aux is None else AuxOutputs(logits, aux=(aux,))


TV = "torchvision 0.29.2"
# torchvision's weights were trained on inputs scaled to [-1, 1] (its transform_input undoes the
# ImageNet normalisation to get there), so mean = std = 0.5 is the preprocessing they expect.
INCEPTION_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
V3_TRAINING = dict(recipe="inception_v3", aux_weight=0.4, label_smoothing=0.1)
V3_PARAMS = dict(reference_params=23_834_568, reference_params_with_aux=27_161_264)


@register_model(**V3_PARAMS, reference_source=TV, input_size=(3, 299, 299), min_input_size=(75, 75),
                **INCEPTION_NORM, **V3_TRAINING)
def inception_v3(**kw) -> InceptionV3:
    """Inception v3, ImageNet 299, with its auxiliary classifier (aux_logits=False drops it)."""
    return InceptionV3(**kw)


# The low-resolution study (v3 paper §9): three receptive fields at about the same compute. Only
# the stem's stride and pooling change, so the parameters are inception_v3's exactly. rf299 and
# rf151 both leave Conv2d_1a_3x3 at 149×149, so every later layer has the same grid and MACs
# (149 → 147 → pool 73 → 71 → pool 35); rf79 runs 77 → 75 → 75 (no pool) → 73 → pool 36, spending
# less in the stem and a little more in the 36×36 Mixed_5 modules (about 6 % fewer MACs in all).
LOW_RES_SOURCE = f"{TV} (inception_v3's layers; only strides/pools differ)"


@register_model(**V3_PARAMS, reference_source=LOW_RES_SOURCE, input_size=(3, 299, 299), min_input_size=(75, 75),
                **INCEPTION_NORM, **V3_TRAINING)
def inception_v3_rf299(**kw) -> InceptionV3:
    """v3 low-res study, 299 px receptive field: Conv2d_1a_3x3 stride 2, maxpool1 after Conv2d_2b_3x3.

    This is inception_v3 itself (299 → 149 → 147 → pool 73 → 71 → pool 35), the study's baseline.
    """
    return InceptionV3(**kw)


@register_model(**V3_PARAMS, reference_source=LOW_RES_SOURCE, input_size=(3, 151, 151), min_input_size=(39, 39),
                **INCEPTION_NORM, **V3_TRAINING)
def inception_v3_rf151(**kw) -> InceptionV3:
    """v3 low-res study, 151 px receptive field: Conv2d_1a_3x3 stride 1 (not 2), maxpool1 kept.

    151 → 149 → 147 → pool 73 → 71 → pool 35: every later layer sees rf299's grid, so the MACs match.
    """
    return InceptionV3(stem_stride=1, **kw)


@register_model(**V3_PARAMS, reference_source=LOW_RES_SOURCE, input_size=(3, 79, 79), min_input_size=(21, 21),
                **INCEPTION_NORM, **V3_TRAINING)
def inception_v3_rf79(**kw) -> InceptionV3:
    """v3 low-res study, 79 px receptive field: Conv2d_1a_3x3 stride 1 and maxpool1 removed.

    79 → 77 → 75 → 75 → 73 → pool 36: the Mixed modules run on 36/17/8 grids (rf299: 35/17/8).
    """
    return InceptionV3(stem_stride=1, stem_pool=False, **kw)


@register_model(dataset="fashion_mnist", reference_params=761_498, reference_params_with_aux=825_316,
                reference_source="edgecnn (ours)", aux_weight=0.4, label_smoothing=0.1)
def inception_v3_fmnist(**kw) -> InceptionV3:
    """Inception v3 modules at 1/4 width for 28×28 Fashion-MNIST, with the auxiliary head.

    Scaled: every channel count ×1/4; 2 Mixed_5 (A), 2 Mixed_6 (C, 7×7 factorized), 1 Mixed_7 (E)
    modules instead of 3/4/2; padded stem without pools, so the modules run on 28/13/6 grids
    (canonical 35/17/8; the 1×7/7×1 modules stay on a 12–20 px grid); the aux head's conv is
    3×3 because its pooled grid is 3×3. ~23 M MACs.
    """
    return InceptionV3(width=0.25, small_input=True, pool_features=(32, 64), channels_7x7=(128, 192),
                       num_e_blocks=1, aux_kernel_size=3, **kw)
