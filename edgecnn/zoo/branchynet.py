"""BranchyNet models (Teerapittayanon et al. 2016) on Fashion-MNIST: zoo trunks with exit heads attached
by `edgecnn.branchynet.attach_exits`, where the paper puts them.

- `b_lenet_fmnist`: lenet5_fmnist with one exit after conv1 (+ pool): one strided conv and one linear layer, as
  the paper's branch (one conv + linear).
- `b_alexnet_fmnist`: alexnet_fmnist with exits after conv1 (two convs + linear) and conv2 (one conv +
  linear), the paper's two branches.
- `b_resnet_fmnist`: resnet18_fmnist with an early exit after its first residual block (layer1.0) and a
  mid-network one after layer2. The first exit sits there, not after layer1, because its stage then costs a third of
  the trunk instead of half: at batch 1 on ONNX Runtime that took the gain from 2.0× to 2.7× at the same accuracy loss
  (benchmarks/results/early_exit.json).

Each trunk is the zoo model itself (same layers and key names under `stages.*`), so `trunk_weights="committed"`
starts from its committed Fashion-MNIST weights (or `trunk_weights=PATH` from a checkpoint of the trunk model, e.g.
one trained on the user's data: `edgecnn train b_resnet_fmnist --trunk PATH`) and freezes it: the exits then train alone, the final exit
keeps the trunk's accuracy; with `train_trunk=True` as well, trunk and exits are fine-tuned jointly from there
(the paper's joint training, started from a trained trunk). Without it, trunk and exits train jointly from scratch. Exit loss weights fall
from 1.0 at the first exit to 0.5 at the final one (`default_exit_weights`).
"""
from __future__ import annotations

from pathlib import Path

from edgecnn.branchynet import HeadFactory, MultiExitNet, attach_exits, exit_head
from edgecnn.checkpoint import committed_checkpoint, load_checkpoint
from edgecnn.errors import UserError
from edgecnn.registry import create_model, register_model

# Each B-model's trunk: the zoo model whose weights `trunk_weights` takes (`edgecnn train B --trunk CHECKPOINT`).
TRUNKS = {"b_lenet_fmnist": "lenet5_fmnist", "b_alexnet_fmnist": "alexnet_fmnist",
          "b_resnet_fmnist": "resnet18_fmnist"}


def _branchy(trunk_name: str, after: list[str], heads: list[HeadFactory], num_classes: int, in_chans: int,
             trunk_weights: str | Path | None, train_trunk: bool) -> MultiExitNet:
    trunk = create_model(trunk_name, num_classes=num_classes, in_chans=in_chans)
    if trunk_weights is not None:
        path = committed_checkpoint(trunk_name) if trunk_weights == "committed" else Path(trunk_weights)
        if path is None:
            raise UserError(f"{trunk_name} has no committed weights to start the trunk from; train it first")
        if not path.is_file():
            raise UserError(f"trunk_weights={str(trunk_weights)!r}; use None (train from scratch), 'committed' or a "
                            f"{trunk_name} checkpoint file")
        load_checkpoint(trunk, path)
    return attach_exits(trunk, after=after, head=heads, freeze_trunk=bool(trunk_weights) and not train_trunk)


@register_model(dataset="fashion_mnist", reference_params=67_176, reference_source="edgecnn (ours)")
def b_lenet_fmnist(num_classes: int = 10, in_chans: int = 1, trunk_weights: str | Path | None = None,
                   train_trunk: bool = False) -> MultiExitNet:
    """B-LeNet: lenet5_fmnist with an exit after conv1."""
    return _branchy(TRUNKS["b_lenet_fmnist"], ["features.2"], [exit_head(widths=(10,), stride=2, pool=7)],
                    num_classes, in_chans, trunk_weights, train_trunk)


@register_model(dataset="fashion_mnist", reference_params=871_574, reference_source="edgecnn (ours)")
def b_alexnet_fmnist(num_classes: int = 10, in_chans: int = 1, trunk_weights: str | Path | None = None,
                     train_trunk: bool = False) -> MultiExitNet:
    """B-AlexNet: alexnet_fmnist with exits after conv1 and conv2."""
    return _branchy(TRUNKS["b_alexnet_fmnist"], ["features.3", "features.7"],
                    [exit_head(widths=(32, 32), stride=2, pool=2), exit_head(widths=(64,), stride=1, pool=2)],
                    num_classes, in_chans, trunk_weights, train_trunk)


@register_model(dataset="fashion_mnist", reference_params=748_110, reference_source="edgecnn (ours)")
def b_resnet_fmnist(num_classes: int = 10, in_chans: int = 1, trunk_weights: str | Path | None = None,
                    train_trunk: bool = False) -> MultiExitNet:
    """B-ResNet: resnet18_fmnist with exits after its first residual block (early) and layer2 (mid-network)."""
    return _branchy(TRUNKS["b_resnet_fmnist"], ["layer1.0", "layer2"],
                    [exit_head(widths=(32, 64), stride=2, pool=2), exit_head(widths=(64,), stride=2, pool=2)],
                    num_classes, in_chans, trunk_weights, train_trunk)
