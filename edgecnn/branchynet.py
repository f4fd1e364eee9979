"""BranchyNet (Teerapittayanon et al. 2016): a trunk cut into stages, with an exit classifier after each
stage but the last, so easy samples leave early.

    net = attach_exits(create_model("resnet18_fmnist"), after=["layer1", "layer2"])
    net.train(); out = net(x)          # AuxOutputs(final logits, (exit 1, exit 2), weights=...)
    net.eval();  logits = net(x)       # the trunk alone: the final exit, no exit head runs
    net.forward_exits(x)               # every exit's logits, first to final
    net.early_exit(x, thresholds)      # the rule the deployed loop follows, as the reference

The cut points are names of the trunk's modules (`model.named_modules()`), in forward order. The model
is traced with torch.fx and split there (`torch.fx.passes.split_module`); each cut must be a point where
everything the rest of the network needs is that one module's output.

Exit rule: a sample leaves at exit k when the natural-log entropy of softmax(logits_k) is below
thresholds[k]; the final exit takes every sample still in.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.split_module import split_module

from edgecnn.data import ImageDataset, preprocess
from edgecnn.errors import UserError
from edgecnn.validation import check_thresholds
from edgecnn.layers import AuxOutputs, ConvBNAct

# An exit head for features of shape (C, H, W) predicting `num_classes`.
HeadFactory = Callable[[tuple[int, int, int], int], nn.Module]

EXIT_ENTROPY = "softmax, natural log"
EXIT_RULE = "exit at stage k when entropy < thresholds[k]"


class ExitHead(nn.Sequential):
    """A small classifier on a stage's features: 3×3 ConvBNReLU layers (each with `stride`), average
    pooling to a `pool`×`pool` grid, one linear layer — the shape of the paper's branches."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, widths: Sequence[int] = (32,),
                 stride: int = 2, pool: int = 2) -> None:
        channels = in_shape[0]
        layers: list[nn.Module] = []
        for width in widths:
            layers.append(ConvBNAct(channels, width, 3, stride=stride))
            channels = width
        layers += [nn.AdaptiveAvgPool2d(pool), nn.Flatten(1), nn.Linear(channels * pool * pool, num_classes)]
        super().__init__(*layers)


def exit_head(widths: Sequence[int] = (32,), stride: int = 2, pool: int = 2) -> HeadFactory:
    """A head factory for `attach_exits`: every exit gets an `ExitHead` with these settings."""
    return lambda in_shape, num_classes: ExitHead(in_shape, num_classes, widths, stride, pool)


def default_exit_weights(num_exits: int) -> tuple[float, ...]:
    """Loss weight of each exit, first to final: 1.0 at the first exit falling linearly to 0.5 at the
    final one, favouring the early exits as the paper does (it keeps the final exit's weight lowest)."""
    if num_exits == 1:
        return (1.0,)
    return tuple(round(1.0 - 0.5 * k / (num_exits - 1), 4) for k in range(num_exits))


class MultiExitNet(nn.Module):
    """`stages[k]` maps the features of stage k-1 to those of stage k (the last stage returns the final
    logits); `exits[k]` classifies stage k's features. Eval-mode forward is the trunk alone."""

    def __init__(self, stages: Sequence[nn.Module], exits: Sequence[nn.Module], stage_names: Sequence[str],
                 exit_weights: Sequence[float] | None = None, freeze_trunk: bool = False) -> None:
        super().__init__()
        if len(exits) != len(stages) - 1:
            raise ValueError(f"{len(stages)} stages need {len(stages) - 1} exit heads, got {len(exits)}")
        self.stages = nn.ModuleList(stages)
        self.exits = nn.ModuleList(exits)
        self.stage_names = tuple(stage_names)  # the trunk module each early exit follows
        weights = tuple(float(w) for w in (exit_weights or default_exit_weights(self.num_exits)))
        if len(weights) != self.num_exits or not all(math.isfinite(w) and w > 0 for w in weights):
            raise UserError(f"exit weights must be {self.num_exits} positive numbers (one per exit, final "
                            f"last), got {list(weights)}")
        self.exit_weights = weights
        self.freeze_trunk = freeze_trunk
        if freeze_trunk:
            self.stages.requires_grad_(False)

    def train(self, mode: bool = True) -> MultiExitNet:
        """A frozen trunk stays in eval mode (BatchNorm statistics and dropout untouched) while exits train."""
        super().train(mode)
        if self.freeze_trunk:
            self.stages.eval()
        return self

    @property
    def num_exits(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor | AuxOutputs:
        if not self.training:
            for stage in self.stages:
                x = stage(x)
            return x
        *early, final = self.forward_exits(x)
        return AuxOutputs(final, tuple(early), weights=self.exit_weights)

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every exit's logits for the whole batch, first exit to final."""
        out = []
        for stage, head in zip(self.stages, self.exits):
            x = stage(x)
            out.append(head(x))
        out.append(self.stages[-1](x))
        return out

    @torch.no_grad()
    def early_exit(self, x: torch.Tensor, thresholds: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted classes, exit index per sample) under the exit rule, computing every exit."""
        check_thresholds(thresholds, self.num_exits)
        exits = self.forward_exits(x)
        return decide(torch.stack([softmax_entropy(e) for e in exits[:-1]]) if exits[:-1] else
                      torch.empty(0, len(x)), torch.stack([e.argmax(1) for e in exits]), thresholds)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy (nats) of softmax(logits): 0 for a certain prediction, ln(C) for a uniform one."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def decide(entropies: torch.Tensor, predictions: torch.Tensor,
           thresholds: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the exit rule to precomputed (exits-1, N) entropies and (exits, N) predictions."""
    n = predictions.shape[1]
    exit_at = torch.full((n,), len(thresholds), dtype=torch.long)
    for k in reversed(range(len(thresholds))):
        exit_at[entropies[k] < thresholds[k]] = k
    return predictions.gather(0, exit_at[None]).squeeze(0), exit_at


@torch.no_grad()
def exit_accuracies(model: MultiExitNet, ds: ImageDataset, batch_size: int = 500) -> list[float]:
    """Top-1 accuracy (percent) of each exit alone on the whole of `ds`, first exit to final."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(model.num_exits, dtype=torch.long)
    for start in range(0, len(ds), batch_size):
        images, labels = ds.get_batch(torch.arange(start, min(start + batch_size, len(ds))),
                                      size=model.config.input_size[1:])
        x = preprocess(images, model.config).contiguous(memory_format=torch.channels_last)
        correct += torch.stack([(e.argmax(1) == labels).sum() for e in model.forward_exits(x)])
    model.train(was_training)
    return [round(100.0 * c / max(1, len(ds)), 2) for c in correct.tolist()]


# ---------------------------------------------------------------- cutting a zoo model into stages

def _cut_indices(graph: fx.Graph, after: Sequence[str], model: nn.Module) -> list[int]:
    order = {node: i for i, node in enumerate(graph.nodes)}
    known = dict(model.named_modules())
    cuts = []
    for name in after:
        if name not in known:
            top = ", ".join(n for n, _ in model.named_children())
            raise UserError(f"{type(model).__name__} has no module {name!r} to put an exit after; its stages "
                            f"are named like: {top}")
        sites = [order[n] for n in graph.nodes if n.op == "call_module" and n.target == name]
        if len(sites) != 1:
            raise UserError(f"module {name!r} runs {len(sites)} times in {type(model).__name__}'s forward, so "
                            "it is no single cut point; name a module that runs once")
        cuts.append(sites[0])
    if cuts != sorted(cuts) or len(set(cuts)) != len(cuts):
        raise UserError(f"exits must follow modules in forward order, without repeats; got {list(after)}")
    return cuts


class _CutTracer(fx.Tracer):
    """Keeps each cut module whole (a Sequential or block would otherwise be traced into)."""

    def __init__(self, cuts: Sequence[str]) -> None:
        super().__init__()
        self.cuts = set(cuts)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.cuts or super().is_leaf_module(m, qualname)


def split_stages(model: nn.Module, after: Sequence[str]) -> list[fx.GraphModule]:
    """The model's eval-mode forward cut after each named module: stage k takes exactly one tensor,
    the previous stage's output (training-only branches, e.g. aux heads, are left out)."""
    was_training = model.training
    model.eval()
    try:
        tracer = _CutTracer(after)
        traced = fx.GraphModule(model, tracer.trace(model))
    except Exception as e:  # fx raises many types for Python control flow it cannot trace
        raise UserError(f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}), so it cannot be cut into stages") from e
    finally:
        model.train(was_training)
    cuts = _cut_indices(traced.graph, after, model)
    order = {node: i for i, node in enumerate(traced.graph.nodes)}
    split = split_module(traced, model, lambda node: bisect.bisect_left(cuts, order[node]))
    calls = [n for n in split.graph.nodes if n.op == "call_module"]
    if len(calls) != len(after) + 1:
        raise UserError(f"nothing runs after {after[-1]!r}: the last exit must come before the end of the network")
    previous = next(n for n in split.graph.nodes if n.op == "placeholder")
    stages = []
    for k, call in enumerate(calls):
        if call.args != (previous,):
            where = f"after {after[k - 1]!r}" if k else "at the input"
            raise UserError(f"the stage starting {where} needs more than the previous stage's output (e.g. a skip "
                            "connection crosses the cut); put the exit after a module whose output is all the "
                            "rest of the network uses")
        stages.append(getattr(split, call.target))
        previous = call
    for stage in stages:
        stage.train(was_training)
    return stages


def attach_exits(model: nn.Module, after: Sequence[str], head: HeadFactory | Sequence[HeadFactory] | None = None,
                 exit_weights: Sequence[float] | None = None, input_size: tuple[int, int, int] | None = None,
                 freeze_trunk: bool = False) -> MultiExitNet:
    """Turn a zoo model into a BranchyNet with an exit after each module named in `after`.

    `head(feature_shape, num_classes)` builds each exit, or a list of such factories one per exit (default:
    `exit_head()`); `exit_weights` gives each
    exit's loss weight, first to final (default: `default_exit_weights`). The trunk's weights are shared,
    not copied; the result carries the model's config. `freeze_trunk` trains the exits only, on a trunk
    that already has its weights (it keeps its accuracy exactly; the final exit's loss then adds nothing).
    """
    if not after:
        raise UserError("attach_exits needs at least one module name to put an exit after")
    config = getattr(model, "config", None)
    size = input_size or (config and (config.input_size[0], *(config.min_input_size or config.input_size[1:])))
    if not size:
        raise UserError("attach_exits needs input_size=(C, H, W) for a model without an edgecnn config")
    stages = split_stages(model, after)
    heads = list(head) if isinstance(head, Sequence) else [head or exit_head()] * len(after)
    if len(heads) != len(after):
        raise UserError(f"{len(after)} exits need {len(after)} head factories, got {len(heads)}")
    device = next(model.parameters()).device
    was_training = model.training
    exits = []
    with torch.no_grad():
        model.eval()
        x = torch.zeros(1, *size, device=device)
        num_classes = config.num_classes if config else model(x).shape[1]
        for name, stage, make_head in zip(after, stages, heads):
            x = stage(x)
            if x.dim() != 4:
                raise UserError(f"an exit head takes N×C×H×W features; the output of {name!r} has shape "
                                f"{tuple(x.shape)}")
            exits.append(make_head(tuple(x.shape[1:]), num_classes))
        model.train(was_training)
    net = MultiExitNet(stages, exits, after, exit_weights, freeze_trunk).to(device)
    if config is not None:
        net.config = config
    return net.train(was_training)


__all__ = ["EXIT_ENTROPY", "EXIT_RULE", "ExitHead", "MultiExitNet", "attach_exits", "check_thresholds", "decide",
           "default_exit_weights", "exit_accuracies", "exit_head", "softmax_entropy", "split_stages"]
