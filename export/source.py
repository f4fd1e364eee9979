"""Where an exported model's weights come from, recorded so the PyTorch reference can be rebuilt.

A registered model exports with, in order: the checkpoint given, its committed Fashion-MNIST
weights, or its random initialisation under a fixed seed (the manifest says which). The torch
runtime backend rebuilds the same model from that record, so parity can be re-checked later.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecnn.checkpoint import committed_checkpoint, load_checkpoint
from edgecnn.errors import UserError
from edgecnn.export.manifest import sha256_file
from edgecnn.registry import create_model

DEFAULT_SEED = 0


def load_source_model(name: str, checkpoint: Path | str | None = None,
                      seed: int = DEFAULT_SEED) -> tuple[nn.Module, dict[str, Any]]:
    """The eval-mode model to export and the record of its weights."""
    path = Path(checkpoint) if checkpoint is not None else committed_checkpoint(name)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model(name)
    if path is None:
        return model.eval(), {"source": "random_init", "seed": seed, "path": None, "sha256": None}
    meta = load_checkpoint(model, path)
    return model.eval(), {"source": "checkpoint", "committed": checkpoint is None, "path": str(path.absolute()),
                          "sha256": sha256_file(path), "seed": seed,
                          "test_accuracy": meta.get("test_accuracy"), "epochs": meta.get("epochs")}


def rebuild_source_model(model_section: dict[str, Any]) -> nn.Module:
    """The PyTorch model an artifact was exported from, rebuilt from the manifest's record."""
    weights = model_section.get("weights") or {}
    name = model_section.get("name")
    if weights.get("source") not in ("checkpoint", "random_init"):
        raise UserError(f"the artifact of {name!r} was exported from an in-memory model; the torch backend "
                        "can rebuild only registered models exported from a checkpoint or their seeded init")
    with torch.random.fork_rng():
        torch.manual_seed(weights["seed"])
        model = create_model(name, num_classes=model_section["num_classes"], in_chans=model_section["in_chans"])
    if weights["source"] == "checkpoint":
        path = Path(weights["path"])
        if not path.is_file():
            raise UserError(f"the checkpoint {path} the artifact was exported from is gone; the torch backend "
                            "needs it to rebuild the reference model")
        if sha256_file(path) != weights["sha256"]:
            raise UserError(f"the checkpoint {path} changed since the export (SHA-256 differs); export again")
        load_checkpoint(model, path)
    return model.eval()
