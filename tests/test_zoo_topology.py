"""What is special about the topologies of PyramidNet, FractalNet and CliqueNet (the registry-wide
tests in test_zoo.py cover shapes, counts and determinism)."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import edgecnn
from edgecnn.zoo.cliquenet import CliqueBlock
from edgecnn.zoo.fractalnet import (DropPath, FractalBlock, FractalNet, extract_column, extract_deepest_column,
                                    local_drop_join)
from edgecnn.zoo.pyramidnet import PyramidNet, PyramidUnit, pyramid_widths


def _randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so eval-mode BatchNorm is not an identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# ---------------------------------------------------------------- PyramidNet

def test_pyramid_widths_grow_by_unit() -> None:
    additive = pyramid_widths(54, 48, "additive")
    assert additive[0] == 17 and additive[-1] == 64
    assert all(0 <= b - a <= 1 for a, b in zip(additive, additive[1:]))
    multiplicative = pyramid_widths(54, 4.75, "multiplicative")
    assert multiplicative[-1] == 76
    steps = [b - a for a, b in zip(multiplicative, multiplicative[1:])]
    assert steps[:10].count(0) > steps[-10:].count(0)  # geometric: slow start, fast finish


@pytest.mark.parametrize("stride", [1, 2])
def test_pyramid_shortcut_is_zero_padded_identity(stride: int) -> None:
    unit = PyramidUnit(4, 7, stride).eval()
    assert sum(p.numel() for p in unit.parameters()) == (2 * 4 + 4 * 7 * 9 + 2 * 7 + 7 * 7 * 9 + 2 * 7)
    torch.nn.init.zeros_(unit.bn3.weight)  # silence the residual branch: only the shortcut is left
    x = torch.randn(2, 4, 6, 6)
    shortcut = x if stride == 1 else F.avg_pool2d(x, 2)
    expected = torch.cat([shortcut, torch.zeros(2, 3, *shortcut.shape[2:])], 1)
    assert torch.equal(unit(x), expected)


def test_pyramidnet_rejects_bad_configs() -> None:
    with pytest.raises(edgecnn.UserError, match="6n\\+2"):
        PyramidNet(21, 48)
    with pytest.raises(edgecnn.UserError, match="widening"):
        PyramidNet(20, 48, "quadratic")


# ---------------------------------------------------------------- FractalNet

@pytest.fixture
def fractal() -> FractalNet:
    torch.manual_seed(0)
    model = FractalNet((4, 6), num_columns=3, dropout=(0.0, 0.0), num_classes=5, in_chans=2)
    _randomize_bn(model)
    return model


def _x(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 2, 8, 8, generator=torch.Generator().manual_seed(2))


def test_fractal_expansion_rule() -> None:
    block = FractalBlock(3, 5, num_columns=4, dropout=0.0)
    assert [len(col) for col in block.columns] == [1, 2, 4, 8]
    # Joins after depth steps 1..8: the deepest column alone, then 2, 1, 3, 1, 2, 1 and all 4 columns.
    assert [len(block.active_columns(s)) for s in range(8)] == [1, 2, 1, 3, 1, 2, 1, 4]


def test_global_drop_path_is_exactly_one_column(fractal: FractalNet) -> None:
    fractal.eval()
    x = _x()
    with torch.no_grad():
        outputs = [fractal.forward_path(x, DropPath(column=c)) for c in range(3)]
        for c, out in enumerate(outputs):
            assert torch.allclose(out, extract_column(fractal, c)(x), atol=1e-6)
        full = fractal(x)
    for a, b in itertools.combinations([*outputs, full], 2):
        assert not torch.allclose(a, b, atol=1e-4)


def test_training_draws_global_or_local_half_the_time(fractal: FractalNet) -> None:
    torch.manual_seed(3)
    draws = [fractal.sample_drop_path() for _ in range(400)]
    global_draws = [d.column for d in draws if d.column is not None]
    assert 0.4 < len(global_draws) / len(draws) < 0.6
    assert set(global_draws) == {0, 1, 2}
    assert all(d.local_drop == 0.15 for d in draws if d.column is None)

    fractal.train()
    x = _x()
    for seed in range(6):  # the training forward is exactly forward_path on what it drew
        torch.manual_seed(seed)
        out = fractal(x)
        torch.manual_seed(seed)
        drawn = fractal.sample_drop_path()
        assert torch.allclose(out, fractal.forward_path(x, drawn), atol=1e-6)


def test_local_join_keeps_at_least_one_input() -> None:
    inputs = [torch.full((2,), float(v)) for v in (1, 10, 100)]
    subset_means = {sum(s) / len(s) for r in (1, 2, 3) for s in itertools.combinations((1, 10, 100), r)}
    torch.manual_seed(0)
    for _ in range(50):
        assert float(local_drop_join(inputs, drop_prob=1.0)[0]) in {1.0, 10.0, 100.0}
    seen = {float(local_drop_join(inputs, drop_prob=0.5)[0]) for _ in range(300)}
    assert seen <= subset_means and len(seen) > 3
    assert torch.equal(local_drop_join(inputs, drop_prob=0.0), torch.full((2,), 37.0))


def test_local_drop_path_mixes_paths_unlike_global(fractal: FractalNet) -> None:
    fractal.eval()  # fixed BN statistics, so outputs differ only by the paths taken
    x = _x()
    with torch.no_grad():
        columns = [fractal.forward_path(x, DropPath(column=c)) for c in range(3)]
        torch.manual_seed(0)
        local = [fractal.forward_path(x, DropPath(local_drop=0.5)) for _ in range(40)]
        assert torch.equal(fractal.forward_path(x, DropPath(local_drop=0.0)), fractal(x))
    distinct = {tuple(o.flatten().tolist()) for o in local}
    mixed = [o for o in local if not any(torch.allclose(o, c, atol=1e-5) for c in columns)]
    assert len(distinct) > 5 and mixed  # some draws join several columns, which global never does


def test_eval_is_deterministic_and_uses_every_column(fractal: FractalNet) -> None:
    fractal.eval()
    x = _x()
    with torch.no_grad():
        reference = fractal(x)
        assert torch.equal(reference, fractal(x))
        for c in range(3):
            conv = fractal.blocks[1].columns[c][-1][0]
            saved = conv.weight.clone()
            conv.weight.mul_(2.0)
            assert not torch.allclose(fractal(x), reference), f"column {c} does not reach the output"
            conv.weight.copy_(saved)


def test_deepest_column_is_a_standalone_copy(fractal: FractalNet) -> None:
    fractal.eval()
    deepest = extract_deepest_column(fractal)
    assert not any(isinstance(m, FractalBlock) for m in deepest.modules())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in deepest.modules()) == 2 * 4  # 2 blocks × 2^(C-1)
    x = _x()
    with torch.no_grad():
        expected = fractal.forward_path(x, DropPath(column=2))
        assert torch.allclose(deepest(x), expected, atol=1e-6)
        next(deepest.parameters()).zero_()  # a copy: editing it leaves the fractal alone
        assert torch.allclose(fractal.forward_path(x, DropPath(column=2)), expected)
    with pytest.raises(edgecnn.UserError, match="column 3"):
        extract_column(fractal, 3)


def test_deepest_column_of_fmnist_variant_is_cheaper() -> None:
    model = edgecnn.create_model("fractalnet_fmnist").eval()
    deepest = extract_deepest_column(model)
    assert edgecnn.count_macs(deepest, (1, 28, 28)) < edgecnn.count_macs(model)
    with torch.no_grad():
        x = torch.randn(2, 1, 28, 28)
        assert torch.allclose(deepest(x), model.forward_path(x, DropPath(column=2)), atol=1e-5)


# ---------------------------------------------------------------- CliqueNet

C0, K, L = 5, 3, 4


@pytest.fixture
def clique() -> CliqueBlock:
    torch.manual_seed(0)
    block = CliqueBlock(C0, K, L).eval()
    _randomize_bn(block)
    return block


def test_stage2_has_no_conv_weights_of_its_own(clique: CliqueBlock) -> None:
    conv_weights = L * K * C0 * 9 + L * (L - 1) * K * K * 9  # W_0i and W_ji (j ≠ i): one set for both stages
    norms = sum(2 * (C0 + i * K) + 2 * (L - 1) * K for i in range(L))
    assert edgecnn.count_params(clique) == conv_weights + norms


def test_stage2_reuses_stage1_weights(clique: CliqueBlock) -> None:
    x = torch.randn(2, C0, 6, 6)
    stage1 = [f.detach() for f in clique.stage1(x)]
    last = clique.layers[-1]
    # Stage I of the last layer read every earlier layer through clique_weight; stage II reads them
    # through the same tensor, so a stage-II-only loss sends gradient into those very entries.
    clique.stage2(stage1)[-1].sum().backward()
    assert last.input_weight.grad is None
    assert last.clique_weight.grad.abs().sum() > 0


def test_stage2_refines_from_latest_outputs(clique: CliqueBlock) -> None:
    x = torch.randn(2, C0, 6, 6)
    with torch.no_grad():
        stage1 = clique.stage1(x)
        stage2 = clique.stage2(stage1)
        # Layer 1 is refined from layer 0's refined output and layers 2, 3's stage-I outputs.
        assert torch.allclose(stage2[1], clique.layers[1].stage2([stage2[0], stage1[2], stage1[3]]))

        bumped = list(stage1)
        bumped[-1] = stage1[-1] + 1.0  # perturbing a stage-I output changes the refined features
        assert not torch.allclose(clique.stage2(bumped)[0], stage2[0])
        bumped = list(stage1)
        bumped[0] = stage1[0] + 1.0  # layer 0 is refined first, so its stage-I output is never read
        assert all(torch.equal(a, b) for a, b in zip(clique.stage2(bumped), stage2))
        assert torch.equal(clique(x), torch.cat(stage2, 1))


@pytest.mark.parametrize("name, gflops", [("cliquenet_k36_t12", 0.91), ("cliquenet_k64_t15", 4.21),
                                          ("cliquenet_k80_t15", 6.45), ("cliquenet_k80_t18", 9.45)])
def test_cliquenet_flops_match_paper(name: str, gflops: float) -> None:
    with torch.device("meta"):
        model = edgecnn.create_model(name)
    assert round(2 * edgecnn.count_macs(model) / 1e9, 2) == gflops
