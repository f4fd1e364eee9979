"""DenseNet-BC (Huang et al. 2017) in torchvision's layout and key names, so its weights load strictly.

Every layer of a dense block sees the concatenation of the block input and all earlier layers'
outputs (BN-ReLU-1×1 bottleneck to `bn_size`·k channels, then BN-ReLU-3×3 to k channels); a
transition (BN-ReLU-1×1 conv halving the channels, 2×2 average pool) sits between blocks.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.registry import register_model


class DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        return self.conv2(self.relu2(self.norm2(bottleneck)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, in_ch: int, growth_rate: int, bn_size: int) -> None:
        super().__init__({f"denselayer{i + 1}": DenseLayer(in_ch + i * growth_rate, growth_rate, bn_size)
                          for i in range(num_layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(OrderedDict(norm=nn.BatchNorm2d(in_ch), relu=nn.ReLU(inplace=True),
                                     conv=nn.Conv2d(in_ch, out_ch, 1, bias=False),
                                     pool=nn.AvgPool2d(2, 2)))


class DenseNet(nn.Module):
    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, num_classes: int = 1000,
                 in_chans: int = 3, small_input: bool = False) -> None:
        super().__init__()
        if small_input:
            # A 28×28 input cannot afford the ImageNet stem's 4× shrink: one 3×3 conv, full resolution.
            stem = OrderedDict(conv0=nn.Conv2d(in_chans, num_init_features, 3, 1, 1, bias=False),
                               norm0=nn.BatchNorm2d(num_init_features), relu0=nn.ReLU(inplace=True))
        else:
            stem = OrderedDict(conv0=nn.Conv2d(in_chans, num_init_features, 7, 2, 3, bias=False),
                               norm0=nn.BatchNorm2d(num_init_features), relu0=nn.ReLU(inplace=True),
                               pool0=nn.MaxPool2d(3, 2, 1))
        self.features = nn.Sequential(stem)
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(num_layers, channels, growth_rate, bn_size))
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


@register_model(reference_params=7_978_856, reference_source="torchvision 0.29.2", min_input_size=(32, 32))
def densenet121(**kw) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16), ImageNet 224."""
    return DenseNet(32, (6, 12, 24, 16), 64, **kw)


# 470,050 parameters, 33.7 M MACs at 28×28.
@register_model(dataset="fashion_mnist", reference_params=470_050, reference_source="edgecnn (ours)")
def densenet121_fmnist(**kw) -> DenseNet:
    """DenseNet-121's four dense blocks and transitions at k=12, 2-6-16-12 layers, 3×3 stem, for 28×28."""
    return DenseNet(12, (2, 6, 16, 12), 24, small_input=True, **kw)
