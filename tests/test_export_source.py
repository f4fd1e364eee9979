"""Where an export's model and its inputs come from: a checkpoint's own dataset and class names, the
preprocessing record a third party can follow, and BatchNorm statistics re-estimated for random init."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import edgecnn
import edgecnn.data
import edgecnn.errors
from edgecnn.checkpoint import save_checkpoint
from edgecnn.data import preprocess
from edgecnn.export import export_registered, read_manifest, runtime
from edgecnn.export.manifest import preprocessing_record
from edgecnn.export.source import load_source_model, rebuild_source_model

MODEL = "lenet5_fmnist"
DIGITS = [f"digit_{i}" for i in range(10)]


def _digit_folder(root: Path, per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for name in DIGITS:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def digits_checkpoint(tmp_path: Path) -> Path:
    folder = _digit_folder(tmp_path / "digits")
    path = tmp_path / "digits.safetensors"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = edgecnn.create_model(MODEL)
    save_checkpoint(model, path, {"model": MODEL, "class_names": DIGITS, "test_accuracy": 12.5,
                                  "dataset": {"name": "digits", "path": str(folder), "fingerprint": "f" * 64}})
    return path


def test_checkpoint_of_a_users_dataset_carries_its_names_and_parity_data(digits_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    m = export_registered(MODEL, "onnx", "fp32", tmp_path / "art", checkpoint=digits_checkpoint).manifest
    assert m["class_names"] == DIGITS
    assert m["model"]["dataset"] == "digits" and m["model"]["weights"]["dataset"]["fingerprint"] == "f" * 64
    folder = tmp_path / "digits"
    assert m["parity"][0]["inputs"] == f"digits ({folder}) test[0:20]" and m["parity"][0]["passed"]


def test_parity_says_plainly_when_the_checkpoints_dataset_is_gone(digits_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    shutil.rmtree(tmp_path / "digits")
    m = export_registered(MODEL, "onnx", "fp32", tmp_path / "art", checkpoint=digits_checkpoint).manifest
    inputs = m["parity"][0]["inputs"]
    assert inputs.startswith("random inputs: standard normal") and "digits" in inputs
    assert "is not on this machine" in inputs and "pass --data DIR" in inputs
    assert m["class_names"] == DIGITS


def test_old_sidecars_keep_the_configs_names(tmp_path: Path) -> None:
    path = tmp_path / "old.safetensors"
    save_checkpoint(edgecnn.create_model(MODEL), path, {"model": MODEL})
    model, weights = load_source_model(MODEL, path)
    assert model.config.class_names == edgecnn.get_config(MODEL).class_names and weights["dataset"] is None


def _follow_the_record(images: torch.Tensor, record: dict) -> torch.Tensor:
    """Preprocessing done from the manifest's words alone, as a third party would."""
    x = images.double() * record["scale"]
    c = record["channels"]
    if x.shape[1] == 3 and c == 1:
        weights = torch.tensor(record["channel_adaptation"]["rgb_to_grey"]["weights"], dtype=x.dtype)
        x = (x * weights.view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and c > 1:
        x = x.repeat(1, c, 1, 1)
    method = record["resize_method"]
    shrinking = x.shape[-1] > record["resize"][1]
    x = F.interpolate(x, size=tuple(record["resize"]), mode=method["mode"], align_corners=method["align_corners"],
                      antialias=shrinking and method["antialias"].startswith("only when"))
    mean, std = (torch.tensor(record[k], dtype=x.dtype).view(1, -1, 1, 1) for k in ("mean", "std"))
    return ((x - mean) / std).float()


@pytest.mark.parametrize("name,image_shape,size", [
    (MODEL, (2, 3, 40, 36), (28, 28)),       # RGB → grey (BT.601), shrinking: antialiased
    ("resnet18", (2, 1, 20, 20), (32, 32)),  # grey → RGB (repeat), enlarging: not antialiased
])
def test_preprocessing_record_reproduces_preprocess(name: str, image_shape: tuple, size: tuple[int, int]) -> None:
    config = edgecnn.get_config(name)
    images = torch.from_numpy(np.random.default_rng(4).integers(0, 256, image_shape, dtype=np.uint8))
    input_size = (config.input_size[0], *size)
    record = preprocessing_record(config, input_size)
    from dataclasses import replace

    ours = preprocess(images, replace(config, input_size=input_size))
    assert torch.allclose(_follow_the_record(images, record), ours, atol=1e-5)


def test_random_init_gets_batchnorm_statistics_with_sane_logits() -> None:
    """torchvision's Inception v3 init gives eval logits around 1e8 with BN's default statistics."""
    model, weights = load_source_model("inception_v3", input_size=(75, 75))
    x = torch.randn(4, 3, 75, 75, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(x)
    assert torch.isfinite(logits).all() and 0 < logits.abs().max() < 1e4
    record = weights["batchnorm_reestimation"]
    assert record["layers"] == 96 and record["input_size"] == [3, 75, 75] and record["momentum"] == "cumulative average"
    rebuilt = rebuild_source_model({"name": "inception_v3", "num_classes": 1000, "in_chans": 3, "weights": weights})
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), logits, rtol=1e-4, atol=1e-4), "the torch backend rebuilds other weights"


def test_random_init_artifact_matches_the_torch_backends_rebuild(tmp_path: Path) -> None:
    m = export_registered("resnet18", "onnx", "fp16", tmp_path / "art", input_size=(32, 32), dynamic_batch=True,
                          parity_samples=64).manifest
    assert m["model"]["weights"]["batchnorm_reestimation"]["layers"] == 20
    assert m["parity"][0]["passed"] and m["parity"][0]["max_abs_logit"] < 1e3
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with runtime.load(tmp_path / "art", backend="torch") as torch_session, runtime.load(tmp_path / "art") as ort:
        reference, ours = torch_session.run(x), ort.run(x)
    scale = np.abs(reference).max()
    assert np.abs(reference - ours).max() <= 1e-2 * scale and read_manifest(tmp_path / "art")


def test_a_named_dataset_without_a_path_is_read_by_its_name(tmp_path: Path) -> None:
    """train() records path None for Fashion-MNIST in its default place: parity still uses its test split."""
    path = tmp_path / "fm.safetensors"
    save_checkpoint(edgecnn.create_model(MODEL), path,
                    {"model": MODEL, "dataset": {"name": "fashion_mnist", "path": None, "fingerprint": "x"}})
    try:
        edgecnn.data.load_dataset("fashion_mnist", split="test")
    except edgecnn.errors.DatasetError:
        pytest.skip("Fashion-MNIST is not installed here")
    m = export_registered(MODEL, "onnx", "fp32", tmp_path / "art", checkpoint=path, parity_samples=8).manifest
    assert m["parity"][0]["inputs"] == "fashion_mnist test[0:8]" and m["model"]["dataset"] == "fashion_mnist"
