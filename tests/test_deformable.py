"""Deformable convolution: its semantics (ONNX DeformConv / torchvision), gradients, and both ONNX lowerings.

Exports run in real runtimes: the DeformConv node and the decomposition in ONNX Runtime, the
decomposition also in OpenVINO (whose ONNX front end does not convert DeformConv).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator

import edgecnn
from edgecnn.errors import UserError
from edgecnn.zoo.deformable import (DEFORM_CONV_MIN_OPSET, DeformConv2d, deform_conv2d, lowering_for_target,
                                    make_stages_deformable, set_deform_lowering)
from edgecnn.zoo.resnet import ResNet, BasicBlock

PARITY = 1e-4
# (kernel, stride, padding, dilation, groups, offset_groups, bias, modulated, input H×W)
GEOMETRIES = [
    (3, 1, 1, 1, 1, 1, False, False, (7, 6)),
    (3, 2, 1, 1, 2, 2, True, True, (9, 7)),
    ((3, 5), (1, 2), (1, 2), (2, 1), 1, 1, True, False, (9, 11)),
    (5, 1, 2, 1, 1, 4, False, True, (6, 7)),
    (3, 2, 1, 1, 1, 1, False, True, (1, 1)),  # 1-pixel map: every tap but the centre reads padding
]
GEOMETRY_IDS = ["plain", "strided-grouped-v2", "rect-dilated", "k5-og4-v2", "1x1-map"]


def _layer(geometry: tuple, channels: int = 8, offset_scale: float = 1.0, seed: int = 0) -> DeformConv2d:
    """A layer with learned-looking offsets (the zero init would test only the regular grid)."""
    k, s, p, d, g, og, bias, modulated, _ = geometry
    torch.manual_seed(seed)
    layer = DeformConv2d(channels, channels, k, s, p, d, g, og, bias, modulated).eval()
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3 * offset_scale)
        layer.conv_offset.bias.normal_(0, offset_scale)
        if bias:
            layer.bias.normal_()
    return layer


def _input(geometry: tuple, channels: int = 8, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, *geometry[-1], generator=torch.Generator().manual_seed(1))


def _export(model: nn.Module, x: torch.Tensor, path: Path, dynamo: bool, **kwargs) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["y"], **kwargs)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


def _run_openvino(path: Path, x: torch.Tensor) -> np.ndarray:
    ov = pytest.importorskip("openvino")
    # This CPU defaults to bf16 inference (AMX); FP32 parity needs the f32 hint.
    compiled = ov.Core().compile_model(ov.convert_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled(x.numpy())[0]


def _op_types(proto: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in proto.graph.node}


def _max_diff(a: np.ndarray, b: torch.Tensor) -> float:
    return float(np.abs(a - b.detach().numpy()).max())


# ---------------------------------------------------------------- semantics


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_zero_offsets_equal_an_ordinary_convolution(geometry: tuple) -> None:
    k, s, p, d, g, og, bias, _, _ = geometry
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, k, s, p, d, g, bias=bias)
    layer = DeformConv2d.from_conv(conv, offset_groups=og)  # zero-initialised offsets
    x = _input(geometry)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-5)

    offset = torch.zeros(2, og * 2 * layer.kernel_size[0] * layer.kernel_size[1], *conv(x).shape[-2:])
    mask = torch.ones(offset.shape[0], offset.shape[1] // 2, *offset.shape[-2:])
    torch.testing.assert_close(deform_conv2d(x, offset, conv.weight, conv.bias, s, p, d, mask=mask), conv(x),
                               atol=1e-5, rtol=1e-5)


def test_integer_offset_shifts_the_sampling_grid() -> None:
    """dy = +1 everywhere reads one row lower: the padding moves from the top edge to the bottom."""
    torch.manual_seed(0)
    x, weight = torch.randn(1, 3, 6, 5), torch.randn(4, 3, 3, 3)
    offset = torch.zeros(1, 18, 6, 5)
    offset[:, 0::2] = 1.0  # (dy, dx) pairs per tap: all dy
    lowered = F.pad(x, (1, 1, 0, 2))  # left, right, top, bottom
    torch.testing.assert_close(deform_conv2d(x, offset, weight, padding=1), F.conv2d(lowered, weight),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("geometry", GEOMETRIES[:4], ids=GEOMETRY_IDS[:4])
def test_matches_the_onnx_reference_implementation(geometry: tuple, tmp_path: Path) -> None:
    """onnx.reference spells out the DeformConv spec (its own GridSample, loop by loop): an independent check.

    (It divides by H−1 to normalise, so it cannot evaluate 1-pixel maps; ONNX Runtime can.)
    """
    layer = _layer(geometry, channels=4)
    x = _input(geometry, channels=4, batch=1)
    proto = _export(layer, x, tmp_path / "m.onnx", dynamo=False, opset_version=DEFORM_CONV_MIN_OPSET)
    reference = ReferenceEvaluator(proto).run(None, {"x": x.numpy()})[0]
    assert _max_diff(reference, layer(x)) <= PARITY


def test_gradients_reach_offsets_mask_input_and_weights() -> None:
    geometry = GEOMETRIES[1]
    layer = _layer(geometry, offset_scale=0.0)  # the paper's init: zero offsets, mask at sigmoid(0)
    x = _input(geometry).requires_grad_()
    layer(x).square().sum().backward()
    for name, grad in [("input", x.grad), ("weight", layer.weight.grad),
                       ("conv_offset.weight", layer.conv_offset.weight.grad)]:
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    n_offsets = 2 * layer.offset_groups * 9
    offset_rows, mask_rows = layer.conv_offset.weight.grad[:n_offsets], layer.conv_offset.weight.grad[n_offsets:]
    assert offset_rows.abs().sum() > 0 and mask_rows.abs().sum() > 0


def test_gradcheck_in_double() -> None:
    """Analytic gradients of the bilinear sampling agree with finite differences (offsets off integer knots)."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 5, dtype=torch.double, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, dtype=torch.double, requires_grad=True)
    offset = (torch.rand(1, 2 * 2 * 9, 3, 3, dtype=torch.double) * 2 - 1 + 0.05).requires_grad_()
    mask = torch.rand(1, 2 * 9, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: deform_conv2d(*a[:3], stride=2, padding=1, mask=a[3]),
                                    (x, offset, weight, mask))


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("geometry", [GEOMETRIES[1], GEOMETRIES[4]], ids=["strided-grouped-v2", "1x1-map"])
def test_deform_conv_lowering_is_one_node_onnx_runtime_runs(geometry: tuple, dynamo: bool, tmp_path: Path) -> None:
    layer = _layer(geometry)
    layer.prepare_export("onnxruntime")
    x = _input(geometry)
    proto = _export(layer, x, tmp_path / "m.onnx", dynamo, opset_version=DEFORM_CONV_MIN_OPSET)
    assert [n.op_type for n in proto.graph.node].count("DeformConv") == 1
    assert _max_diff(_run_ort(tmp_path / "m.onnx", x), layer(x)) <= PARITY


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("geometry", [GEOMETRIES[1], GEOMETRIES[4]], ids=["strided-grouped-v2", "1x1-map"])
def test_decomposed_lowering_runs_in_onnx_runtime_and_openvino(geometry: tuple, dynamo: bool,
                                                               tmp_path: Path) -> None:
    layer = _layer(geometry)
    layer.prepare_export("openvino")
    x = _input(geometry)
    proto = _export(layer, x, tmp_path / "m.onnx", dynamo, opset_version=DEFORM_CONV_MIN_OPSET)
    assert "DeformConv" not in _op_types(proto) and "GridSample" in _op_types(proto)
    assert _max_diff(_run_ort(tmp_path / "m.onnx", x), layer(x)) <= PARITY
    assert _max_diff(_run_openvino(tmp_path / "m.onnx", x), layer(x)) <= PARITY


def test_half_modulated_layer_without_bias_exports_in_half(tmp_path: Path) -> None:
    """FP16 artifacts: the zero bias that the mask input forces into DeformConv must be half too."""
    geometry = GEOMETRIES[3]  # modulated, no bias
    layer = _layer(geometry)
    layer.prepare_export("onnxruntime")
    x = _input(geometry)
    _export(layer.half(), x.half(), tmp_path / "m.onnx", dynamo=False, opset_version=DEFORM_CONV_MIN_OPSET)
    with torch.no_grad():
        expected = layer.float()(x)
    got = _run_ort(tmp_path / "m.onnx", x.half()).astype(np.float32)
    assert _max_diff(got, expected) <= 1e-2 * float(expected.abs().max())


@pytest.mark.parametrize("lowering", ["deform_conv", "decomposed"])
def test_dynamic_batch(lowering: str, tmp_path: Path) -> None:
    geometry = GEOMETRIES[1]
    layer = _layer(geometry)
    set_deform_lowering(layer, lowering)
    _export(layer, _input(geometry, batch=2), tmp_path / "m.onnx", dynamo=False,
            opset_version=DEFORM_CONV_MIN_OPSET, dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    for batch in (1, 3):
        x = _input(geometry, batch=batch)
        assert _max_diff(_run_ort(tmp_path / "m.onnx", x), layer(x)) <= PARITY


def test_deform_conv_lowering_below_opset_19_is_a_clear_error(tmp_path: Path) -> None:
    layer = _layer(GEOMETRIES[0])
    with pytest.raises(UserError, match="opset >= 19"):
        _export(layer, _input(GEOMETRIES[0]), tmp_path / "m.onnx", dynamo=False, opset_version=17)
    layer.prepare_export("openvino")
    _export(layer, _input(GEOMETRIES[0]), tmp_path / "m.onnx", dynamo=False, opset_version=17)


def test_lowering_survives_torch_fx_tracing(tmp_path: Path) -> None:
    """The export stage may fx-trace (e.g. to fold BatchNorm): the layer stays one node, lowered at export."""
    layer = _layer(GEOMETRIES[1])
    traced = torch.fx.symbolic_trace(nn.Sequential(layer, nn.ReLU()))
    assert any(n.op == "call_function" and n.target is deform_conv2d for n in traced.graph.nodes)
    x = _input(GEOMETRIES[1])
    torch.testing.assert_close(traced(x), F.relu(layer(x)))
    proto = _export(traced, x, tmp_path / "m.onnx", dynamo=False, opset_version=DEFORM_CONV_MIN_OPSET)
    assert "DeformConv" in _op_types(proto)


# ---------------------------------------------------------------- lowering choice, models, MACs


def test_lowering_per_target() -> None:
    assert lowering_for_target("onnx") == lowering_for_target("ONNXRuntime") == "deform_conv"
    assert {lowering_for_target(t) for t in ("openvino", "tensorrt", "tflite")} == {"decomposed"}
    model = edgecnn.create_model("deform_resnet_fmnist")
    for module in model.modules():
        if hasattr(module, "prepare_export"):
            module.prepare_export("openvino")
    assert {m.lowering for m in model.modules() if isinstance(m, DeformConv2d)} == {"decomposed"}
    assert set_deform_lowering(model, "deform_conv") == 4
    with pytest.raises(UserError, match="lowering"):
        set_deform_lowering(model, "native")


def test_bad_geometry_is_a_user_error() -> None:
    with pytest.raises(UserError, match="offset_groups"):
        DeformConv2d(6, 6, 3, offset_groups=4)
    with pytest.raises(UserError, match="groups"):
        DeformConv2d(6, 5, 3, groups=2)
    with pytest.raises(UserError, match="padding"):
        DeformConv2d.from_conv(nn.Conv2d(4, 4, 3, padding="same"))


def test_models_deform_the_later_stages_only() -> None:
    for name, modulated in (("deform_resnet50", False), ("deform_resnet50_v2", True)):
        with torch.device("meta"):
            model = edgecnn.create_model(name)
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            deformable = [isinstance(block.conv2, DeformConv2d) for block in getattr(model, stage)]
            assert all(deformable) if stage in ("layer3", "layer4") else not any(deformable), (name, stage)
        assert {m.modulated for m in model.modules() if isinstance(m, DeformConv2d)} == {modulated}
    with pytest.raises(UserError, match="stage of ResNet blocks"):
        make_stages_deformable(ResNet(BasicBlock, [1, 1, 1, 1]), stages=("fc",))


def test_resnet50_weights_load_into_the_deformable_twin() -> None:
    """Same key names as torchvision's resnet50 apart from the offset convs, which stay at their zero init."""
    with torch.device("meta"):
        plain, deform = edgecnn.create_model("resnet50"), edgecnn.create_model("deform_resnet50")
    missing, unexpected = deform.load_state_dict(plain.state_dict(), strict=False, assign=True)
    assert not unexpected and missing and all(".conv2.conv_offset." in key for key in missing)


def test_macs_count_the_deformable_conv_and_its_sampling() -> None:
    layer = DeformConv2d(8, 16, 3, stride=2, padding=1, modulated=True)
    model = nn.Sequential(layer)
    model.config = None
    out_positions = 5 * 5  # 9×9 input, stride 2
    main = 16 * out_positions * 8 * 9
    offsets = 27 * out_positions * 8 * 9
    sampling = 8 * 9 * out_positions * 5  # 4 bilinear reads + the mask multiply per tap
    assert edgecnn.count_macs(model, (8, 9, 9)) == main + offsets + sampling
    assert edgecnn.count_macs(edgecnn.create_model("deform_resnet_fmnist")) <= 31_000_000


@pytest.mark.parametrize("lowering, runtimes", [("deform_conv", ("ort",)), ("decomposed", ("ort", "openvino"))])
def test_fmnist_model_export_parity(lowering: str, runtimes: tuple[str, ...], tmp_path: Path) -> None:
    model = edgecnn.create_model("deform_resnet_fmnist").eval()
    for layer in model.modules():
        if isinstance(layer, DeformConv2d):  # as after training: offsets that move taps by a pixel or so
            with torch.no_grad():
                layer.conv_offset.weight.normal_(0, 0.02)
                layer.conv_offset.bias.normal_(0, 1.0)
    set_deform_lowering(model, lowering)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    _export(model, x, tmp_path / "m.onnx", dynamo=False, opset_version=DEFORM_CONV_MIN_OPSET)
    with torch.no_grad():
        expected = model(x)
    tolerance = PARITY * max(1.0, float(expected.abs().max()))
    run = {"ort": _run_ort, "openvino": _run_openvino}
    for runtime in runtimes:
        assert _max_diff(run[runtime](tmp_path / "m.onnx", x), expected) <= tolerance, runtime


@pytest.mark.slow
@pytest.mark.parametrize("lowering", ["deform_conv", "decomposed"])
def test_canonical_v2_model_export_parity_with_dynamo(lowering: str, tmp_path: Path) -> None:
    model = edgecnn.create_model("deform_resnet50_v2").eval()
    for layer in model.modules():
        if isinstance(layer, DeformConv2d):
            with torch.no_grad():
                layer.conv_offset.weight.normal_(0, 0.01)
    set_deform_lowering(model, lowering)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    _export(model, x, tmp_path / "m.onnx", dynamo=True)
    with torch.no_grad():
        expected = model(x)
    tolerance = PARITY * max(1.0, float(expected.abs().max()))
    assert _max_diff(_run_ort(tmp_path / "m.onnx", x), expected) <= tolerance
    if lowering == "decomposed":
        assert _max_diff(_run_openvino(tmp_path / "m.onnx", x), expected) <= tolerance
