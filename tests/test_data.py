"""Dataset loaders on generated IDX / CIFAR / folder fixtures, including broken ones."""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
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


def _write_cifar(root: Path, protocol: int) -> dict[str, np.ndarray]:
    """CIFAR-10 batches as the dataset's own layout has them, pickled with `protocol`."""
    (root / "cifar-10-batches-py").mkdir(parents=True)
    rng = np.random.default_rng(protocol)
    written = {}
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {b"batch_label": f"{name} of 6".encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": data, b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        (root / "cifar-10-batches-py" / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = data
    return written


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar10_loads_under_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    written = _write_cifar(tmp_path, protocol)
    test = load_dataset(tmp_path, "test")
    assert torch.equal(test.images, torch.from_numpy(written["test_batch"].reshape(-1, 3, 32, 32)))
    assert len(load_dataset("cifar10", "train", root=tmp_path)) == 20


def _numpy1_paths(data: bytes) -> bytes:
    """The same pickle as numpy 1.x writes it (`numpy.core` rather than `numpy._core`)."""
    if data[:2] != b"\x80\x05":  # protocols 0-2 name globals as newline-ended text
        return data.replace(b"numpy._core.", b"numpy.core.")
    out = data
    for module in (b"numpy._core.multiarray", b"numpy._core.numeric"):  # SHORT_BINUNICODE: length byte first
        out = out.replace(bytes([0x8C, len(module)]) + module,
                          bytes([0x8C, len(module) - 1]) + module.replace(b"._core.", b".core."))
    shrink = len(data) - len(out)
    assert out[2] == 0x95, "one frame after PROTO"
    frame = int.from_bytes(out[3:11], "little") - shrink
    return out[:3] + frame.to_bytes(8, "little") + out[11:]


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_loads_numpy1_pickles(tmp_path: Path, protocol: int) -> None:
    written = _write_cifar(tmp_path, protocol)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(_numpy1_paths(path.read_bytes()))
    assert b"numpy.core." in path.read_bytes() and b"numpy._core" not in path.read_bytes()
    assert torch.equal(load_dataset(tmp_path, "test").images.reshape(-1, 3072),
                       torch.from_numpy(written["test_batch"]))


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_cifar10_refuses_code_execution(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _write_cifar(tmp_path, protocol)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=protocol))
    with pytest.raises(DatasetError, match=r"contains a pickled (posix|os)\.system.*refusing"):
        load_dataset(tmp_path, "test")
    assert not marker.exists()


def test_cifar10_refuses_object_arrays(tmp_path: Path) -> None:
    _write_cifar(tmp_path, 4)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), dtype=object), b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match="not a CIFAR-10 batch"):
        load_dataset(tmp_path, "test")


def test_cifar10_refuses_foreign_pickles(cifar_dir: Path) -> None:
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


def test_image_folder_with_train_and_test_subfolders(tmp_path: Path) -> None:
    from PIL import Image

    counts = {"train": 3, "test": 2}
    for split, n in counts.items():
        for cls in ("ant", "bee"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (20, 20), 40 * i).save(tmp_path / split / cls / f"{i}.png")
    train, test = load_dataset(tmp_path, "train"), load_dataset(tmp_path, "test")
    assert (len(train), len(test)) == (6, 4)
    assert train.class_names == test.class_names == ("ant", "bee")
    assert all(f.parts[-3] == "test" for f in test.files) and test.fingerprint != train.fingerprint
    assert train.name == test.name == tmp_path.name  # named after the user's folder, not "train"/"test"


def test_image_folder_with_train_but_no_test_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "train" / "ant").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "train" / "ant" / "0.png")
    with pytest.raises(DatasetError, match="has train/ but no test/ sub-folder"):
        load_dataset(tmp_path, "test")


def _config(input_size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> edgecnn.ModelConfig:
    return dataclasses.replace(edgecnn.get_config("resnet18_fmnist"), input_size=input_size, mean=mean, std=std)


def test_grey_to_rgb_repeats_the_grey_value_normalised_per_channel() -> None:
    grey = torch.randint(0, 256, (2, 1, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    x = preprocess(grey, _config((3, 6, 5), mean, std)).numpy()
    g = grey.numpy()[:, 0].astype(np.float64) / 255
    for c in range(3):
        np.testing.assert_allclose(x[:, c], (g - mean[c]) / std[c], rtol=1e-6, atol=1e-6)


def test_rgb_to_grey_is_bt601_luma() -> None:
    rgb = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = preprocess(rgb, _config((1, 4, 4), (0.25,), (0.5,))).numpy()
    r, g, b = (rgb.numpy()[:, c].astype(np.float64) / 255 for c in range(3))
    np.testing.assert_allclose(x[:, 0], (0.299 * r + 0.587 * g + 0.114 * b - 0.25) / 0.5, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [(7, 9), (64, 40)])
def test_resize_keeps_a_constant_image_constant(size: tuple[int, int]) -> None:
    x = preprocess(torch.full((1, 1, 28, 28), 200, dtype=torch.uint8), _config((1, *size), (0.0,), (1.0,)))
    assert x.shape == (1, 1, *size)
    np.testing.assert_allclose(x.numpy(), 200 / 255, rtol=1e-6)


def test_bilinear_upsampling_matches_hand_values() -> None:
    """A ramp 0, 60, 120, 180 doubled, align_corners=False: output x samples input (x + 0.5) / 2 - 0.5,
    clamped to the edges, so 0, 15, 45, 75, 105, 135, 165, 180."""
    ramp = torch.tensor([0, 60, 120, 180], dtype=torch.uint8).repeat(1, 1, 2, 1)
    x = preprocess(ramp, _config((1, 4, 8), (0.0,), (1.0,)))
    expected = np.array([0, 15, 45, 75, 105, 135, 165, 180]) / 255
    np.testing.assert_allclose(x[0, 0].numpy(), np.tile(expected, (4, 1)), rtol=1e-6, atol=1e-7)
