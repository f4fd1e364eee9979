"""A user's own dataset and the training recipe: class names recorded, augmentation a choice, schedule scaled."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import edgecnn.train as train_mod
from edgecnn.cli import main
from edgecnn.data import load_dataset, train_val_split
from edgecnn.train import MAX_DEFAULT_EPOCHS, MIN_DEFAULT_STEPS, RECIPES, augment_batch, default_epochs, train

NAME = "lenet5_fmnist"


def test_image_folder_run_records_its_classes_and_dataset(image_folder: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run" / "ck.safetensors"
    train(NAME, data=str(image_folder), out=out, epochs=1, batch_size=8, threads=1, progress=False,
          model_kwargs={"num_classes": 3})
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["class_names"] == ["cat", "dog", "eel"] == meta["config"]["class_names"]
    assert meta["dataset"] == {"name": "folder", "path": str(image_folder.resolve()),
                               "fingerprint": load_dataset(image_folder).fingerprint}
    assert meta["config"]["dataset"] == "folder" and meta["config"]["num_classes"] == 3
    # and `edgecnn eval` scores it on its own data: the 3-class model is rebuilt from the sidecar
    assert main(["eval", NAME, "--checkpoint", str(out), "--data", str(image_folder)]) == 0
    assert "on 12 folder images" in capsys.readouterr().out


def test_fashion_mnist_run_records_its_classes(fmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run" / "ck.safetensors"
    train(NAME, data=str(fmnist_dir), out=out, epochs=1, batch_size=32, limit=32, threads=1, progress=False)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["class_names"][0] == "T-shirt/top" and len(meta["class_names"]) == 10
    assert meta["dataset"]["name"] == "fashion_mnist" and meta["dataset"]["path"] == str(fmnist_dir.resolve())


# ---------------------------------------------------------------- augmentation

def _shifts(image: torch.Tensor, pad: int = 2) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    h, w = image.shape[-2:]
    return [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]


def test_augment_modes_do_what_they_say() -> None:
    images = torch.randint(0, 256, (16, 1, 12, 12), dtype=torch.uint8)
    assert torch.equal(augment_batch(images, "none", torch.Generator().manual_seed(0)), images)
    cropped = augment_batch(images, "crop", torch.Generator().manual_seed(0))
    assert all(any(torch.equal(c, s) for s in _shifts(x)) for c, x in zip(cropped, images)), "crop never flips"
    flipped = augment_batch(images, "crop+flip", torch.Generator().manual_seed(0))
    mirrored = [any(torch.equal(f, s.flip(-1)) for s in _shifts(x)) for f, x in zip(flipped, images)]
    assert 0 < sum(mirrored) < len(images), "crop+flip flips about half the images"


def _training_batches(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The uint8 images the training steps see (evaluation runs without grad and is not recorded)."""
    seen: list[torch.Tensor] = []
    real = train_mod.preprocess

    def spy(images: torch.Tensor, config):  # noqa: ANN001, ANN202
        if torch.is_grad_enabled():
            seen.append(images.clone())
        return real(images, config)

    monkeypatch.setattr(train_mod, "preprocess", spy)
    return seen


@pytest.mark.parametrize("mode", ["none", "crop+flip"])
def test_augment_none_feeds_the_images_untouched(mode: str, fmnist_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _training_batches(monkeypatch)
    out = tmp_path / "run" / "ck.safetensors"
    train(NAME, data=str(fmnist_dir), out=out, epochs=1, batch_size=32, limit=64, threads=1, progress=False,
          augment=mode)
    originals = {bytes(x.numpy()) for x in train_val_split(load_dataset(fmnist_dir))[0].images[:64]}
    fed = [bytes(x.numpy()) for batch in seen for x in batch]
    assert len(fed) == 64
    untouched = sum(x in originals for x in fed)
    if mode == "none":
        assert untouched == 64
    else:
        assert untouched < 32, "crop+flip moves most images"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["recipe"]["augment"] == mode == meta["train"]["augment"]


def test_fmnist_recipe_default_is_crop_and_flip() -> None:
    assert RECIPES["fmnist"].augment == "crop+flip"


# ---------------------------------------------------------------- schedule

@pytest.mark.parametrize("recipe_epochs,steps_per_epoch,expected", [
    (15, 429, 15),                    # full Fashion-MNIST at batch 128: the recipe's 6,435 steps
    (15, 9, 223),                     # a 1,294-image folder: 9 steps an epoch, 223 epochs reach 2,007 steps
    (15, 200, 15),                    # 3,000 steps already
    (10, 150, 14),                    # 1,500 -> 2,100 steps
    (15, 1, MAX_DEFAULT_EPOCHS),      # a handful of images: capped
    (400, 1, 400),                    # the cap never lowers the recipe's own epochs
])
def test_default_epochs_rule(recipe_epochs: int, steps_per_epoch: int, expected: int) -> None:
    epochs = default_epochs(recipe_epochs, steps_per_epoch)
    assert epochs == expected
    if recipe_epochs < epochs < MAX_DEFAULT_EPOCHS:
        assert epochs * steps_per_epoch >= MIN_DEFAULT_STEPS > (epochs - 1) * steps_per_epoch


def test_small_data_default_schedule_is_recorded(fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    """Without --epochs the run follows the rule (scaled down here to keep the test quick), says so, records it."""
    monkeypatch.setattr(train_mod, "MIN_DEFAULT_STEPS", 200)
    out = tmp_path / "run" / "ck.safetensors"
    result = train(NAME, data=str(fmnist_dir), out=out, batch_size=2, limit=20, threads=1)
    assert "training 20 epochs instead of the recipe's 15 to reach 200 steps" in capsys.readouterr().err
    meta = json.loads(out.with_suffix(".json").read_text())
    schedule = meta["schedule"]
    assert schedule["steps_per_epoch"] == 10 and schedule["epochs"] == 20 == result.epochs == meta["epochs"]
    assert schedule["optimizer_steps"] == 200 and schedule["epochs_from"] == "minimum of 200 optimizer steps"
    assert len(meta["history"]) == 20 == meta["recipe"]["epochs"]
