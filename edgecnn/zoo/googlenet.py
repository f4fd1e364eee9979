"""GoogLeNet / Inception v1 (Szegedy et al. 2014), torchvision's layout and key names.

Each Inception module runs a 1×1, a 1×1→3×3, a 1×1→"5×5" and a 3×3-max-pool→1×1 branch side by side
and concatenates them; the 1×1 reductions keep the wide branches cheap. Two auxiliary classifiers
(after inception4a and 4d) add their losses, weighted 0.3, during training and are dropped at
inference: eval mode returns the main logits only, so export never sees them.

Two departures from the paper, both torchvision's, kept so its published weights load: the "5×5"
branch is a 3×3 convolution (a known torchvision bug, frozen into the weights), and every conv is
followed by BatchNorm. torchvision's `transform_input` (re-normalising inputs inside the model) is
left out: preprocessing belongs to the export manifest.

The `_fmnist` variant keeps all nine Inception modules, both aux heads and the pooling schedule at
1/4 width; its stem is a 3×3/1 conv with no first max-pool, so the Inception stages run at 14, 7 and
4 px (ImageNet: 28, 14, 7).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from edgecnn.layers import AuxHead, AuxOutputs
from edgecnn.registry import register_model
from edgecnn.zoo.bn_inception import BasicConv2d, scaled

# Per module: 1×1, 3×3 reduce, 3×3, "5×5" reduce, "5×5", pool projection (the paper's Table 1).
INCEPTION_CHANNELS = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}
STEM_WIDTHS = (64, 192)
AUX_WIDTH, AUX_HIDDEN, AUX_GRID = 128, 1024, 4


class Inception(nn.Module):
    def __init__(self, in_ch: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj
        self.branch1 = BasicConv2d(in_ch, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(in_ch, ch3x3red, 1), BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_ch, ch5x5red, 1), BasicConv2d(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(in_ch, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(AuxHead):
    """Average-pool to a 4×4 grid → 1×1 conv → two fully connected layers (heavy dropout between)."""

    def __init__(self, in_ch: int, num_classes: int, width: int = AUX_WIDTH, hidden: int = AUX_HIDDEN,
                 dropout: float = 0.7) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(AUX_GRID)
        self.conv = BasicConv2d(in_ch, width, 1)
        self.fc1 = nn.Linear(width * AUX_GRID * AUX_GRID, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(self.pool(x)), 1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, aux_logits: bool = True,
                 width_mult: float = 1.0, small_input: bool = False, dropout: float = 0.2,
                 aux_dropout: float = 0.7) -> None:
        super().__init__()
        stem1, stem2 = (scaled(c, width_mult) for c in STEM_WIDTHS)
        if small_input:
            self.conv1 = BasicConv2d(in_chans, stem1, 3, padding=1)
            self.maxpool1 = nn.Identity()
        else:
            self.conv1 = BasicConv2d(in_chans, stem1, 7, stride=2, padding=3)
            self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(stem1, stem1, 1)
        self.conv3 = BasicConv2d(stem1, stem2, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)

        in_ch = stem2
        for name, channels in INCEPTION_CHANNELS.items():
            module = Inception(in_ch, *(scaled(c, width_mult) for c in channels))
            setattr(self, name, module)
            in_ch = module.out_channels
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)

        if aux_logits:
            aux = dict(width=scaled(AUX_WIDTH, width_mult), hidden=scaled(AUX_HIDDEN, width_mult),
                       dropout=aux_dropout)
            self.aux1 = InceptionAux(self.inception4a.out_channels, num_classes, **aux)
            self.aux2 = InceptionAux(self.inception4d.out_channels, num_classes, **aux)
        else:
            self.aux1 = self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-2, b=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor | AuxOutputs:
        with_aux = self.training and self.aux1 is not None
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if with_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if with_aux else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        return AuxOutputs(logits, aux=(aux1, aux2)) if with_aux else logits


@register_model(reference_params=6_624_904, reference_params_with_aux=13_004_888,
                reference_source="torchvision 0.29.2", recipe="googlenet", aux_weight=0.3,
                min_input_size=(15, 15))
def googlenet(**kw) -> GoogLeNet:
    """GoogLeNet (Inception v1) with both aux classifiers, ImageNet 224."""
    return GoogLeNet(**kw)


@register_model(dataset="fashion_mnist", reference_params=354_850, reference_params_with_aux=631_094,
                reference_source="edgecnn (ours)", aux_weight=0.3)
def googlenet_fmnist(**kw) -> GoogLeNet:
    """GoogLeNet at 1/4 width with a 3×3/1 stem and both aux heads, for 28×28 Fashion-MNIST."""
    return GoogLeNet(width_mult=0.25, small_input=True, **kw)
