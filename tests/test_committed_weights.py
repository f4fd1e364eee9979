"""The Fashion-MNIST weights committed with edgecnn: they load, and they are as good as their sidecars say.

Needs the real Fashion-MNIST test set (Debian's dataset-fashion-mnist, installed by the README's commands).
"""
from __future__ import annotations

import pytest
import torch

import edgecnn
from edgecnn.checkpoint import WEIGHTS_DIR, load_checkpoint, read_sidecar
from edgecnn.data import load_dataset
from edgecnn.train import evaluate

COMMITTED = sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if not p.stem.endswith(".state"))
# Accuracy bars from the issues (published Fashion-MNIST results for scale: VGG16 93.5 %, ResNet-18 94.9 %).
BARS = {"lenet5_fmnist": 90.5, "resnet18_fmnist": 93.5, "densenet121_fmnist": 94.0}
DEFAULT_BAR = 92.0
SUBSET = 1000


def test_there_are_committed_weights() -> None:
    assert "resnet18_fmnist" in COMMITTED and "lenet5_fmnist" in COMMITTED


@pytest.fixture(scope="module")
def fmnist_test_subset():
    test = load_dataset("fashion_mnist", "test")
    return test.subset(torch.arange(SUBSET))


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_weights_meet_their_bar(name: str, fmnist_test_subset) -> None:
    meta = read_sidecar(WEIGHTS_DIR / f"{name}.safetensors")
    assert meta["model"] == name and meta["dtype"] == "float16"
    assert meta["test_accuracy"] >= BARS.get(name, DEFAULT_BAR)
    assert (WEIGHTS_DIR / f"{name}.log").is_file(), "the training log is committed with the weights"
    model = edgecnn.create_model(name)
    load_checkpoint(model, WEIGHTS_DIR / f"{name}.safetensors")
    acc = evaluate(model, fmnist_test_subset)
    # 1,000 of the 10,000 test images: within 3 points of the full-set figure the sidecar reports.
    assert abs(acc - meta["test_accuracy"]) < 3.0, f"{name}: {acc:.2f}% on {SUBSET} images vs {meta['test_accuracy']}%"
