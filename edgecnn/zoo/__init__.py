"""The model zoo: one file per family; importing a family registers its models."""
from edgecnn.zoo import resnet  # noqa: F401
from edgecnn.zoo import alexnet, googlenet, lenet, vgg  # noqa: F401
from edgecnn.zoo import deformable  # noqa: F401
from edgecnn.zoo import cliquenet, densenet, fractalnet, pyramidnet  # noqa: F401
from edgecnn.zoo import bn_inception, inception_resnet_v2, inception_v3, inception_v4  # noqa: F401
from edgecnn.zoo import branchynet  # noqa: F401  (after the trunk families it builds on)
