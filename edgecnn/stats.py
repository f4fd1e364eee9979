"""Model statistics: parameters and multiply-accumulates (MACs) for one input sample.

Counting means building the model, so the zoo's figures are cached in `zoo_stats.json` (keyed by
model name under the zoo version; `python -m edgecnn.stats` rewrites it, and a test checks every
entry against a fresh count). Models the cache does not know are counted on the spot.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
import torch.nn as nn

from edgecnn.layers import count_params


def _conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    kh, kw = m.kernel_size
    return out[0].numel() * (m.in_channels // m.groups) * kh * kw


def _linear_macs(m: nn.Linear, out: torch.Tensor) -> int:
    return out[0].numel() * m.in_features


_MAC_RULES = {nn.Conv2d: _conv_macs, nn.Linear: _linear_macs}


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] | None = None) -> int:
    """MACs of one eval-mode forward pass at batch 1, counted from conv and linear layers.

    Modules outside conv/linear (norms, pooling, activations) are cheap by comparison and left out,
    as in the MAC figures papers quote. A module may define `extra_macs(inputs, output)` for work
    it does outside its child conv/linear layers (e.g. deformable sampling).
    """
    input_size = input_size or model.config.input_size
    total = 0

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        rule = _MAC_RULES.get(type(m))
        if rule is not None:
            total += rule(m, out)
        if hasattr(m, "extra_macs"):
            total += m.extra_macs(inputs, out)

    was_training = model.training
    model.eval()
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total


STATS_CACHE = Path(__file__).with_name("zoo_stats.json")


def model_stats(name: str) -> tuple[int, int]:
    """(parameters, MACs) of a registered model at its default configuration: cached, else counted."""
    cached = cached_stats().get(name)
    return cached if cached is not None else count_model_stats(name)


@functools.cache
def cached_stats() -> dict[str, tuple[int, int]]:
    """The cache's entries, or none when it is missing, unreadable or written for another zoo version."""
    from edgecnn import ZOO_VERSION

    try:
        data = json.loads(STATS_CACHE.read_text())
        if data["zoo_version"] != ZOO_VERSION:
            return {}
        return {name: (int(entry["params"]), int(entry["macs"])) for name, entry in data["models"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_stats_cache(path: Path = STATS_CACHE) -> dict[str, tuple[int, int]]:
    """Count every registered model afresh and write the cache."""
    from edgecnn import ZOO_VERSION
    from edgecnn.registry import list_models

    stats = {name: count_model_stats(name) for name in list_models()}
    data = {"zoo_version": ZOO_VERSION, "note": "written by `python -m edgecnn.stats`; checked by tests/test_zoo.py",
            "models": {name: {"params": p, "macs": m} for name, (p, m) in stats.items()}}
    path.write_text(json.dumps(data, indent=1) + "\n")
    cached_stats.cache_clear()
    return stats


def count_model_stats(name: str) -> tuple[int, int]:
    """(parameters, MACs) of a registered model, built on the meta device so no memory or compute is spent."""
    from edgecnn.registry import create_model

    try:
        with torch.device("meta"):
            model = create_model(name)
            return count_params(model), count_macs(model)
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: measure for real
        model = create_model(name)
        return count_params(model), count_macs(model)


__all__ = ["cached_stats", "count_macs", "count_model_stats", "count_params", "model_stats", "write_stats_cache"]


if __name__ == "__main__":
    print(f"{len(write_stats_cache())} models → {STATS_CACHE}")
