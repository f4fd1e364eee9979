"""Dataset loaders on generated IDX / CIFAR / folder fixtures, including broken ones."""
from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

import edgecnn
from edgecnn.data import load_dataset, preprocess, read_idx, train_val_split
from edgecnn.errors import DatasetError
from tests.datagen import make_fmnist_dir, write_idx


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_gz_and_raw(tmp_path: Path, compress: bool) -> None:
    root = make_fmnist_dir(tmp_path / "d", n_train=50, n_test=20, compress=compress)
    train = load_dataset(root, "train")
    test = load_dataset("fashion_mnist", "test", root=root)
    assert train.images.shape == (50, 1, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 20 and test.class_names[0] == "T-shirt/top"
    assert train.fingerprint and train.fingerprint != test.fingerprint


def test_missing_directory_names_path_and_package(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"does not exist.*apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion_mnist", "train", root=tmp_path / "nope")


def test_missing_file_is_named(fmnist_dir: Path) -> None:
    (fmnist_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_dataset(fmnist_dir, "test")


def test_truncated_gzip_is_rejected(fmnist_dir: Path) -> None:
    path = fmnist_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"corrupt or truncated.*train-images|train-images.*corrupt or truncated"):
        load_dataset(fmnist_dir, "train")


def test_header_payload_mismatch_is_rejected(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte", torch.zeros(5, 28, 28, dtype=torch.uint8).numpy())
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-28]))
    with pytest.raises(DatasetError, match="header promises"):
        read_idx(path)


def test_bad_magic_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"PK\x03\x04 definitely not idx")
    with pytest.raises(DatasetError, match="magic"):
        read_idx(path)


def test_cifar10_batches(cifar_dir: Path) -> None:
    train = load_dataset("cifar10", "train", root=cifar_dir)
    test = load_dataset(cifar_dir, "test")
    assert train.images.shape == (100, 3, 32, 32) and len(test) == 30
    assert train.class_names[3] == "cat"


def test_cifar10_refuses_foreign_pickles(cifar_dir: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(cifar_dir / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(DatasetError, match="refusing"):
        load_dataset(cifar_dir, "test")


def test_cifar10_truncated(cifar_dir: Path) -> None:
    p = cifar_dir / "cifar-10-batches-py" / "test_batch"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        load_dataset(cifar_dir, "test")


def test_image_folder_decodes_and_resizes(image_folder: Path) -> None:
    ds = load_dataset(image_folder, "train")
    assert ds.class_names == ("cat", "dog", "eel") and len(ds) == 12
    images, labels = ds.get_batch([0, 5, 11], size=(32, 32))
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 1, 2]


def test_image_folder_corrupt_image(image_folder: Path) -> None:
    (image_folder / "dog" / "0.png").write_bytes(b"\x89PNG broken")
    ds = load_dataset(image_folder, "train")
    with pytest.raises(DatasetError, match="0.png"):
        ds.get_batch(list(range(len(ds))), size=(32, 32))


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_dataset(tmp_path, "train")


def test_val_split_is_fixed_and_disjoint(fmnist_dir: Path) -> None:
    ds = load_dataset(fmnist_dir, "train")
    tr1, va1 = train_val_split(ds)
    tr2, va2 = train_val_split(ds)
    assert torch.equal(va1.labels, va2.labels) and torch.equal(va1.images, va2.images)
    assert len(tr1) + len(va1) == len(ds) and len(va1) > 0
    train_rows = {bytes(x.numpy()) for x in tr1.images}
    assert not any(bytes(x.numpy()) in train_rows for x in va1.images)


@pytest.mark.parametrize("name", ["resnet18", "resnet18_fmnist"])
def test_preprocess_adapts_any_dataset_to_any_model(name: str, cifar_dir: Path, fmnist_dir: Path) -> None:
    cfg = edgecnn.get_config(name)
    for ds in (load_dataset(cifar_dir, "test"), load_dataset(fmnist_dir, "test")):
        x = preprocess(ds.get_batch([0, 1])[0], cfg)
        assert x.shape == (2, *cfg.input_size) and x.dtype == torch.float32


def test_preprocess_normalises_with_config_stats() -> None:
    cfg = edgecnn.get_config("resnet18_fmnist")
    x = preprocess(torch.full((1, 1, 28, 28), 255, dtype=torch.uint8), cfg)
    assert torch.allclose(x, torch.full_like(x, (1 - cfg.mean[0]) / cfg.std[0]))
