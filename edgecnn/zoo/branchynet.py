"""BranchyNet models (Teerapittayanon et al. 2016) on Fashion-MNIST: zoo trunks with exit heads attached
by `edgecnn.branchynet.attach_exits`, where the paper puts them.

- `b_lenet_fmnist`: LeNet-5 with one exit after conv1 (+ pool): one conv and one linear layer, as the paper's.
- `b_alexnet_fmnist`: the AlexNet `_fmnist` trunk with exits after conv1 (two convs + linear) and conv2
  (one conv + linear), the paper's two branches.
- `b_resnet_fmnist`: a compact ResNet (resnet18_fmnist's stem and widths, one BasicBlock per stage, i.e.
  ResNet-10) with an early exit after layer1 and a mid-network one after layer2.

Exit loss weights fall from 1.0 at the first exit to 0.5 at the final one (`default_exit_weights`).
"""
from __future__ import annotations

from edgecnn.branchynet import MultiExitNet, attach_exits, exit_head
from edgecnn.registry import register_model
from edgecnn.zoo.alexnet import AlexNet
from edgecnn.zoo.lenet import LeNet5
from edgecnn.zoo.resnet import BasicBlock, ResNet

FMNIST = (1, 28, 28)


@register_model(dataset="fashion_mnist", reference_params=63_876, reference_source="edgecnn (ours)")
def b_lenet_fmnist(num_classes: int = 10, in_chans: int = 1) -> MultiExitNet:
    """B-LeNet: LeNet-5 (28×28) with an exit after conv1."""
    trunk = LeNet5(num_classes, in_chans, stem_padding=2)
    return attach_exits(trunk, after=["features.2"], head=exit_head(widths=(10,), stride=1, pool=4),
                        input_size=(in_chans, *FMNIST[1:]))


@register_model(dataset="fashion_mnist", reference_params=871_574, reference_source="edgecnn (ours)")
def b_alexnet_fmnist(num_classes: int = 10, in_chans: int = 1) -> MultiExitNet:
    """B-AlexNet: the AlexNet _fmnist trunk with exits after conv1 and conv2."""
    trunk = AlexNet(num_classes, in_chans, widths=(24, 72, 144, 96, 96), hidden=512, pool_size=2,
                    small_input=True, batch_norm=True)
    return attach_exits(trunk, after=["features.3", "features.7"],
                        head=[exit_head(widths=(32, 32), stride=2, pool=2), exit_head(widths=(64,), stride=1, pool=2)],
                        input_size=(in_chans, *FMNIST[1:]))

@register_model(dataset="fashion_mnist", reference_params=325_070, reference_source="edgecnn (ours)")
def b_resnet_fmnist(num_classes: int = 10, in_chans: int = 1) -> MultiExitNet:
    """B-ResNet: a ResNet-10 (resnet18_fmnist widths) with exits after layer1 and layer2."""
    trunk = ResNet(BasicBlock, [1, 1, 1, 1], num_classes, in_chans, widths=(16, 32, 64, 128), small_input=True)
    return attach_exits(trunk, after=["layer1", "layer2"], head=exit_head(widths=(32,), stride=2, pool=2),
                        input_size=(in_chans, *FMNIST[1:]))
