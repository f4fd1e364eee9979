"""LeNet-5 (LeCun et al. 1998): two conv + subsampling stages, then three fully connected layers.

Modern rendering: ReLU and max-pooling instead of the scaled tanh and trainable subsampling of the
paper, and C3 fully connected to S2 (the paper wires it through a partial table). Parameters:
156 + 2,416 + 48,120 + 10,164 + 850 = 61,706.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from edgecnn.registry import register_model

LENET_PARAMS = 61_706


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 1, stem_padding: int = 0) -> None:
        """`stem_padding=2` lets a 28×28 image through the 32×32 layout without changing any weight shape."""
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=stem_padding), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(dataset="fashion_mnist", input_size=(1, 32, 32), min_input_size=(32, 32),
                reference_params=LENET_PARAMS, reference_source="LeCun et al. 1998 (C3 fully connected)")
def lenet5(**kw) -> LeNet5:
    """LeNet-5 at its classic 1×32×32 input (MNIST digits padded to 32)."""
    return LeNet5(**kw)


@register_model(dataset="fashion_mnist", reference_params=LENET_PARAMS,
                reference_source="edgecnn (ours)")
def lenet5_fmnist(**kw) -> LeNet5:
    """LeNet-5 unchanged but for 2 px of zero padding on the first conv, for 28×28 Fashion-MNIST."""
    return LeNet5(stem_padding=2, **kw)
