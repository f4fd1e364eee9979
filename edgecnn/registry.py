"""The model registry: one decorator to add a model, one door (`create_model`) to build one.

Each registered name carries a `ModelConfig`: what input the model wants, how to preprocess it,
and the reference parameter count that proves a canonical model can load published weights.
"""
from __future__ import annotations

import difflib
import re
import fnmatch
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.registries import Registry
from edgecnn.validation import positive_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Measured on the 60k Fashion-MNIST training images (pixel values scaled to [0, 1]).
FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

# What a config defaults to for the dataset it is meant for.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "imagenet": dict(input_size=(3, 224, 224), num_classes=1000, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "fashion_mnist": dict(input_size=(1, 28, 28), num_classes=10, mean=FMNIST_MEAN, std=FMNIST_STD,
                          class_names=FMNIST_CLASSES),
    "cifar10": dict(input_size=(3, 32, 32), num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                    class_names=CIFAR10_CLASSES),
}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    family: str
    input_size: tuple[int, int, int]          # C, H, W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str                               # the dataset the configuration is meant for
    reference_params: int | None = None        # inference parameters (aux heads excluded)
    reference_params_with_aux: int | None = None
    reference_source: str = ""                 # where reference_params comes from
    class_names: tuple[str, ...] | None = None
    recipe: str = "fmnist"                     # default training preset (edgecnn.train.RECIPES)
    aux_weight: float = 0.0                    # loss weight of each auxiliary classifier
    label_smoothing: float = 0.0
    description: str = ""
    # Smallest H, W the architecture accepts: fast tests run there instead of at input_size.
    min_input_size: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ensure_zoo_loaded() -> None:
    import edgecnn.zoo  # noqa: F401  (registers every family on import)


def _unknown_model(name: str) -> str:
    close = difflib.get_close_matches(name, list(_MODELS), n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}.{hint} Run `edgecnn list` to see all {len(_MODELS)} models."


_MODELS: Registry[tuple[Callable[..., nn.Module], ModelConfig]] = Registry(
    "model", unique=True, unknown=_unknown_model, before_lookup=_ensure_zoo_loaded)


def register_model(*, dataset: str = "imagenet", family: str | None = None,
                   **config: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a constructor under its function name; its module file names the family."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        fields = {**DATASET_DEFAULTS[dataset], **config}
        fields.setdefault("description", (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "")
        cfg = ModelConfig(name=fn.__name__, family=family or fn.__module__.rsplit(".", 1)[-1],
                          dataset=dataset, **fields)
        _MODELS.add(fn.__name__, (fn, cfg))
        return fn
    return wrap


def unknown_model_error(name: str) -> UserError:
    return _MODELS.unknown_error(name)


def get_config(name: str) -> ModelConfig:
    if not isinstance(name, str):
        raise UserError(f"a model name must be a string such as 'resnet18_fmnist', got {name!r}")
    return _MODELS.lookup(name)[1]


def list_models(pattern: str = "*") -> list[str]:
    _ensure_zoo_loaded()
    return sorted((n for n in _MODELS if fnmatch.fnmatch(n, pattern)), key=_natural_key)


def _natural_key(name: str) -> list[int | str]:
    """resnet18 before resnet101: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def create_model(name: str, *, num_classes: int | None = None, in_chans: int | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model; `model.config` says what input it wants and how to preprocess it."""
    cfg = get_config(name)
    fn = _MODELS[name][0]
    num_classes = cfg.num_classes if num_classes is None else positive_int("num_classes", num_classes)
    in_chans = cfg.input_size[0] if in_chans is None else positive_int("in_chans", in_chans)
    model = fn(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.config = replace(cfg, num_classes=num_classes, input_size=(in_chans, *cfg.input_size[1:]),
                           class_names=cfg.class_names if num_classes == cfg.num_classes else None)
    return model
