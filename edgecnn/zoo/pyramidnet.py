"""PyramidNet (Han, Kim & Kim, CVPR 2017), CIFAR-style: widths grow a little at every residual unit.

Instead of doubling channels where the grid halves, the k-th of N units has width
s + α·k/N (additive) or s·α^(k/N) (multiplicative) from the start width s = 16, rounded half up as
in the authors' Torch code. Units are BN-conv-BN-ReLU-conv-BN (no ReLU at the unit's end, the paper's best unit) and the
shortcut is a zero-padded identity: parameter-free, 2×2 average pooled where the unit strides.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.errors import UserError
from edgecnn.registry import register_model

Widening = Literal["additive", "multiplicative"]


def pyramid_widths(num_units: int, alpha: float, widening: Widening, start_width: int = 16) -> list[int]:
    """Width of each residual unit, in order."""
    if widening == "additive":
        widths = [start_width + alpha * k / num_units for k in range(1, num_units + 1)]
    elif widening == "multiplicative":
        widths = [start_width * alpha ** (k / num_units) for k in range(1, num_units + 1)]
    else:
        raise UserError(f"unknown PyramidNet widening {widening!r}: use 'additive' or 'multiplicative'")
    return [math.floor(w + 0.5) for w in widths]


class PyramidUnit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        # ceil_mode keeps the shortcut's grid equal to the strided conv's on odd sizes.
        self.shortcut_pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride != 1 else nn.Identity()
        self.pad_channels = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.relu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = F.pad(self.shortcut_pool(x), (0, 0, 0, 0, 0, self.pad_channels))
        return out + shortcut


class PyramidNet(nn.Module):
    def __init__(self, depth: int, alpha: float, widening: Widening = "additive", start_width: int = 16,
                 num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise UserError(f"PyramidNet depth {depth} is not 6n+2 (three stages of n two-conv units)")
        units_per_stage = (depth - 2) // 6
        widths = pyramid_widths(3 * units_per_stage, alpha, widening, start_width)
        self.conv1 = nn.Conv2d(in_chans, start_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(start_width)
        in_ch = start_width
        for stage in range(3):
            units = []
            for j in range(units_per_stage):
                out_ch = widths[stage * units_per_stage + j]
                units.append(PyramidUnit(in_ch, out_ch, stride=2 if (stage > 0 and j == 0) else 1))
                in_ch = out_ch
            setattr(self, f"layer{stage + 1}", nn.Sequential(*units))
        self.bn_final = nn.BatchNorm2d(in_ch)
        self.relu_final = nn.ReLU(inplace=True)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = self.relu_final(self.bn_final(self.layer3(self.layer2(self.layer1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


CIFAR = dict(dataset="cifar10", min_input_size=(8, 8))  # 8×8 still leaves the last stage a 2×2 grid


def _paper(count: str) -> str:
    return f"edgecnn (ours); Han et al. 2017 report {count} for this configuration"


@register_model(reference_params=1_772_706, reference_source=_paper("1.7M"), **CIFAR)
def pyramidnet_add_110_a48(**kw) -> PyramidNet:
    """PyramidNet-110, additive widening α=48 (widths 16→64): the paper's 1.7M-parameter net."""
    return PyramidNet(110, 48, "additive", **kw)


@register_model(reference_params=3_904_446, reference_source=_paper("3.8M"), **CIFAR)
def pyramidnet_add_110_a84(**kw) -> PyramidNet:
    """PyramidNet-110, additive widening α=84 (widths 16→100)."""
    return PyramidNet(110, 84, "additive", **kw)


@register_model(reference_params=28_485_477, reference_source=_paper("28.3M"), **CIFAR)
def pyramidnet_add_110_a270(**kw) -> PyramidNet:
    """PyramidNet-110, additive widening α=270 (widths 16→286)."""
    return PyramidNet(110, 270, "additive", **kw)


# α=4.75 is the authors' multiplicative default (mulpyramidnet.lua): widths 16→76, and about the
# same parameter count as additive α=48, the paper's like-for-like comparison.
@register_model(reference_params=1_762_206, reference_source="edgecnn (ours)", **CIFAR)
def pyramidnet_mult_110_a4p75(**kw) -> PyramidNet:
    """PyramidNet-110, multiplicative widening α=4.75 (widths 16→76)."""
    return PyramidNet(110, 4.75, "multiplicative", **kw)


# 185,302 parameters, 28.6 M MACs at 28×28.
@register_model(dataset="fashion_mnist", reference_params=185_302, reference_source="edgecnn (ours)")
def pyramidnet_fmnist(**kw) -> PyramidNet:
    """PyramidNet-20 (paper: 110), additive α=44 (paper: 48) from a start width of 8 (paper: 16), for 28×28."""
    return PyramidNet(20, 44, "additive", start_width=8, **kw)
