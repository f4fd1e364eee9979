"""BranchyNet models: attach_exits on several families, the joint loss, the exit rule, bad cuts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import edgecnn
from edgecnn.branchynet import (MultiExitNet, attach_exits, check_thresholds, default_exit_weights, exit_head,
                                softmax_entropy)
from edgecnn.layers import AuxOutputs
from edgecnn.train import loss_fn, train

# Family → modules to put exits after (two more families than the registered B-models use).
FAMILIES = {"lenet5_fmnist": ["features.2"], "vgg11_bn_fmnist": ["features.3", "features.7"],
            "googlenet_fmnist": ["maxpool2", "inception4a"], "resnet18_fmnist": ["layer1", "layer3"]}


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_attach_exits_shapes_trunk_and_one_training_step(name: str) -> None:
    torch.manual_seed(0)
    trunk = edgecnn.create_model(name).eval()
    x = _x()
    with torch.no_grad():
        expected = trunk(x)
    net = attach_exits(trunk, after=FAMILIES[name])
    assert net.num_exits == len(FAMILIES[name]) + 1 and net.config.name == name
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected)  # eval mode: the trunk alone, weights shared
        exits = net.forward_exits(x)
    assert [tuple(e.shape) for e in exits] == [(3, 10)] * net.num_exits
    torch.testing.assert_close(exits[-1], expected)

    net.train()
    out = net(x)
    assert isinstance(out, AuxOutputs) and len(out.aux) == net.num_exits - 1
    assert out.weights == default_exit_weights(net.num_exits)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = loss_fn(out, torch.tensor([0, 1, 2]), 0.0, 0.0)
    loss.backward()
    for head in net.exits:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()), "an exit got no gradient"
    optimizer.step()
    changed = {k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])}
    assert any(k.startswith("exits.") for k in changed) and any(k.startswith("stages.0.") for k in changed)


def test_joint_loss_is_the_weighted_sum_of_each_exits_loss() -> None:
    torch.manual_seed(0)
    final, early1, early2 = torch.randn(3, 4, 10).unbind(0)
    target = torch.tensor([1, 2, 3, 4])
    weights = (1.0, 0.7, 0.25)
    expected = sum(w * F.cross_entropy(h, target) for w, h in zip(weights, (early1, early2, final)))
    got = loss_fn(AuxOutputs(final, (early1, early2), weights=weights), target, aux_weight=0.3, label_smoothing=0.0)
    torch.testing.assert_close(got, expected)
    plain = loss_fn(AuxOutputs(final, (early1,)), target, aux_weight=0.3, label_smoothing=0.0)
    torch.testing.assert_close(plain, F.cross_entropy(final, target) + 0.3 * F.cross_entropy(early1, target))


def test_default_weights_favour_early_exits_and_are_configurable() -> None:
    w = default_exit_weights(3)
    assert w[0] > w[1] > w[2] > 0
    net = attach_exits(edgecnn.create_model("lenet5_fmnist"), after=["features.2"], exit_weights=[2.0, 1.0])
    assert net.train()(_x()).weights == (2.0, 1.0)
    with pytest.raises(edgecnn.UserError, match="2 positive numbers"):
        attach_exits(edgecnn.create_model("lenet5_fmnist"), after=["features.2"], exit_weights=[1.0])


@pytest.mark.parametrize("name", ["b_lenet_fmnist", "b_alexnet_fmnist", "b_resnet_fmnist"])
def test_registered_branchynets(name: str) -> None:
    net = edgecnn.create_model(name)
    assert isinstance(net, MultiExitNet)
    assert net.num_exits == {"b_lenet_fmnist": 2, "b_alexnet_fmnist": 3, "b_resnet_fmnist": 3}[name]
    assert net.config.family == "branchynet"


def test_early_exit_rule_matches_entropies() -> None:
    torch.manual_seed(0)
    net = edgecnn.create_model("b_alexnet_fmnist").eval()
    x = _x(16)
    with torch.no_grad():
        exits = net.forward_exits(x)
    h = [softmax_entropy(e) for e in exits[:-1]]
    # Thresholds at the median entropies: some samples leave at each exit, some reach the end.
    thresholds = [float(e.median()) for e in h]
    preds, exit_at = net.early_exit(x, thresholds)
    for i in range(16):
        k = next((k for k in range(2) if h[k][i] < thresholds[k]), 2)
        assert exit_at[i] == k and preds[i] == exits[k][i].argmax()
    assert (net.early_exit(x, [0.0, 0.0])[1] == 2).all(), "threshold 0: nobody leaves early"
    everyone = net.early_exit(x, [math.log(10) + 1, 0.0])
    assert (everyone[1] == 0).all() and torch.equal(everyone[0], exits[0].argmax(1))


def test_entropy_is_zero_for_certain_and_log_c_for_uniform() -> None:
    logits = torch.tensor([[100.0] + [0.0] * 9, [0.0] * 10])
    torch.testing.assert_close(softmax_entropy(logits), torch.tensor([0.0, math.log(10)]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("thresholds, message", [
    ([0.5, 0.5, 0.5], "3 exits take 2"), ([0.5], "3 exits take 2"), ([0.5, -0.1], "threshold 1 is -0.1"),
    ([float("nan"), 0.5], "threshold 0 is nan"), (["x", 1], "list of numbers"),
])
def test_bad_thresholds(thresholds: list, message: str) -> None:
    with pytest.raises(edgecnn.UserError, match=message):
        check_thresholds(thresholds, 3)


@pytest.mark.parametrize("after, message", [
    (["nope"], "no module 'nope'"), (["layer2", "layer1"], "forward order"),
    (["layer1.0.conv1"], "skip connection"), (["fc"], "nothing runs after"), ([], "at least one"),
])
def test_bad_cut_points(after: list[str], message: str) -> None:
    with pytest.raises(edgecnn.UserError, match=message):
        attach_exits(edgecnn.create_model("resnet18_fmnist"), after=after)


def test_per_exit_heads_and_custom_head() -> None:
    net = attach_exits(edgecnn.create_model("resnet18_fmnist"), after=["layer1", "layer2"],
                       head=[exit_head((8,)), lambda shape, classes: torch.nn.Sequential(
                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(shape[0], classes))])
    assert net.exits[0][0][0].out_channels == 8 and net.exits[1][-1].in_features == 32


def test_training_records_each_exits_accuracy(fmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.safetensors"
    result = train("b_lenet_fmnist", epochs=1, batch_size=32, data=str(fmnist_dir), out=out, progress=False,
                   threads=1)
    meta = json.loads(out.with_suffix(".json").read_text())
    acc = meta["exit_accuracy"]
    assert len(acc["val"]) == len(acc["test"]) == 2 and acc["exit_weights"] == [1.0, 0.5]
    assert acc["test"][-1] == pytest.approx(result.test_accuracy, abs=0.01), "the final exit is the trunk"


def test_committed_trunk_is_frozen_and_keeps_its_outputs() -> None:
    from edgecnn.checkpoint import committed_checkpoint, load_checkpoint
    lenet = edgecnn.create_model("lenet5_fmnist").eval()
    load_checkpoint(lenet, committed_checkpoint("lenet5_fmnist"))
    net = edgecnn.create_model("b_lenet_fmnist", trunk_weights="committed").train()
    assert not any(m.training for m in net.stages.modules()) and all(m.training for m in net.exits.modules())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    loss_fn(net(_x(8)), torch.arange(8), 0.0, 0.0).backward()
    optimizer.step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("exits.") for k in changed), "only the exits train on a frozen trunk"
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(_x()), lenet(_x()))
    with pytest.raises(edgecnn.UserError, match="trunk_weights='imagenet'"):
        edgecnn.create_model("b_lenet_fmnist", trunk_weights="imagenet")
