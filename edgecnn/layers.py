"""Building blocks shared by zoo families, and the conventions every model follows.

Conventions:
- `forward` in eval mode returns logits only, so export never sees training-only branches.
- Auxiliary classifiers subclass `AuxHead`; in training mode a model with aux heads returns
  `AuxOutputs(logits, aux)` and the trainer weights each aux loss by `config.aux_weight`; a model
  whose outputs carry their own `weights` (one per output, aux first, logits last: a multi-exit
  BranchyNet) is weighted by those instead.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn


class AuxOutputs(NamedTuple):
    logits: torch.Tensor
    aux: tuple[torch.Tensor, ...]
    weights: tuple[float, ...] | None = None  # loss weight per output (aux..., logits); None: config.aux_weight


class AuxHead(nn.Module):
    """Marker base for auxiliary classifiers: trained with the model, dropped at inference."""


def logits_of(output: torch.Tensor | AuxOutputs) -> torch.Tensor:
    return output.logits if isinstance(output, AuxOutputs) else output


def count_params(model: nn.Module, include_aux: bool = False) -> int:
    """Parameter count; aux heads are excluded by default since inference never runs them."""
    skip: set[int] = set()
    if not include_aux:
        for m in model.modules():
            if isinstance(m, AuxHead):
                skip.update(id(p) for p in m.parameters())
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


class ConvBNAct(nn.Sequential):
    """Conv → BatchNorm → activation, the unit most small variants are made of."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int | tuple[int, int] = 3, stride: int = 1,
                 padding: int | tuple[int, int] | None = None, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU) -> None:
        if padding is None:
            padding = tuple(k // 2 for k in kernel_size) if isinstance(kernel_size, tuple) else kernel_size // 2
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False),
                                   nn.BatchNorm2d(out_ch)]
        if act is not None:
            layers.append(act(inplace=True) if act is nn.ReLU else act())
        super().__init__(*layers)
