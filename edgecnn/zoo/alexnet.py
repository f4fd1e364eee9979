"""AlexNet (Krizhevsky et al. 2012), torchvision's single-tower layout and key names.

torchvision's variant (64-192-384-256-256 filters, after "One weird trick", Krizhevsky 2014) is the one
published weights exist for; the original two-GPU split (48 + 48 filters per tower) and local response
normalisation are gone.

The `_fmnist` variant keeps the five convolutions, three max-pools and the dropout classifier, but
a 3×3/stride-1 first conv replaces the 11×11/4 one (a 28×28 image has no room for it), widths are
3/8 of ImageNet's, the classifier is 512 wide over a 2×2 grid, and BatchNorm follows each conv so
plain SGD trains it in a few epochs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from edgecnn.registry import register_model

ALEXNET_WIDTHS = (64, 192, 384, 256, 256)


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int,
          batch_norm: bool) -> list[nn.Module]:
    if batch_norm:
        return [nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=False), nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True)]
    return [nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding), nn.ReLU(inplace=True)]


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, widths: Sequence[int] = ALEXNET_WIDTHS,
                 hidden: int = 4096, pool_size: int = 6, small_input: bool = False,
                 batch_norm: bool = False, dropout: float = 0.5) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        stem = (3, 1, 1) if small_input else (11, 4, 2)
        self.features = nn.Sequential(
            *_conv(in_chans, c1, *stem, batch_norm), nn.MaxPool2d(3, 2),
            *_conv(c1, c2, 5, 1, 2, batch_norm), nn.MaxPool2d(3, 2),
            *_conv(c2, c3, 3, 1, 1, batch_norm),
            *_conv(c3, c4, 3, 1, 1, batch_norm),
            *_conv(c4, c5, 3, 1, 1, batch_norm), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c5 * pool_size * pool_size, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model(reference_params=61_100_840, reference_source="torchvision 0.29.2", recipe="alexnet",
                min_input_size=(63, 63))
def alexnet(**kw) -> AlexNet:
    """AlexNet, ImageNet 224."""
    return AlexNet(**kw)


@register_model(dataset="fashion_mnist", reference_params=809_858, reference_source="edgecnn (ours)")
def alexnet_fmnist(**kw) -> AlexNet:
    """AlexNet layout at 3/8 width with a 3×3/1 first conv and BatchNorm, for 28×28 Fashion-MNIST."""
    return AlexNet(widths=(24, 72, 144, 96, 96), hidden=512, pool_size=2, small_input=True, batch_norm=True, **kw)
