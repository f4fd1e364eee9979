"""ResNet (He et al. 2015), torchvision's v1.5 layout and key names (stride on the 3×3 of a bottleneck).

The `*_fmnist` variants keep the block layout and swap the ImageNet stem (7×7/2 conv + max-pool)
for a 3×3 conv, so the 28×28 Fashion-MNIST grid is not shrunk 4× before the first block.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from edgecnn.registry import register_model

RESNET_WIDTHS = (64, 128, 256, 512)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(in_ch, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000, in_chans: int = 3, widths: Sequence[int] = RESNET_WIDTHS,
                 small_input: bool = False) -> None:
        super().__init__()
        stem = widths[0]
        if small_input:
            self.conv1 = nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, stem, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        in_ch = stem
        for i, (n, width) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_ch, width, stride=2 if (i > 0 and j == 0) else 1))
                in_ch = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: each block starts as identity (Goyal et al.).
        for m in self.modules():
            last_bn = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


TV = "torchvision 0.29.2"


@register_model(reference_params=11_689_512, reference_source=TV, recipe="resnet", min_input_size=(32, 32))
def resnet18(**kw) -> ResNet:
    """ResNet-18, ImageNet 224."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kw)


@register_model(reference_params=21_797_672, reference_source=TV, recipe="resnet", min_input_size=(32, 32))
def resnet34(**kw) -> ResNet:
    """ResNet-34, ImageNet 224."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kw)


@register_model(reference_params=25_557_032, reference_source=TV, recipe="resnet", min_input_size=(32, 32))
def resnet50(**kw) -> ResNet:
    """ResNet-50 (v1.5), ImageNet 224."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kw)


@register_model(reference_params=44_549_160, reference_source=TV, recipe="resnet", min_input_size=(32, 32))
def resnet101(**kw) -> ResNet:
    """ResNet-101 (v1.5), ImageNet 224."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kw)


@register_model(reference_params=60_192_808, reference_source=TV, recipe="resnet", min_input_size=(32, 32))
def resnet152(**kw) -> ResNet:
    """ResNet-152 (v1.5), ImageNet 224."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kw)


@register_model(dataset="fashion_mnist", reference_params=701_178, reference_source="edgecnn (ours)")
def resnet18_fmnist(**kw) -> ResNet:
    """ResNet-18 block layout at 1/4 width with a 3×3 stem, for 28×28 Fashion-MNIST."""
    return ResNet(BasicBlock, [2, 2, 2, 2], widths=(16, 32, 64, 128), small_input=True, **kw)
