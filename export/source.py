"""Where an exported model's weights come from, recorded so the PyTorch reference can be rebuilt.

A registered model exports with, in order: the checkpoint given, its committed Fashion-MNIST
weights, or its random initialisation under a fixed seed (the manifest says which). The torch
runtime backend rebuilds the same model from that record, so parity can be re-checked later.

A random initialisation leaves BatchNorm's running statistics at mean 0 / variance 1, which deep
nets multiply into eval-mode logits of 1e7–1e11 (Inception v3): FP16 overflows and calibration is
meaningless. So a random-init model has its BatchNorm statistics re-estimated on a few seeded
batches of standard-normal inputs (what normalised images look like) before export, and the
record says how, so the rebuild does the same. A checkpoint's sidecar supplies the class names
and the dataset (name, path, fingerprint) the model was trained on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecnn.checkpoint import committed_checkpoint, load_checkpoint, read_sidecar
from edgecnn.errors import UserError
from edgecnn.export.manifest import sha256_file
from edgecnn.model_ref import WeightsData, config_from_sidecar
from edgecnn.registry import ModelConfig, create_model, get_config

DEFAULT_SEED = 0
BN_REESTIMATION_BATCHES = 4
BN_REESTIMATION_BATCH_SIZE = 8
# An export runs the PyTorch reference on chunks of up to 16 images (parity), and a CNN's widest
# layers hold about 64 floats per input pixel per image (ResNet's stem: 64 channels at half resolution,
# input and output alive). An input size whose estimate exceeds the memory available is refused.
MEMORY_CHUNK = 16
ACTIVATION_FLOATS_PER_PIXEL = 64


def reestimate_batchnorm(model: nn.Module, input_size: tuple[int, int, int], seed: int,
                         batches: int = BN_REESTIMATION_BATCHES,
                         batch_size: int = BN_REESTIMATION_BATCH_SIZE) -> dict[str, Any]:
    """Replace BatchNorm running statistics by their cumulative average over seeded N(0, 1) batches.

    Only the BatchNorm layers run in training mode (dropout, drop-path and aux heads stay in eval),
    so the statistics are those of the inference graph and the result is deterministic.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    record = {"layers": len(norms), "batches": batches, "batch_size": batch_size, "input_size": list(input_size),
              "seed": seed, "inputs": "standard normal (as normalised images)", "momentum": "cumulative average"}
    model.eval()
    if not norms:
        return record
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch_size, *input_size, generator=generator))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()
    return record


def load_source_model(name: str, checkpoint: Path | str | None = None, seed: int = DEFAULT_SEED,
                      input_size: tuple[int, int] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode model to export and the record of its weights.

    A checkpoint's sidecar says how the model was trained (class count and names, input channels, mean and std:
    `config_from_sidecar`) and on which data: the record carries that dataset, so everything that scores or
    calibrates the export uses it. `input_size` (H, W) is the export's: a random-init model's BatchNorm
    statistics are estimated there.
    """
    path = Path(checkpoint) if checkpoint is not None else committed_checkpoint(name)
    meta = read_sidecar(path) if path is not None and path.suffix == ".safetensors" else {}
    config = config_from_sidecar(name, meta)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model(name, num_classes=config.num_classes, in_chans=config.input_size[0])
    if path is None:
        size = (model.config.input_size[0], *(input_size or model.config.input_size[1:]))
        return model.eval(), {"source": "random_init", "seed": seed, "path": None, "sha256": None,
                              "batchnorm_reestimation": reestimate_batchnorm(model, size, seed)}
    meta = load_checkpoint(model, path)
    model.config = config
    dataset = WeightsData.from_record(meta.get("dataset"))
    return model.eval(), {"source": "checkpoint", "committed": checkpoint is None, "path": str(path.absolute()),
                          "sha256": sha256_file(path), "seed": seed,
                          "test_accuracy": meta.get("test_accuracy"), "epochs": meta.get("epochs"),
                          "dataset": dataset.record() if dataset else None}


def check_rebuildable(model_section: dict[str, Any]) -> None:
    """The one-line UserError `rebuild_source_model` would raise for this manifest record, without building it."""
    weights = model_section.get("weights") or {}
    name = model_section.get("name")
    if weights.get("source") not in ("checkpoint", "random_init"):
        raise UserError(f"the artifact of {name!r} was exported from an in-memory model; the torch backend "
                        "can rebuild only registered models exported from a checkpoint or their seeded init")
    get_config(name)  # a registered model (unknown: one line naming the known ones)
    if weights["source"] == "checkpoint":
        path = Path(weights["path"])
        if not path.is_file():
            raise UserError(f"the checkpoint {path} the artifact was exported from is gone; the torch backend "
                            "needs it to rebuild the reference model")
        if sha256_file(path) != weights["sha256"]:
            raise UserError(f"the checkpoint {path} changed since the export (SHA-256 differs); export again")


def rebuild_source_model(model_section: dict[str, Any]) -> nn.Module:
    """The PyTorch model an artifact was exported from, rebuilt from the manifest's record."""
    check_rebuildable(model_section)
    weights = model_section["weights"]
    with torch.random.fork_rng():
        torch.manual_seed(weights["seed"])
        model = create_model(model_section["name"], num_classes=model_section["num_classes"],
                             in_chans=model_section["in_chans"])
    if weights["source"] == "checkpoint":
        load_checkpoint(model, Path(weights["path"]))
    bn = weights.get("batchnorm_reestimation")
    if bn:
        reestimate_batchnorm(model, tuple(bn["input_size"]), bn["seed"], bn["batches"], bn["batch_size"])
    return model.eval()


def _available_memory() -> int | None:
    """Bytes of memory available (Linux's MemAvailable, else physical memory; None if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_input_size(config: ModelConfig, input_size: tuple[int, int], batch: int = 1,
                     model: nn.Module | None = None) -> None:
    """Refuse, before any work, an --input-size the model cannot take or the machine cannot hold.

    Below the config's `min_input_size` is refused outright; a model without one is probed with one
    forward pass (given `model`), and on failure the smallest side that works is found and said.
    """
    h, w = input_size
    estimate = max(MEMORY_CHUNK, batch) * h * w * 4 * ACTIVATION_FLOATS_PER_PIXEL
    available = _available_memory()
    if available is not None and estimate > available:
        raise UserError(f"--input-size {h}x{w} is too large: an export at that size needs about "
                        f"{estimate / 1e9:,.0f} GB ({ACTIVATION_FLOATS_PER_PIXEL} float32 activations per pixel × "
                        f"{max(MEMORY_CHUNK, batch)} images), {available / 1e9:.0f} GB is available; "
                        f"use a smaller size (the model's own is {config.input_size[1]}x{config.input_size[2]})")
    if config.min_input_size is not None:
        mh, mw = config.min_input_size
        if h < mh or w < mw:
            raise UserError(f"--input-size {h}x{w} is below {config.name}'s smallest input {mh}x{mw}; "
                            f"use at least {mh}x{mw}")
        return
    own = max(config.input_size[1:])
    if model is None or _runs_at(model, config.input_size[0], h, w):
        return
    if max(h, w) < own:
        side = _smallest_side(model, config.input_size[0], max(h, w), own)
        raise UserError(f"--input-size {h}x{w} is too small for {config.name}: its smallest input is "
                        f"{side}x{side}; use at least that")
    raise UserError(f"{config.name} does not run at --input-size {h}x{w} (its layers are sized for its own "
                    f"{config.input_size[1]}x{config.input_size[2]}); use that size")


def _runs_at(model: nn.Module, chans: int, h: int, w: int) -> bool:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, chans, h, w))
        return True
    except RuntimeError:  # torch: kernel larger than its input, output size too small
        return False
    finally:
        model.train(was_training)


def _smallest_side(model: nn.Module, chans: int, low: int, high: int) -> int:
    """The smallest square side in (low, high] the model runs at (bisection: the model runs at `high`)."""
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _runs_at(model, chans, mid, mid) else (mid, high)
    return high


__all__ = ["DEFAULT_SEED", "check_input_size", "check_rebuildable", "load_source_model", "rebuild_source_model",
           "reestimate_batchnorm"]
