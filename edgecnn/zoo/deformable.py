"""Deformable ConvNets (Dai et al. 2017), optionally modulated (DCNv2, Zhu et al. 2019), in plain torch.

A deformable convolution samples its input at the regular kernel taps plus offsets predicted per
output location by a small conv (zero-initialised, so training starts from an ordinary convolution).
Semantics are exactly those of ONNX `DeformConv` and `torchvision.ops.deform_conv2d`: offsets are
(dy, dx) pairs per kernel tap per offset group, and taps falling outside the input read zero.

The PyTorch forward is the decomposition every backend runs: offsets → sampling grid → `grid_sample`
(bilinear, zero padding) → a 1×1 conv over the sampled taps stacked as channels. For export a
layer has a *lowering*, chosen per target through `prepare_export(target_name)` (which the export
stage calls on every module) or `set_deform_lowering(model, lowering)`:

- "deform_conv": one ONNX `DeformConv` node (opset ≥ 19), which ONNX Runtime runs;
- "decomposed": standard ONNX ops (`GridSample`, `Conv`), for OpenVINO (whose ONNX front end does not
  convert `DeformConv`), TensorRT and anything else.

Both the TorchScript exporter (`dynamo=False`) and the torch.export-based one (the default) emit the
node. Choose the lowering before tracing (torch.fx, torch.export): `deform_conv2d` is kept as one
torch.fx node so a traced model still honours the lowering at export time.

Key names follow mmcv's DeformConv2dPack / ModulatedDeformConv2dPack (`weight`, `conv_offset`), so
the main weight sits where the plain ResNet's `conv2.weight` does and ImageNet ResNet weights load
with only the offset convs missing.
"""
from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from edgecnn.errors import UserError
from edgecnn.registry import register_model
from edgecnn.zoo.resnet import TV, BasicBlock, Bottleneck, ResNet

LOWERINGS = ("deform_conv", "decomposed")
# Export targets whose runtime executes ONNX DeformConv; every other target gets the decomposition.
DEFORM_CONV_TARGETS = frozenset({"onnx", "onnxruntime"})
DEFORM_CONV_MIN_OPSET = 19
# Bilinear sampling reads four neighbours per tap; modulation adds one multiply.
BILINEAR_MACS_PER_TAP = 4


def _sampling_grid(offset: torch.Tensor, kernel_size: tuple[int, int], input_hw: tuple[int, int],
                   stride: tuple[int, int], padding: tuple[int, int],
                   dilation: tuple[int, int]) -> torch.Tensor:
    """grid_sample grid of shape (N·G, kH·kW·oH, oW, 2): rows run over (tap, output row)."""
    kh, kw = kernel_size
    in_h, in_w = input_hw
    out_h, out_w = offset.shape[-2:]
    arange = dict(dtype=offset.dtype, device=offset.device)
    # Undeformed tap positions in input pixels, output position · stride − padding + tap · dilation,
    # laid out to broadcast against the offsets below: y over (kH, 1, oH, 1), x over (1, kW, 1, oW).
    base_y = (torch.arange(kh, **arange) * dilation[0]).view(kh, 1, 1, 1) \
        + (torch.arange(out_h, **arange) * stride[0] - padding[0]).view(1, 1, out_h, 1)
    base_x = (torch.arange(kw, **arange) * dilation[1]).view(1, kw, 1, 1) \
        + (torch.arange(out_w, **arange) * stride[1] - padding[1]).view(1, 1, 1, out_w)
    # grid_sample with align_corners=False reads pixel p of a size-S axis at (2p + 1) / S − 1; unlike the
    # align_corners=True form it stays finite on 1-pixel maps. Offsets are in pixels, so they scale by 2 / S.
    offset = offset.reshape(-1, kh, kw, 2, out_h, out_w)  # (N·G, kH, kW, (dy, dx), oH, oW)
    y = (2 * base_y + 1) / in_h - 1 + offset[:, :, :, 0] * (2 / in_h)
    x = (2 * base_x + 1) / in_w - 1 + offset[:, :, :, 1] * (2 / in_w)
    grid = torch.stack((x, y), dim=-1)
    return grid.reshape(-1, kh * kw * out_h, out_w, 2)


def _deform_conv2d_decomposed(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                              bias: torch.Tensor | None, mask: torch.Tensor | None,
                              stride: tuple[int, int], padding: tuple[int, int],
                              dilation: tuple[int, int]) -> torch.Tensor:
    channels, in_h, in_w = input.shape[1:]
    kh, kw = weight.shape[-2:]
    offset_groups = offset.shape[1] // (2 * kh * kw)
    out_h, out_w = offset.shape[-2:]
    grid = _sampling_grid(offset, (kh, kw), (in_h, in_w), stride, padding, dilation)
    # Each offset group samples its own slice of channels with its own grid: (N·G, C/G, taps·oH, oW).
    taps = F.grid_sample(input.reshape(-1, channels // offset_groups, in_h, in_w), grid,
                         mode="bilinear", padding_mode="zeros", align_corners=False)
    if mask is not None:
        taps = taps * mask.reshape(-1, 1, kh * kw * out_h, out_w)
    # Channels then taps, the order of the weight's (C/groups, kH, kW): a 1×1 conv finishes the job
    # (a GEMM; faster to train than a kH×kW conv of stride kH×kW over a tiled tap image).
    taps = taps.reshape(-1, channels * kh * kw, out_h, out_w)
    groups = channels // weight.shape[1]
    return F.conv2d(taps, weight.reshape(weight.shape[0], -1, 1, 1), bias, groups=groups)


def _deform_conv_attrs(weight: torch.Tensor, offset: torch.Tensor, channels: int, stride: tuple[int, int],
                       padding: tuple[int, int], dilation: tuple[int, int]) -> dict[str, int | list[int]]:
    """DeformConv's attributes as Python ints (the channel and kernel sizes are static under export)."""
    kh, kw = (int(k) for k in weight.shape[-2:])
    return dict(strides=list(stride), pads=[*padding, *padding], dilations=list(dilation),
                group=int(channels) // int(weight.shape[1]), offset_group=int(offset.shape[1]) // (2 * kh * kw),
                kernel_shape=[kh, kw])


class _DeformConvTorchScript(torch.autograd.Function):
    """Carries the ONNX DeformConv symbolic through the TorchScript exporter (torch.onnx.export(dynamo=False)).

    Used only while that exporter traces, where the forward just gives the node its output shape and
    dtype: tracing the decomposition into the Function's subgraph trips the exporter's peephole pass
    ("Argument passed to at() was not in the map", torch 2.13), and the node's values come from the runtime.
    """

    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, attrs):  # noqa: ANN001
        return input.new_zeros((input.shape[0], weight.shape[0], *offset.shape[-2:]))

    @staticmethod
    def symbolic(g, input, offset, weight, bias, mask, attrs):  # noqa: ANN001
        if g.opset < DEFORM_CONV_MIN_OPSET:
            raise UserError(f"ONNX DeformConv needs opset >= {DEFORM_CONV_MIN_OPSET}, the export asked for "
                            f"{g.opset}; raise the opset or use the 'decomposed' lowering")
        inputs = [input, weight, offset] + [v for v in (bias, mask) if v is not None]
        return g.op("DeformConv", *inputs, **{f"{key}_i": value for key, value in attrs})


def _deform_conv2d_onnx_node(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None, mask: torch.Tensor | None, stride: tuple[int, int],
                             padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    attrs = _deform_conv_attrs(weight, offset, input.shape[1], stride, padding, dilation)
    if torch.jit.is_tracing():
        if mask is not None and bias is None:
            # DeformConv's inputs are positional, so the mask needs a bias before it: zeros of the weight's
            # dtype (an FP16 graph needs a half B beside a half W).
            bias = weight.new_zeros(weight.shape[0])
        return _DeformConvTorchScript.apply(input, offset, weight, bias, mask, tuple(attrs.items()))
    out_shape = (input.shape[0], weight.shape[0], *offset.shape[-2:])
    return torch.onnx.ops.symbolic("DeformConv", (input, weight, offset, bias, mask), attrs,
                                   dtype=input.dtype, shape=out_shape, version=DEFORM_CONV_MIN_OPSET)


def deform_conv2d(input: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None = None, stride: int | tuple[int, int] = 1,
                  padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                  mask: torch.Tensor | None = None, lowering: str = "deform_conv") -> torch.Tensor:
    """Deformable 2-D convolution with torchvision.ops.deform_conv2d's signature and semantics.

    Groups and offset groups follow from the shapes: groups = C / weight.shape[1], offset groups =
    offset.shape[1] / (2·kH·kW). `lowering` only matters under torch.onnx.export.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if lowering == "deform_conv" and torch.onnx.is_in_onnx_export():
        return _deform_conv2d_onnx_node(input, offset, weight, bias, mask, stride, padding, dilation)
    return _deform_conv2d_decomposed(input, offset, weight, bias, mask, stride, padding, dilation)


# One node under torch.fx tracing: the lowering is then decided when the traced graph is exported.
torch.fx.wrap("deform_conv2d")


def lowering_for_target(target_name: str) -> str:
    return "deform_conv" if target_name.lower() in DEFORM_CONV_TARGETS else "decomposed"


class DeformConv2d(nn.Module):
    """Deformable convolution owning its offset conv (and, when `modulated`, the DCNv2 mask).

    `conv_offset` predicts, per output location, 2·kH·kW offsets per offset group, followed when
    modulated by kH·kW mask logits per offset group (sigmoid), mmcv's layout. It has the main
    conv's kernel, stride, padding and dilation, so its grid is the output grid.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, offset_groups: int = 1,
                 bias: bool = True, modulated: bool = False) -> None:
        super().__init__()
        for what, count in (("in_channels", in_channels), ("out_channels", out_channels)):
            if count % groups:
                raise UserError(f"DeformConv2d: {what}={count} is not divisible by groups={groups}")
        if in_channels % offset_groups:
            raise UserError(f"DeformConv2d: in_channels={in_channels} is not divisible by "
                            f"offset_groups={offset_groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups, self.offset_groups, self.modulated = groups, offset_groups, modulated
        self.lowering = "deform_conv"
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv2d's default
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(in_channels, offset_groups * taps * (3 if modulated else 2),
                                     self.kernel_size, self.stride, self.padding, self.dilation)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, offset_groups: int = 1, modulated: bool = False) -> DeformConv2d:
        """The deformable twin of `conv`, same geometry and weights: equal to it until offsets are learned.

        Modulated, it starts at half of it: the DCNv2 mask starts at sigmoid(0) = 0.5, as in the paper and mmcv.
        """
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise UserError(f"DeformConv2d.from_conv: needs numeric zero padding, got "
                            f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, offset_groups, conv.bias is not None, modulated)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer.to(conv.weight.device)

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.conv_offset(x)
        if not self.modulated:
            return out, None
        n_offsets = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        return out[:, :n_offsets], torch.sigmoid(out[:, n_offsets:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation,
                             mask, self.lowering)

    def prepare_export(self, target_name: str) -> None:
        """Called by the export stage before tracing: the native node where the target runs it."""
        self.lowering = lowering_for_target(target_name)

    def extra_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """The main conv (not an nn.Conv2d child) and the bilinear sampling; conv_offset counts itself."""
        taps = self.kernel_size[0] * self.kernel_size[1]
        out_positions = output[0, 0].numel()
        conv = output[0].numel() * (self.in_channels // self.groups) * taps
        per_tap = BILINEAR_MACS_PER_TAP + (1 if self.modulated else 0)
        return conv + self.in_channels * taps * out_positions * per_tap

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"offset_groups={self.offset_groups}, bias={self.bias is not None}, modulated={self.modulated}, "
                f"lowering={self.lowering!r}")


def set_deform_lowering(model: nn.Module, lowering: str) -> int:
    """Set every DeformConv2d in `model` to `lowering`; returns how many layers were set."""
    if lowering not in LOWERINGS:
        raise UserError(f"unknown deformable-conv lowering {lowering!r}; choose one of {', '.join(LOWERINGS)}")
    layers = [m for m in model.modules() if isinstance(m, DeformConv2d)]
    for layer in layers:
        layer.lowering = lowering
    return len(layers)


def make_stages_deformable(model: ResNet, stages: tuple[str, ...] = ("layer3", "layer4"),
                           modulated: bool = False) -> ResNet:
    """Swap the second 3×3 conv of every block in `stages` for its deformable twin (Dai et al. §4)."""
    for stage in stages:
        blocks = getattr(model, stage, None)
        if not isinstance(blocks, nn.Sequential) or not all(isinstance(b, (BasicBlock, Bottleneck)) for b in blocks):
            raise UserError(f"make_stages_deformable: {stage!r} is not a stage of ResNet blocks; "
                            f"name stages like 'layer3'")
        for block in blocks:
            block.conv2 = DeformConv2d.from_conv(block.conv2, modulated=modulated)
    return model


# Offset convs added to ResNet-50 (v1: 2·9 = 18 outputs per 3×3, v2: 3·9 = 27, each with bias):
#   v1: layer3 6 × (256·18·9 + 18) = 248,940; layer4 3 × (512·18·9 + 18) = 248,886 → +497,826
#   v2: layer3 6 × (256·27·9 + 27) = 373,410; layer4 3 × (512·27·9 + 27) = 373,329 → +746,739
RESNET50_PARAMS = 25_557_032
DCN_SOURCE = f"{TV} resnet50 + offset convs (Dai et al. 2017)"


@register_model(reference_params=RESNET50_PARAMS + 497_826, reference_source=DCN_SOURCE,
                recipe="resnet", min_input_size=(32, 32))
def deform_resnet50(**kw) -> ResNet:
    """ResNet-50 with deformable 3×3 convs in conv4_x and conv5_x (Dai et al. 2017), ImageNet 224."""
    return make_stages_deformable(ResNet(Bottleneck, [3, 4, 6, 3], **kw))


@register_model(reference_params=RESNET50_PARAMS + 746_739, reference_source=DCN_SOURCE + ", DCNv2 masks",
                recipe="resnet", min_input_size=(32, 32))
def deform_resnet50_v2(**kw) -> ResNet:
    """ResNet-50 with modulated deformable 3×3 convs (DCNv2) in conv4_x and conv5_x, ImageNet 224."""
    return make_stages_deformable(ResNet(Bottleneck, [3, 4, 6, 3], **kw), modulated=True)


@register_model(dataset="fashion_mnist", reference_params=763_458, reference_source="edgecnn (ours)")
def deform_resnet_fmnist(**kw) -> ResNet:
    """Deformable ResNet for 28×28 Fashion-MNIST: deformable 3×3s in the last two stages.

    Scaled from deform_resnet50: resnet18_fmnist's basic blocks at 1/4 width (16-32-64-128) and a 3×3 stem
    instead of bottlenecks and the 7×7/2 stem; the second 3×3 of every block in stages 3-4 is deformable.
    """
    return make_stages_deformable(ResNet(BasicBlock, [2, 2, 2, 2], widths=(16, 32, 64, 128),
                                         small_input=True, **kw))
