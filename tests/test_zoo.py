"""Every registered model, one parametrized test module: a new family needs no new test code."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import edgecnn
from edgecnn.layers import AuxOutputs, logits_of
from edgecnn.stats import cached_stats

MODELS = edgecnn.list_models()
FIXTURES = Path(__file__).parent / "data" / "reference_state_dicts"
WITH_FIXTURE = sorted(p.stem for p in FIXTURES.glob("*.json"))


def _test_input(cfg: edgecnn.ModelConfig, batch: int = 2) -> torch.Tensor:
    h, w = cfg.min_input_size or cfg.input_size[1:]
    return torch.randn(batch, cfg.input_size[0], h, w, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_determinism(name: str) -> None:
    torch.manual_seed(0)
    model = edgecnn.create_model(name)
    cfg = model.config
    x = _test_input(cfg)

    model.train()
    out = model(x)
    logits = logits_of(out)
    assert logits.shape == (2, cfg.num_classes)
    assert torch.isfinite(logits).all()
    if isinstance(out, AuxOutputs):
        assert all(a.shape == (2, cfg.num_classes) for a in out.aux)
        logits = logits + sum(out.aux)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached any parameter"
    assert all(torch.isfinite(g).all() for g in grads if g is not None)

    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert isinstance(a, torch.Tensor), "eval mode must return logits only (no aux outputs)"
    assert a.shape == (2, cfg.num_classes)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_matches_reference(name: str) -> None:
    cfg = edgecnn.get_config(name)
    assert cfg.reference_params is not None, f"{name}: every model states its reference parameter count"
    with torch.device("meta"):
        model = edgecnn.create_model(name)
    assert edgecnn.count_params(model) == cfg.reference_params
    if cfg.reference_params_with_aux is not None:
        assert edgecnn.count_params(model, include_aux=True) == cfg.reference_params_with_aux
    macs = edgecnn.count_macs(model)
    assert macs > 0
    assert cached_stats().get(name) == (cfg.reference_params, macs), \
        f"edgecnn/zoo_stats.json is stale for {name}: run `python -m edgecnn.stats`"


@pytest.mark.parametrize("name", WITH_FIXTURE)
def test_published_state_dict_loads_strict(name: str) -> None:
    """Key names and shapes written down from the reference implementation (torchvision / timm)."""
    if name not in MODELS:
        pytest.fail(f"reference fixture {name}.json has no registered model")
    ref = json.loads((FIXTURES / f"{name}.json").read_text())
    model = edgecnn.create_model(name)
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert own == ref["state_dict"]
    model.load_state_dict({k: torch.zeros(s) for k, s in ref["state_dict"].items()}, strict=True)


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(edgecnn.UserError, match="resnet18"):
        edgecnn.create_model("resnet81")


def test_list_models_pattern_and_configs() -> None:
    fm = edgecnn.list_models("*_fmnist")
    assert fm and all(edgecnn.get_config(n).dataset == "fashion_mnist" for n in fm)
    assert all(edgecnn.get_config(n).input_size == (1, 28, 28) for n in fm)


def test_create_model_overrides_classes_and_channels() -> None:
    model = edgecnn.create_model("resnet18", num_classes=7, in_chans=1)
    assert model.config.num_classes == 7 and model.config.input_size[0] == 1
    assert model.eval()(torch.randn(1, 1, 64, 64)).shape == (1, 7)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_classes=0), "num_classes must be at least 1, got 0"),
    (dict(in_chans=0), "in_chans must be at least 1, got 0"),
    (dict(num_classes=-3), "num_classes must be at least 1, got -3"),
    (dict(num_classes="10"), "num_classes must be a whole number, got '10'"),
    (dict(num_classes=2.5), "num_classes must be a whole number, got 2.5"),
    (dict(in_chans=True), "in_chans must be a whole number, got True"),
    (dict(name=None), "a model name must be a string such as 'resnet18_fmnist', got None"),
])
def test_create_model_refuses_bad_arguments_in_one_line(kwargs: dict, message: str) -> None:
    kwargs = {"name": "lenet5_fmnist", **kwargs}
    with pytest.raises(edgecnn.UserError, match=message) as info:
        edgecnn.create_model(**kwargs)
    assert "\n" not in str(info.value)
