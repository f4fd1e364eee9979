"""Conv-BN folding: exact on every zoo model, no BatchNorm left, the original model untouched, and the
fallbacks (BN before a conv, BN with no partner, untraceable submodules) each exact."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import edgecnn
from edgecnn.branchynet import ExitHead
from edgecnn.checkpoint import committed_checkpoint, load_checkpoint
from edgecnn.export.fold import AffineChannel, count_batchnorms, fold_batchnorm
from edgecnn.layers import AuxHead

# Folding reorders float arithmetic: 1e-5 absolute on logits of magnitude ≤ 1, relative above that
# (randomly initialised canonical models can have logits of 1e7 and more).
FOLD_TOL = 1e-5


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = max(1.0, a.abs().max().item())
    assert (a - b).abs().max().item() <= FOLD_TOL * scale, f"max diff {(a - b).abs().max().item():.3g} at scale {scale:.3g}"


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def _fold_and_compare(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, object]:
    model.eval()
    folded, report = fold_batchnorm(model)
    assert count_batchnorms(folded.modules()) == 0
    with torch.no_grad():
        _assert_close(model(x), folded(x))
    return folded, report


@pytest.mark.parametrize("name", edgecnn.list_models())
def test_every_zoo_model_folds_exactly(name: str) -> None:
    torch.manual_seed(0)
    model = edgecnn.create_model(name)
    if committed_checkpoint(name):
        load_checkpoint(model, committed_checkpoint(name))
    cfg = model.config
    h, w = cfg.min_input_size or cfg.input_size[1:]
    x = torch.randn(2, cfg.input_size[0], h, w, generator=torch.Generator().manual_seed(1))
    bns = count_batchnorms(model.modules())
    # The eval forward runs neither aux heads nor BranchyNet exit heads (those run in the early-exit stage graphs).
    aux_bns = sum(count_batchnorms(m.modules()) for m in model.modules() if isinstance(m, (AuxHead, ExitHead)))
    _, report = _fold_and_compare(model, x)
    assert report.folded + report.to_affine == bns - aux_bns
    assert count_batchnorms(model.modules()) == bns, "folding changed the original model"


@pytest.mark.parametrize("name", ["resnet18_fmnist", "densenet121_fmnist", "pyramidnet_fmnist", "googlenet_fmnist"])
def test_fold_is_exact_with_nontrivial_bn_statistics(name: str) -> None:
    torch.manual_seed(0)
    model = _randomize_bn(edgecnn.create_model(name))
    _fold_and_compare(model, torch.randn(4, 1, 28, 28))


def test_original_model_is_not_modified() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(edgecnn.create_model("resnet18_fmnist")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, report = fold_batchnorm(model)
    assert report.folded_into_producer == 20 and report.to_affine == 0
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())


def test_bn_before_unpadded_conv_folds_into_the_conv_grouped_too() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8),
                                        nn.Conv2d(8, 6, 1, groups=2), nn.BatchNorm2d(6)))
    folded, report = _fold_and_compare(model, torch.randn(2, 4, 9, 9))
    assert (report.folded_into_consumer, report.folded_into_producer, report.to_affine) == (1, 1, 0)


def test_bn_before_padded_conv_becomes_affine() -> None:
    """Zero padding of the BN's output is not zero padding of its input: folding would be inexact."""
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, padding=1)))
    folded, report = _fold_and_compare(model, torch.randn(2, 3, 9, 9))
    assert (report.folded_into_consumer, report.to_affine) == (0, 1)
    assert any(isinstance(m, AffineChannel) for m in folded.modules())


def test_linear_batchnorm1d_folds() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)))
    _, report = _fold_and_compare(model, torch.randn(5, 3, 2, 2))
    assert report.folded_into_producer == 1


class _SharedConv(nn.Module):
    """One conv applied twice: folding the BN of one use into it would change the other use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


def test_conv_with_two_uses_is_not_folded_into() -> None:
    torch.manual_seed(0)
    _, report = _fold_and_compare(_randomize_bn(_SharedConv()), torch.randn(2, 3, 8, 8))
    assert (report.folded, report.to_affine) == (0, 1)


class _DataDependent(nn.Module):
    """fx cannot trace a branch on tensor values; its children must still be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.bn(y) if y.mean() > 0 else -self.bn(y)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.block = _DataDependent()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_untraceable_submodule_is_folded_as_a_leaf() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(_Net())
    folded, report = _fold_and_compare(model, torch.randn(3, 3, 8, 8))
    assert report.untraceable == ("block",)
    assert (report.folded_into_producer, report.to_affine) == (2, 1)


def test_untraceable_root_folds_its_children() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(_DataDependent())
    _, report = _fold_and_compare(model, torch.randn(3, 4, 8, 8))
    assert report.untraceable == ("_DataDependent",)
    assert (report.folded_into_producer, report.to_affine) == (1, 1)
