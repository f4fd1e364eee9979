"""Conv-BN folding: a torch.fx graph transform on the unmodified model.

Eval-mode BatchNorm is a per-channel affine map, so it can be merged into a neighbouring linear
layer and disappear from the deployed graph:

- Conv → BN and Linear → BatchNorm1d: the BN folds into the producer's weight and bias
  (torch.nn.utils.fusion), when the producer feeds nothing else.
- BN → Conv (pre-activation nets): the BN folds into the consumer's input channels, when every
  consumer is a conv without padding (zero padding of the BN's output would not commute).
- Any BN left (e.g. after a concatenation, before a ReLU) becomes an `AffineChannel` (Mul + Add):
  exact, and no BatchNormalization op reaches the exported graph.

The original model is never changed: fused layers are new modules, the rest is shared. Models
fx cannot trace as a whole are traced with their untraceable submodules kept as leaves, and each
leaf is folded on its own.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Producer type → the BN type that may follow it, and whether its weight is transposed.
_PRODUCERS: dict[type[nn.Module], tuple[type[nn.Module], bool]] = {
    nn.Conv1d: (nn.BatchNorm1d, False), nn.Conv2d: (nn.BatchNorm2d, False), nn.Conv3d: (nn.BatchNorm3d, False),
    nn.ConvTranspose1d: (nn.BatchNorm1d, True), nn.ConvTranspose2d: (nn.BatchNorm2d, True),
    nn.ConvTranspose3d: (nn.BatchNorm3d, True), nn.Linear: (nn.BatchNorm1d, False),
}
_CONSUMERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class FoldReport:
    folded_into_producer: int = 0   # Conv/Linear → BN
    folded_into_consumer: int = 0   # BN → Conv
    to_affine: int = 0              # no partner: lowered to Mul + Add
    untraceable: tuple[str, ...] = ()  # submodules fx could not trace (folded inside, as leaves)

    @property
    def folded(self) -> int:
        return self.folded_into_producer + self.folded_into_consumer

    def to_dict(self) -> dict:
        return {"bn_folded": self.folded, "bn_folded_into_producer": self.folded_into_producer,
                "bn_folded_into_consumer": self.folded_into_consumer, "bn_to_affine": self.to_affine,
                "untraceable_submodules": list(self.untraceable)}


class AffineChannel(nn.Module):
    """An eval-mode BatchNorm that has no layer to fold into: y = x · scale + shift per channel."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        scale, shift = _bn_scale_shift(bn)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(view) + self.shift.view(view)


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
    return scale.detach().clone(), shift.detach().clone()


def _absorb_bn_into_conv(bn: nn.modules.batchnorm._BatchNorm, conv: nn.Conv2d) -> nn.Module:
    """conv(bn(x)) as one conv: scale the weight per input channel, push the shift into the bias."""
    scale, shift = _bn_scale_shift(bn)
    fused = copy.deepcopy(conv)
    groups, out_ch = conv.groups, conv.out_channels
    in_per_group = conv.in_channels // groups
    per_weight = (out_ch, in_per_group) + (1,) * (conv.weight.dim() - 2)

    def spread(v: torch.Tensor) -> torch.Tensor:  # input-channel vector → weight layout, group by group
        return v.view(groups, 1, in_per_group).expand(-1, out_ch // groups, -1).reshape(per_weight)

    with torch.no_grad():
        weight = conv.weight * spread(scale)
        bias = (conv.weight * spread(shift)).flatten(1).sum(1)
        if conv.bias is not None:
            bias = bias + conv.bias
        fused.weight = nn.Parameter(weight)
        fused.bias = nn.Parameter(bias)
    return fused


def _module(node: fx.Node, modules: dict[str, nn.Module], types: type | tuple) -> nn.Module | None:
    if node.op == "call_module" and isinstance(modules.get(node.target), types):
        return modules[node.target]
    return None


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _no_padding(conv: nn.Module) -> bool:
    return conv.padding == "valid" or all(p == 0 for p in conv.padding)


class _FoldTracer(fx.Tracer):
    """Keeps submodules fx cannot trace as leaves instead of failing on the whole model."""

    def __init__(self) -> None:
        super().__init__()
        self.untraceable: dict[str, nn.Module] = {}
        self._traceable: dict[int, bool] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if super().is_leaf_module(m, qualname):
            return True
        if id(m) not in self._traceable:
            try:
                fx.symbolic_trace(m)
                self._traceable[id(m)] = True
            except Exception:  # any failure inside user forward code means "not traceable"
                self._traceable[id(m)] = False
        if not self._traceable[id(m)]:
            self.untraceable[qualname] = m
            return True
        return False


def _trace(model: nn.Module) -> tuple[fx.GraphModule, dict[str, nn.Module]] | None:
    """The model's graph, with untraceable submodules as leaves; None if its own forward does not trace."""
    try:
        return fx.symbolic_trace(model), {}
    except Exception:  # fall back to tracing around the parts that do not trace
        tracer = _FoldTracer()
        try:
            graph = tracer.trace(model)
        except Exception:
            return None
        return fx.GraphModule(tracer.root, graph, model.__class__.__name__), tracer.untraceable


def _call_sites(graph: fx.Graph, target: str) -> int:
    return sum(1 for n in graph.nodes if n.op == "call_module" and n.target == target)


def _fold_graph(gm: fx.GraphModule, report: FoldReport) -> None:
    modules = dict(gm.named_modules())
    graph = gm.graph

    def replace(target: str, module: nn.Module) -> None:  # later folds must see earlier ones
        _set_submodule(gm, target, module)
        modules[target] = module
    for node in list(graph.nodes):
        bn = _module(node, modules, _BN)
        if bn is None or not bn.track_running_stats:
            continue
        source = node.args[0]
        producer = _module(source, modules, tuple(_PRODUCERS)) if isinstance(source, fx.Node) else None
        if (producer is not None and isinstance(bn, _PRODUCERS[type(producer)][0])
                and len(source.users) == 1 and _call_sites(graph, source.target) == 1):
            if isinstance(producer, nn.Linear):
                fused = fuse_linear_bn_eval(producer, bn)
            else:
                fused = fuse_conv_bn_eval(producer, bn, transpose=_PRODUCERS[type(producer)][1])
            replace(source.target, fused)
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            report.folded_into_producer += 1
            continue
        consumers = list(node.users)
        if consumers and all(_module(u, modules, _CONSUMERS) is not None and u.args[0] is node
                             and len(u.args) == 1 and not u.kwargs and _no_padding(modules[u.target])
                             and _call_sites(graph, u.target) == 1 for u in consumers):
            for u in consumers:
                replace(u.target, _absorb_bn_into_conv(bn, modules[u.target]))
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            report.folded_into_consumer += 1
            continue
        replace(node.target, AffineChannel(bn))
        report.to_affine += 1
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _shallow_copy(module: nn.Module) -> nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def _fold_untraceable(module: nn.Module, report: FoldReport, prefix: str) -> nn.Module:
    """A module fx cannot trace: fold inside each child; a BN child becomes an AffineChannel."""
    clone = _shallow_copy(module)
    for name, child in module.named_children():
        if isinstance(child, _BN) and child.track_running_stats:
            setattr(clone, name, AffineChannel(child))
            report.to_affine += 1
        elif isinstance(child, _BN) or not any(isinstance(m, _BN) for m in child.modules()):
            continue
        else:
            setattr(clone, name, _fold(child, report, prefix=f"{prefix}.{name}" if prefix else name))
    return clone


def _fold(model: nn.Module, report: FoldReport, prefix: str = "") -> nn.Module:
    traced = _trace(model)
    if traced is None:
        report.untraceable += (prefix or type(model).__name__,)
        return _fold_untraceable(model, report, prefix)
    gm, untraceable = traced
    report.untraceable += tuple(f"{prefix}.{q}" if prefix else q for q in untraceable)
    for qualname, leaf in untraceable.items():
        full_name = f"{prefix}.{qualname}" if prefix else qualname
        _set_submodule(gm, qualname, _fold_untraceable(leaf, report, full_name))
    _fold_graph(gm, report)
    return gm


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, FoldReport]:
    """An eval-mode copy of `model` with every BatchNorm folded (or lowered to an affine op).

    The result is an fx.GraphModule computing the same eval-mode function; `model` is unchanged.
    """
    was_training = model.training
    model.eval()
    try:
        report = FoldReport()
        folded = _fold(model, report)
    finally:
        model.train(was_training)
    if hasattr(model, "config"):
        folded.config = model.config
    return folded.eval(), report


def count_batchnorms(modules: Iterable[nn.Module]) -> int:
    return sum(isinstance(m, _BN) for m in modules)
