"""CliqueNet (Yang et al., CVPR 2018): every pair of layers in a block is joined both ways.

A block of L layers with k channels each runs two stages over one set of weights W_ji (layer j → i):
- Stage I initialises like DenseNet: X_i = conv(cat(X_0, X_1 … X_{i-1}); W_0i, W_1i … W_{i-1,i}).
- Stage II refines alternately: X_i = conv(cat(X_j for j ≠ i); W_ji), always reading each other
  layer's most recent output (already refined for j < i, stage I for j > i). W_ji is the very weight
  tensor stage I used; only the pre-activation BatchNorm is separate, as the statistics differ.
Each conv is pre-activated (BN → ReLU → 3×3 conv). The next block reads the stage-II features
through a transition (BN-ReLU-1×1 conv-2×2 average pool); the classifier reads every block's
X_0 ⊕ stage-II features, BN-ReLU'd and globally pooled, concatenated. This is the paper's plain
CliqueNet(II+II), without the optional attentional transition, bottleneck or compression.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.registry import register_model


class CliqueLayer(nn.Module):
    """One clique node: its incoming weights from X_0 and from every other layer of the block."""

    def __init__(self, index: int, in_ch: int, growth: int, num_layers: int) -> None:
        super().__init__()
        self.index = index  # 0-based position in the block
        self.growth = growth
        self.input_weight = nn.Parameter(torch.empty(growth, in_ch, 3, 3))
        # W_ji for j ≠ i, in-channels ordered by j: the first `index` slices come from earlier layers.
        self.clique_weight = nn.Parameter(torch.empty(growth, (num_layers - 1) * growth, 3, 3))
        self.stage1_norm = nn.BatchNorm2d(in_ch + index * growth)
        self.stage2_norm = nn.BatchNorm2d((num_layers - 1) * growth)
        for w in (self.input_weight, self.clique_weight):
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")

    def stage1(self, block_input: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
        weight = torch.cat([self.input_weight, self.clique_weight[:, :self.index * self.growth]], 1)
        x = F.relu(self.stage1_norm(torch.cat([block_input, *earlier], 1)))
        return F.conv2d(x, weight, padding=1)

    def stage2(self, others: list[torch.Tensor]) -> torch.Tensor:
        x = F.relu(self.stage2_norm(torch.cat(others, 1)))
        return F.conv2d(x, self.clique_weight, padding=1)


class CliqueBlock(nn.Module):
    def __init__(self, in_ch: int, growth: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CliqueLayer(i, in_ch, growth, num_layers) for i in range(num_layers))

    def stage1(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for layer in self.layers:
            features.append(layer.stage1(x, features))
        return features

    def stage2(self, stage1_features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = list(stage1_features)
        for i, layer in enumerate(self.layers):
            features[i] = layer.stage2(features[:i] + features[i + 1:])
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stage-II features, concatenated."""
        return torch.cat(self.stage2(self.stage1(x)), 1)

    def extra_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """Its convolutions are functional (weights concatenated per layer), so count them here."""
        h, w = output.shape[-2:]
        in_channels = sum(layer.stage1_norm.num_features + layer.stage2_norm.num_features for layer in self.layers)
        return h * w * 9 * self.layers[0].growth * in_channels


class GlobalFeature(nn.Sequential):
    def __init__(self, channels: int) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


class Transition(nn.Sequential):
    def __init__(self, channels: int) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, channels, 1, bias=False), nn.AvgPool2d(2))


class CliqueNet(nn.Module):
    def __init__(self, growth: int, layers_per_block: Sequence[int], stem_width: int = 64, stem_stride: int = 1,
                 num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, stem_width, 3, stem_stride, 1, bias=False)
        self.blocks = nn.ModuleList()
        self.global_features = nn.ModuleList()
        self.transitions = nn.ModuleList()
        in_ch, feature_width = stem_width, 0
        for i, num_layers in enumerate(layers_per_block):
            out_ch = growth * num_layers
            self.blocks.append(CliqueBlock(in_ch, growth, num_layers))
            self.global_features.append(GlobalFeature(in_ch + out_ch))
            feature_width += in_ch + out_ch
            if i != len(layers_per_block) - 1:
                self.transitions.append(Transition(out_ch))
            in_ch = out_ch
        self.fc = nn.Linear(feature_width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        pooled = []
        for i, (block, global_feature) in enumerate(zip(self.blocks, self.global_features)):
            refined = block(x)
            pooled.append(global_feature(torch.cat([x, refined], 1)))
            if i < len(self.transitions):
                x = self.transitions[i](refined)
        return self.fc(torch.cat(pooled, 1))


# 8×8 still leaves the last block a 2×2 grid.
CIFAR = dict(dataset="cifar10", min_input_size=(8, 8))


def _paper(count: str, gflops: str) -> str:
    return f"edgecnn (ours); Yang et al. 2018 report {count} params, {gflops} FLOPs (T layers in 3 blocks, k per layer)"


@register_model(reference_params=935_994, reference_source=_paper("0.94M", "0.91G"), **CIFAR)
def cliquenet_k36_t12(**kw) -> CliqueNet:
    """CliqueNet, 3 blocks of 4 layers with k=36 channels each, 64-channel stem; CIFAR 32."""
    return CliqueNet(36, (4, 4, 4), **kw)


@register_model(reference_params=4_485_706, reference_source=_paper("4.49M", "4.21G"), **CIFAR)
def cliquenet_k64_t15(**kw) -> CliqueNet:
    """CliqueNet, 3 blocks of 5 layers with k=64; CIFAR 32."""
    return CliqueNet(64, (5, 5, 5), **kw)


@register_model(reference_params=6_937_546, reference_source=_paper("6.94M", "6.45G"), **CIFAR)
def cliquenet_k80_t15(**kw) -> CliqueNet:
    """CliqueNet, 3 blocks of 5 layers with k=80; CIFAR 32."""
    return CliqueNet(80, (5, 5, 5), **kw)


@register_model(reference_params=10_135_594, reference_source=_paper("10.14M", "9.45G"), **CIFAR)
def cliquenet_k80_t18(**kw) -> CliqueNet:
    """CliqueNet, 3 blocks of 6 layers with k=80; CIFAR 32."""
    return CliqueNet(80, (6, 6, 6), **kw)


# 296,130 parameters, 27.1 M MACs at 28×28.
@register_model(dataset="fashion_mnist", reference_params=296_130, reference_source="edgecnn (ours)")
def cliquenet_fmnist(**kw) -> CliqueNet:
    """CliqueNet T=12 (3×4 layers) at k=20 (paper: 36), 40-channel stride-2 stem: blocks at 14, 7, 3 px."""
    return CliqueNet(20, (4, 4, 4), stem_width=40, stem_stride=2, **kw)
