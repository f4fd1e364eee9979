"""Generators for small datasets in the real on-disk formats."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def make_fmnist_dir(root: Path, n_train: int = 600, n_test: int = 200, compress: bool = True,
                    seed: int = 0) -> Path:
    """A learnable Fashion-MNIST look-alike that survives crop (±2 px) and flip augmentation.

    Class y draws a bright bar at rows 5·(y mod 5)+2; classes 5–9 leave a gap in the middle of it.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, y in enumerate(labels):
            row = 5 * (y % 5) + 2
            images[i, row:row + 3, 4:24] = 255
            if y >= 5:
                images[i, row:row + 3, 11:17] = 0
        write_idx(root / f"{split}-images-idx3-ubyte", images, compress)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels, compress)
    return root


SHAPE_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def make_shapes_folder(root: Path, per_class_train: int = 40, per_class_test: int = 12, size: int = 28,
                       seed: int = 0) -> Path:
    """An image-folder dataset that is not Fashion-MNIST: train/ and test/, one sub-folder per class, grey PNGs.

    Ten classes a LeNet separates after one short epoch: class k draws a bright bar, horizontal at row 3 + 5k for
    k < 5, vertical at column 3 + 5(k - 5) otherwise, on a dark noisy background."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for k, name in enumerate(SHAPE_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = rng.integers(0, 50, (size, size)).astype(np.uint8)
                at = 3 + 5 * (k % 5)
                if k < 5:
                    image[at:at + 3, 3:size - 3] = 255
                else:
                    image[3:size - 3, at:at + 3] = 255
                Image.fromarray(image, "L").save(folder / f"{i}.png")
    return root
