"""What is special about GoogLeNet (aux heads in training only) and the LeNet/AlexNet/VGG variants."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import edgecnn
from edgecnn.layers import AuxHead, AuxOutputs

FIXTURES = Path(__file__).parent / "data" / "reference_state_dicts"
GOOGLENET_SMALL_INPUT = (2, 3, 32, 32)


@pytest.fixture(scope="module")
def googlenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return edgecnn.create_model("googlenet")


def test_googlenet_training_returns_two_aux_logits(googlenet: torch.nn.Module) -> None:
    out = googlenet.train()(torch.randn(GOOGLENET_SMALL_INPUT))
    assert isinstance(out, AuxOutputs)
    assert out.logits.shape == (2, 1000)
    assert len(out.aux) == 2 and all(a.shape == (2, 1000) for a in out.aux)
    assert googlenet.config.aux_weight == 0.3


def test_googlenet_eval_returns_logits_only(googlenet: torch.nn.Module) -> None:
    with torch.no_grad():
        out = googlenet.eval()(torch.randn(GOOGLENET_SMALL_INPUT))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


def test_aux_heads_excluded_from_inference_param_count(googlenet: torch.nn.Module) -> None:
    assert isinstance(googlenet.aux1, AuxHead) and isinstance(googlenet.aux2, AuxHead)
    assert edgecnn.count_params(googlenet) == 6_624_904
    assert edgecnn.count_params(googlenet, include_aux=True) == 13_004_888


def test_googlenet_without_aux_has_no_aux_modules() -> None:
    model = edgecnn.create_model("googlenet", aux_logits=False)
    assert not any(isinstance(m, AuxHead) for m in model.modules())
    assert not any(k.startswith(("aux1.", "aux2.")) for k in model.state_dict())
    assert isinstance(model.train()(torch.randn(GOOGLENET_SMALL_INPUT)), torch.Tensor)
    assert edgecnn.count_params(model, include_aux=True) == 6_624_904


def test_published_googlenet_weights_load_into_model_without_aux() -> None:
    """Weights are published with aux heads; dropping them is a non-strict load of the same keys."""
    ref = json.loads((FIXTURES / "googlenet.json").read_text())["state_dict"]
    model = edgecnn.create_model("googlenet", aux_logits=False)
    result = model.load_state_dict({k: torch.zeros(s) for k, s in ref.items()}, strict=False)
    assert not result.missing_keys
    assert {k.split(".")[0] for k in result.unexpected_keys} == {"aux1", "aux2"}


def test_published_googlenet_weights_load_strict_with_aux() -> None:
    ref = json.loads((FIXTURES / "googlenet.json").read_text())["state_dict"]
    with torch.device("meta"):
        model = edgecnn.create_model("googlenet")
    model.load_state_dict({k: torch.zeros(s, device="meta") for k, s in ref.items()}, strict=True, assign=True)


def test_googlenet_fmnist_keeps_both_aux_heads_at_28px() -> None:
    model = edgecnn.create_model("googlenet_fmnist")
    out = model.train()(torch.randn(2, 1, 28, 28))
    assert isinstance(out, AuxOutputs) and len(out.aux) == 2
    assert edgecnn.count_params(model, include_aux=True) == model.config.reference_params_with_aux


def test_lenet5_fmnist_pads_28px_into_the_classic_32px_layout() -> None:
    classic, padded = edgecnn.create_model("lenet5"), edgecnn.create_model("lenet5_fmnist")
    assert [p.shape for p in classic.parameters()] == [p.shape for p in padded.parameters()]
    assert edgecnn.count_params(padded) == 61_706
    assert padded.eval()(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("name", ["lenet5_fmnist", "alexnet_fmnist", "vgg11_bn_fmnist", "vgg16_bn_fmnist",
                                  "googlenet_fmnist"])
def test_fmnist_variants_fit_the_cpu_training_budget(name: str) -> None:
    with torch.device("meta"):
        model = edgecnn.create_model(name)
    assert edgecnn.count_macs(model) <= 30_000_000


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "googlenet"])
def test_min_input_size_is_tight(name: str) -> None:
    """The smallest accepted input is what fast tests run at; one pixel less must fail."""
    model = edgecnn.create_model(name).eval()
    h, w = model.config.min_input_size
    with torch.no_grad():
        assert model(torch.randn(1, 3, h, w)).shape == (1, 1000)
        with pytest.raises(RuntimeError):
            model(torch.randn(1, 3, h - 1, w - 1))
