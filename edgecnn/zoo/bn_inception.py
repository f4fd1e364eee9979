"""BN-Inception / Inception v2 (Ioffe & Szegedy 2015, "Batch Normalization", Figure 5).

GoogLeNet with BatchNorm after every convolution and every 5×5 replaced by two stacked 3×3
(same 5×5 receptive field, 18/25 of the weights). Stride-2 modules (3c, 4e) drop the 1×1 branch
and pass the max-pooled input through unprojected. Layer names follow the Caffe release
("inception_3a", "conv2_3x3_reduce", ...); the first layer is a plain 7×7/2 convolution as in that
release (the paper's TensorFlow version made it depthwise-separable).

`BasicConv2d` (conv → BN → ReLU with torchvision's and timm's `conv`/`bn` key names) and
`scaled` are shared with the later Inception files, which import them from here.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

from edgecnn.registry import register_model

Size2 = int | tuple[int, int]


def scaled(channels: int, width: float) -> int:
    """A canonical channel count scaled by `width` (small variants); nonzero counts stay ≥ 4."""
    return max(4, int(channels * width + 0.5)) if channels else 0


class BasicConv2d(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3, TensorFlow's) → ReLU; keys `conv.*`, `bn.*`.

    padding="same" pads k//2 on each axis, which keeps the grid of stride-1 1×n / n×1 convs.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Size2 | str = 0) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if padding == "same":
            padding = (kh // 2, kw // 2)
        self.conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class BNInceptionBlock(nn.Module):
    """1×1 | 1×1→3×3 | 1×1→3×3→3×3 (the factorized 5×5) | pool→1×1, concatenated.

    stride=2 makes the two 3×3 branches stride 2, drops the 1×1 branch and passes the
    max-pooled input through without a projection (the paper's "max + pass through").
    """

    def __init__(self, in_ch: int, n1x1: int, n3x3_reduce: int, n3x3: int, n_dbl_reduce: int, n_dbl: int,
                 pool: str, pool_proj: int, stride: int = 1) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, n1x1, 1) if stride == 1 else None
        self.branch3x3 = nn.Sequential(BasicConv2d(in_ch, n3x3_reduce, 1),
                                       BasicConv2d(n3x3_reduce, n3x3, 3, stride, 1))
        self.branch3x3dbl = nn.Sequential(BasicConv2d(in_ch, n_dbl_reduce, 1),
                                          BasicConv2d(n_dbl_reduce, n_dbl, 3, 1, 1),
                                          BasicConv2d(n_dbl, n_dbl, 3, stride, 1))
        if stride == 1:
            pool_layer = nn.AvgPool2d(3, 1, 1) if pool == "avg" else nn.MaxPool2d(3, 1, 1)
            self.branch_pool = nn.Sequential(pool_layer, BasicConv2d(in_ch, pool_proj, 1))
            self.out_channels = n1x1 + n3x3 + n_dbl + pool_proj
        else:
            self.branch_pool = nn.MaxPool2d(3, stride, 1)
            self.out_channels = n3x3 + n_dbl + in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)]
        if self.branch1x1 is not None:
            branches.insert(0, self.branch1x1(x))
        return torch.cat(branches, 1)


# Per block: #1×1, #3×3 reduce, #3×3, double #3×3 reduce, double #3×3, pool, pool proj, stride
# (Figure 5 of the BN paper; 0 marks a branch a stride-2 block does not have).
BN_INCEPTION_BLOCKS: dict[str, tuple[int, int, int, int, int, str, int, int]] = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}


class BNInception(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0,
                 blocks: Sequence[str] = tuple(BN_INCEPTION_BLOCKS), small_input: bool = False) -> None:
        """small_input makes the first conv 3×3/1 and drops the first max-pool (224 → 28 becomes
        28 → 14 at inception_3a), so a 28×28 image is not shrunk 8× before the first module."""
        super().__init__()
        c = lambda n: scaled(n, width)  # noqa: E731
        if small_input:
            self.conv1_7x7_s2 = BasicConv2d(in_chans, c(64), 3, 1, 1)
            self.pool1 = nn.Identity()
        else:
            self.conv1_7x7_s2 = BasicConv2d(in_chans, c(64), 7, 2, 3)
            self.pool1 = nn.MaxPool2d(3, 2, 1)
        self.conv2_3x3_reduce = BasicConv2d(c(64), c(64), 1)
        self.conv2_3x3 = BasicConv2d(c(64), c(192), 3, 1, 1)
        self.pool2 = nn.MaxPool2d(3, 2, 1)
        in_ch = c(192)
        stages = []
        for name in blocks:
            n1x1, n3r, n3, ndr, nd, pool, proj, stride = BN_INCEPTION_BLOCKS[name]
            block = BNInceptionBlock(in_ch, c(n1x1), c(n3r), c(n3), c(ndr), c(nd), pool, c(proj), stride)
            stages.append((f"inception_{name}", block))
            in_ch = block.out_channels
        self.blocks = nn.Sequential(OrderedDict(stages))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1_7x7_s2(x))
        x = self.pool2(self.conv2_3x3(self.conv2_3x3_reduce(x)))
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


# No reference implementation publishes this exact layout (the Caffe release adds conv biases),
# so the count is ours, per module (conv weights + BN γ/β; pools have none):
#   stem    conv1 9,536 + conv2_reduce 4,224 + conv2 110,976                 =    124,736
#   3a 219,072 + 3b 260,160 + 3c 385,088                                      =    864,320
#   4a 609,984 + 4b 665,344 + 4c 914,432 + 4d 1,142,912 + 4e 1,449,984        =  4,782,656
#   5a 2,208,896 + 5b 2,279,616                                               =  4,488,512
#   fc 1024×1000 + 1000                                                       =  1,025,000
#   total                                                                     = 11,285,224
# 32 px is the smallest input that halves cleanly through all five stride-2 stages (224 / 7).
@register_model(reference_params=11_285_224, reference_source="edgecnn (ours)", min_input_size=(32, 32))
def bn_inception(**kw) -> BNInception:
    """BN-Inception (Inception v2), ImageNet 224: GoogLeNet + BatchNorm, 5×5 → two 3×3."""
    return BNInception(**kw)


@register_model(dataset="fashion_mnist", reference_params=515_466, reference_source="edgecnn (ours)")
def bn_inception_fmnist(**kw) -> BNInception:
    """BN-Inception modules at 1/4 width for 28×28 Fashion-MNIST.

    Scaled: every channel count ×1/4; 4c and 4d dropped (8 of 10 modules); first conv 3×3/1 and
    no first max-pool, so the modules run on 14/7/4 grids (canonical: 28/14/7). ~25 M MACs.
    """
    return BNInception(width=0.25, blocks=("3a", "3b", "3c", "4a", "4b", "4e", "5a", "5b"), small_input=True, **kw)
