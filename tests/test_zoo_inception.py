"""What is special about the Inception family: the v3 aux head, the low-resolution study, and the
factorizations (5×5 → two 3×3, n×n → 1×n + n×1) measured on the modules the zoo builds."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import edgecnn
from edgecnn.layers import AuxHead, AuxOutputs
from edgecnn.zoo.bn_inception import BasicConv2d, BNInceptionBlock
from edgecnn.zoo.inception_v3 import InceptionAux

LOW_RES = ("inception_v3_rf299", "inception_v3_rf151", "inception_v3_rf79")
FMNIST = ("bn_inception_fmnist", "inception_v3_fmnist", "inception_v4_fmnist", "inception_resnet_v2_fmnist")


def _meta_stats(name: str) -> tuple[nn.Module, int]:
    with torch.device("meta"):
        model = edgecnn.create_model(name)
        return model, edgecnn.count_macs(model)


def _params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _input_footprint(layers: nn.Module, channels: int, size: int = 15) -> tuple[int, int]:
    """Height and width of the input window one centre output pixel depends on."""
    for m in layers.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.ones_(m.weight)  # positive weights and input: every ReLU passes its gradient
    x = torch.ones(1, channels, size, size, requires_grad=True)
    out = layers.eval()(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows, cols = (x.grad[0].abs().sum(0) > 0).nonzero(as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_v3_training_returns_aux_outputs_and_eval_logits_only() -> None:
    model = edgecnn.create_model("inception_v3_fmnist")
    x = torch.randn(2, 1, 28, 28)
    out = model.train()(x)
    assert isinstance(out, AuxOutputs) and len(out.aux) == 1
    assert out.logits.shape == out.aux[0].shape == (2, 10)
    assert isinstance(model.eval()(x), torch.Tensor)
    cfg = model.config
    assert (cfg.aux_weight, cfg.label_smoothing) == (0.4, 0.1)


def test_v3_canonical_training_config() -> None:
    cfg = edgecnn.get_config("inception_v3")
    assert (cfg.recipe, cfg.aux_weight, cfg.label_smoothing) == ("inception_v3", 0.4, 0.1)
    assert cfg.input_size == (3, 299, 299)


def test_aux_logits_false_drops_the_module() -> None:
    with torch.device("meta"):
        with_aux = edgecnn.create_model("inception_v3")
        without = edgecnn.create_model("inception_v3", aux_logits=False)
    assert not any(isinstance(m, AuxHead) for m in without.modules())
    assert not any(k.startswith("AuxLogits.") for k in without.state_dict())
    assert edgecnn.count_params(without, include_aux=True) == edgecnn.count_params(with_aux) == 23_834_568
    assert edgecnn.count_params(with_aux, include_aux=True) == 27_161_264
    small = edgecnn.create_model("inception_v3_fmnist", aux_logits=False).train()
    assert isinstance(small(torch.randn(2, 1, 28, 28)), torch.Tensor)


def test_aux_head_is_torchvisions_at_299_and_still_trains_below() -> None:
    head = InceptionAux(8, 5, width=1.0).eval()
    x = torch.randn(2, 8, 17, 17)  # Mixed_6e's grid at 299 px
    expected = head.fc(torch.flatten(head.avgpool(head.conv1(head.conv0(F.avg_pool2d(x, 5, 3)))), 1))
    assert torch.equal(head(x), expected)
    model = edgecnn.create_model("inception_v3").train()  # 224 px → a 12×12 grid at Mixed_6e
    assert model(torch.randn(2, 3, 224, 224)).aux[0].shape == (2, 1000)


def test_low_resolution_variants_share_parameters_and_compute() -> None:
    stats = {name: _meta_stats(name) for name in LOW_RES}
    assert len({edgecnn.count_params(model, include_aux=True) for model, _ in stats.values()}) == 1
    macs = [m for _, m in stats.values()]
    assert max(macs) <= 1.15 * min(macs), dict(zip(LOW_RES, macs))
    assert [edgecnn.get_config(n).input_size[1] for n in LOW_RES] == [299, 151, 79]


@pytest.mark.parametrize("name, grid", [("inception_v3_rf299", 35), ("inception_v3_rf151", 35),
                                        ("inception_v3_rf79", 36)])
def test_low_resolution_stems_reach_the_documented_grid(name: str, grid: int) -> None:
    model, _ = _meta_stats(name)
    seen: list[tuple[int, ...]] = []
    model.Mixed_5b.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.device("meta"):
        model.eval()(torch.zeros(1, *model.config.input_size))
    assert seen == [(grid, grid)]


def test_two_3x3_replace_5x5_with_25_over_18_fewer_weights() -> None:
    c = 32
    block = BNInceptionBlock(c, c, c, c, c, c, "avg", c)
    double = block.branch3x3dbl[1:]  # the two stacked 3×3s after the 1×1 reduce
    assert [layer.conv.kernel_size for layer in double] == [(3, 3), (3, 3)]
    ratio = _params(nn.Conv2d(c, c, 5, bias=False)) / sum(layer.conv.weight.numel() for layer in double)
    assert ratio == pytest.approx(25 / 18)
    assert _input_footprint(double, c) == (5, 5)


def test_bn_inception_has_no_5x5_and_bn_after_every_conv() -> None:
    with torch.device("meta"):
        model = edgecnn.create_model("bn_inception")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.kernel_size != (5, 5) for m in convs)
    assert len(convs) == sum(isinstance(m, BasicConv2d) for m in model.modules())


@pytest.mark.parametrize("block", ["Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"])
def test_nxn_factorized_into_1xn_and_nx1_saves_n_over_2(block: str) -> None:
    with torch.device("meta"):
        module = getattr(edgecnn.create_model("inception_v3"), block)
    pair = (module.branch7x7dbl_2, module.branch7x7dbl_3)  # c7→c7 as 7×1 then 1×7
    n = pair[0].conv.kernel_size[0]
    assert sorted(layer.conv.kernel_size for layer in pair) == [(1, n), (n, 1)]
    c7 = pair[0].conv.in_channels
    full = _params(nn.Conv2d(c7, c7, n, bias=False))
    assert full / sum(layer.conv.weight.numel() for layer in pair) == pytest.approx(n * n / (2 * n))


def test_factorized_pair_sees_the_full_nxn_window() -> None:
    module = edgecnn.create_model("inception_v3_fmnist").Mixed_6b
    pair = nn.Sequential(module.branch7x7dbl_2, module.branch7x7dbl_3)
    assert _input_footprint(pair, module.branch7x7dbl_2.conv.in_channels) == (7, 7)


@pytest.mark.parametrize("name", FMNIST)
def test_fmnist_variants_fit_the_training_budget(name: str) -> None:
    model, macs = _meta_stats(name)
    assert macs <= 30_000_000
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
