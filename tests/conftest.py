"""Shared fixtures: small generated datasets in every supported format, so no test downloads anything."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datagen import make_fmnist_dir

# Tests share 2 cores with whatever else runs; one intra-op thread keeps them predictable.
torch.set_num_threads(1)


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    return make_fmnist_dir(tmp_path / "fmnist")


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    for name, n in [(f"data_batch_{i}", 20) for i in range(1, 6)] + [("test_batch", 30)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": name.encode()}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return tmp_path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    from PIL import Image

    root = tmp_path / "folder"
    rng = np.random.default_rng(2)
    for cls in ("cat", "dog", "eel"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root
