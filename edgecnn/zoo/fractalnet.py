"""FractalNet (Larsson, Maire & Shakhnarovich, ICLR 2017): depth from self-similarity, no residuals.

A block follows the expansion rule f₁(z) = conv(z), f_{C+1}(z) = join(f_C(f_C(z)), conv(z)), laid out
as C columns: column c holds 2^c conv units (conv → dropout → BN → ReLU, the order of the authors'
Caffe code) and every join is an element-wise mean of the columns that meet there. Blocks are
separated by 2×2 max pooling.

Drop-path regularizes co-adaptation of the columns, at training time only. Each mini-batch is, with
equal odds, either *global* (one column, the same in every block, is the whole network) or *local*
(each join drops each of its inputs with probability `local_drop`, always keeping at least one).
Eval mode runs every column and joins with plain means, so the exported graph is deterministic.
"""
from __future__ import annotations

import copy
import functools
import operator
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgecnn.errors import UserError
from edgecnn.registry import register_model


@dataclass(frozen=True)
class DropPath:
    """One mini-batch's drop-path draw: `column` set means global (only that column runs)."""
    column: int | None = None
    local_drop: float = 0.0


def _mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    # A one-input join is the identity: no Add/Div nodes for it in the exported graph.
    return tensors[0] if len(tensors) == 1 else functools.reduce(operator.add, tensors) / len(tensors)


def local_drop_join(inputs: Sequence[torch.Tensor], drop_prob: float) -> torch.Tensor:
    """Mean of the inputs that survive dropping each with `drop_prob`; one random input if none do."""
    if len(inputs) == 1 or drop_prob == 0.0:
        return _mean(inputs)
    keep = (torch.rand(len(inputs)) >= drop_prob).tolist()
    if not any(keep):
        keep[int(torch.randint(len(inputs), ()))] = True
    return _mean([x for x, k in zip(inputs, keep) if k])


class FractalUnit(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.Dropout(dropout),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class FractalBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_columns: int, dropout: float) -> None:
        super().__init__()
        # columns[c] has 2**c units; the deepest column is the last.
        self.columns = nn.ModuleList(
            nn.ModuleList(FractalUnit(in_ch if i == 0 else out_ch, out_ch, dropout) for i in range(2 ** c))
            for c in range(num_columns))

    def active_columns(self, step: int) -> list[int]:
        """Columns that finish a unit at this depth step; their outputs are joined after it."""
        deepest = len(self.columns) - 1
        return [c for c in range(len(self.columns)) if (step + 1) % 2 ** (deepest - c) == 0]

    def forward(self, x: torch.Tensor, drop_path: DropPath = DropPath()) -> torch.Tensor:
        if drop_path.column is not None:
            for unit in self.columns[drop_path.column]:
                x = unit(x)
            return x
        column_inputs = [x] * len(self.columns)
        units_done = [0] * len(self.columns)
        for step in range(len(self.columns[-1])):
            active = self.active_columns(step)
            outputs = []
            for c in active:
                outputs.append(self.columns[c][units_done[c]](column_inputs[c]))
                units_done[c] += 1
            joined = local_drop_join(outputs, drop_path.local_drop)
            for c in active:
                column_inputs[c] = joined
        return joined


class FractalNet(nn.Module):
    def __init__(self, channels: Sequence[int] = (64, 128, 256, 512, 512), num_columns: int = 3,
                 dropout: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4), local_drop: float = 0.15,
                 global_fraction: float = 0.5, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if len(dropout) != len(channels):
            raise UserError(f"FractalNet needs one dropout rate per block: got {len(dropout)} for {len(channels)} blocks")
        self.num_columns = num_columns
        self.local_drop = local_drop
        self.global_fraction = global_fraction
        widths = [in_chans, *channels]
        self.blocks = nn.ModuleList(FractalBlock(widths[i], widths[i + 1], num_columns, dropout[i])
                                    for i in range(len(channels)))
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(channels[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def sample_drop_path(self) -> DropPath:
        """Draw one mini-batch's drop-path: global (one random column) or local, per `global_fraction`."""
        if float(torch.rand(())) < self.global_fraction:
            return DropPath(column=int(torch.randint(self.num_columns, ())))
        return DropPath(local_drop=self.local_drop)

    def forward_path(self, x: torch.Tensor, drop_path: DropPath = DropPath()) -> torch.Tensor:
        for block in self.blocks:
            x = self.pool(block(x, drop_path))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_path(x, self.sample_drop_path() if self.training else DropPath())


def extract_column(model: FractalNet, column: int) -> nn.Sequential:
    """One column of every block as a plain network with copied weights (= global drop-path on it)."""
    if not 0 <= column < model.num_columns:
        raise UserError(f"column {column} out of range: this FractalNet has columns 0..{model.num_columns - 1}")
    layers: list[nn.Module] = []
    for block in model.blocks:
        layers += [*copy.deepcopy(block.columns[column]), copy.deepcopy(model.pool)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1), copy.deepcopy(model.fc)]
    return nn.Sequential(*layers).train(model.training)


def extract_deepest_column(model: FractalNet) -> nn.Sequential:
    """The deepest column alone, which the paper found nearly as accurate as the whole fractal."""
    return extract_column(model, model.num_columns - 1)


# 33,724,618 parameters. A block of C=3 columns has 1 + 2 + 4 = 7 conv units, 3 of them reading the
# block input: 9·(3·c_in·c_out + 4·c_out²) conv weights + 7·2·c_out BN affine parameters, so
#   3→64: 153,536   64→128: 812,800   128→256: 3,247,616   256→512: 12,983,296   512→512: 16,522,240
# plus the 512→10 classifier (5,130): 33,724,618. 845 M MACs at 32×32.
@register_model(dataset="cifar10", reference_params=33_724_618, reference_source="edgecnn (ours)",
                min_input_size=(32, 32))
def fractalnet_20(**kw) -> FractalNet:
    """FractalNet-20 for CIFAR: 5 blocks of C=3 columns, widths 64-128-256-512-512, drop-path + dropout."""
    return FractalNet(**kw)


# 764,634 parameters, 31.9 M MACs at 28×28 (the deepest column alone: 20.9 M).
@register_model(dataset="fashion_mnist", reference_params=764_634, reference_source="edgecnn (ours)")
def fractalnet_fmnist(**kw) -> FractalNet:
    """FractalNet with C=3 columns in 4 blocks (paper: 5) of widths 16-32-64-96, no dropout.

    Drop-path is halved from the paper's (local 0.15, global 50 %): at the paper's rates a 10-epoch
    run underfits (train 90.9 %, test 90.3 %); the paper trains 400 epochs.
    """
    kw = {"local_drop": 0.1, "global_fraction": 0.25, **kw}
    return FractalNet((16, 32, 64, 96), dropout=(0.0,) * 4, **kw)
