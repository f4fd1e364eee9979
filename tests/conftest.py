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


# ---------------------------------------------------------------- a user's own model and data (not Fashion-MNIST)

@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-class image folder with train/ and test/ (40 test images)."""
    from tests.datagen import make_shapes_folder

    return make_shapes_folder(tmp_path_factory.mktemp("user") / "shapes", per_class_train=12, per_class_test=4)


@pytest.fixture(scope="session")
def shapes_checkpoint(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5 trained on `shapes_dir` for two epochs: clearly above chance, not perfect (its sidecar names the data)."""
    from edgecnn.train import train

    out = tmp_path_factory.mktemp("user") / "lenet.safetensors"
    train("lenet5_fmnist", data=str(shapes_dir), out=out, epochs=2, batch_size=16, lr=0.05, augment="none",
          threads=1, progress=False)
    return out


@pytest.fixture(scope="session")
def shapes_int8_bundle(shapes_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX Runtime INT8 deploy bundle of `shapes_checkpoint`, calibrated on its own data."""
    from edgecnn.calibration import CalibrationOptions
    from edgecnn.export.deploy import build_bundle

    return build_bundle("lenet5_fmnist", "onnxruntime", "int8", tmp_path_factory.mktemp("user") / "bundle",
                        checkpoint=shapes_checkpoint, calibration=CalibrationOptions(calibrator="minmax", samples=64),
                        parity_samples=8).path


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own image-folder dataset (not Fashion-MNIST): 10 classes of bars, train/ and test/."""
    from tests.datagen import make_shapes_folder

    return make_shapes_folder(tmp_path_factory.mktemp("users-data") / "shapes", per_class_train=60)
