"""Datasets: Fashion-MNIST (IDX, the embedded default), CIFAR-10 python batches, image folders.

Images stay uint8 N×C×H×W until `preprocess` turns a batch into what a given model wants
(channel adaptation, resize, normalisation), so any model can run on any dataset.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgecnn.errors import DatasetError
from edgecnn.registry import CIFAR10_CLASSES, FMNIST_CLASSES, ModelConfig

FMNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FMNIST_APT_HINT = "install it with `apt-get install -y dataset-fashion-mnist` or pass --data DIR"
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VAL_SIZE = 5000
VAL_SPLIT_SEED = 20260101  # fixed, independent of the training seed, so the val split never moves


@dataclass
class ImageDataset:
    """Images as uint8 N×C×H×W (in memory) or as files decoded on demand (image folders)."""
    name: str
    class_names: tuple[str, ...]
    labels: torch.Tensor
    images: torch.Tensor | None = None
    files: list[Path] | None = None
    fingerprint: str = ""  # SHA-256 over the source files, recorded in checkpoints

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, indices: Sequence[int] | torch.Tensor,
                  size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        if self.images is not None:
            return self.images[idx], self.labels[idx]
        return _decode_files([self.files[i] for i in idx.tolist()], size), self.labels[idx]

    def subset(self, indices: torch.Tensor) -> "ImageDataset":
        return ImageDataset(self.name, self.class_names, self.labels[indices],
                            None if self.images is None else self.images[indices],
                            None if self.files is None else [self.files[i] for i in indices.tolist()],
                            self.fingerprint)


def _sha256_files(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- Fashion-MNIST (IDX)

def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"Fashion-MNIST file {stem}[.gz] not found in {root}: {FMNIST_APT_HINT}")


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (raw or gzip), checking the header against the payload size."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"cannot read {path} ({e}); the file is corrupt or truncated: {FMNIST_APT_HINT}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file (bad magic number): {FMNIST_APT_HINT}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated (header incomplete): {FMNIST_APT_HINT}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DatasetError(f"{path} holds {len(data) - header} bytes of data but its header promises {expected}; "
                           f"the file is corrupt or truncated: {FMNIST_APT_HINT}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_fashion_mnist(root: Path | str | None = None, split: str = "train") -> ImageDataset:
    root = Path(root) if root else FMNIST_DEFAULT_ROOT
    if not root.is_dir():
        raise DatasetError(f"Fashion-MNIST directory {root} does not exist: {FMNIST_APT_HINT}")
    img_path, lbl_path = (_find_idx(root, stem) for stem in FMNIST_FILES[split])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{img_path} and {lbl_path} do not match (images {images.shape}, labels {labels.shape}): "
                           f"{FMNIST_APT_HINT}")
    if labels.max(initial=0) >= len(FMNIST_CLASSES):
        raise DatasetError(f"{lbl_path} has label {labels.max()} outside 0..9: {FMNIST_APT_HINT}")
    return ImageDataset("fashion_mnist", FMNIST_CLASSES, torch.from_numpy(labels.astype(np.int64)),
                        images=torch.from_numpy(images.copy()).unsqueeze(1),
                        fingerprint=_sha256_files([img_path, lbl_path]))


# ---------------------------------------------------------------- CIFAR-10 (python batches)

CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocols 0-2 use it: bytes written as latin-1 text, nothing else."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not how a pickle "
                                     "stores bytes")
    return text.encode("latin-1")


def _cifar_pickle_globals() -> dict[tuple[str, str], object]:
    """Every global a pickled CIFAR-10 batch (numpy arrays, lists, bytes) references under protocols 0-5,
    with numpy 1.x (`numpy.core`) and 2.x (`numpy._core`) module paths: array reconstruction (0-4),
    out-of-band buffers (5), numpy scalars, and latin-1 bytes (0-2)."""
    try:  # the installed numpy's own internals, whichever path a pickle names
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed.update({(f"{core}.multiarray", "_reconstruct"): multiarray._reconstruct,
                        (f"{core}.multiarray", "scalar"): multiarray.scalar,
                        (f"{core}.numeric", "_frombuffer"): numeric._frombuffer})
    return allowed


def _read_cifar_batch(path: Path) -> dict:
    """CIFAR-10 ships as pickles; unpickle only the plain types a batch holds, never arbitrary objects."""
    allowed = _cifar_pickle_globals()

    class _PlainUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):  # noqa: ANN201
            if (module, name) in allowed:
                return allowed[module, name]
            raise DatasetError(f"{path} contains a pickled {module}.{name}, which a CIFAR-10 batch never holds; "
                               "refusing to load it")

    try:
        with open(path, "rb") as f:
            batch = _PlainUnpickler(f, encoding="bytes").load()
    except DatasetError:
        raise
    except Exception as e:  # any unpickling failure means a corrupt file
        raise DatasetError(f"cannot read CIFAR-10 batch {path} ({type(e).__name__}); the file is corrupt or "
                           "truncated: re-extract cifar-10-python.tar.gz") from e
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} is not a CIFAR-10 batch (it holds a {type(batch).__name__}, not a dict)")
    return batch


def load_cifar10(root: Path | str, split: str = "train") -> ImageDataset:
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    paths = [root / name for name in CIFAR_FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10 batches {', '.join(missing)} not found in {root}: "
                           "extract cifar-10-python.tar.gz there")
    images, labels = [], []
    for p in paths:
        batch = _read_cifar_batch(p)
        data, lbl = batch.get(b"data"), batch.get(b"labels")
        if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or lbl is None or data.ndim != 2
                or data.shape[1:] != (3072,) or len(data) != len(lbl)):
            raise DatasetError(f"{p} is not a CIFAR-10 batch (expected uint8 'data' N×3072 and 'labels')")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.extend(lbl)
    return ImageDataset("cifar10", CIFAR10_CLASSES, torch.tensor(labels, dtype=torch.long),
                        images=torch.from_numpy(np.concatenate(images)), fingerprint=_sha256_files(paths))


# ---------------------------------------------------------------- image folders

def load_image_folder(root: Path | str, split: str = "train") -> ImageDataset:
    """One sub-folder per class (ImageNet validation layout too); `root/split/` is used when it exists."""
    root = name_root = Path(root)  # the dataset is named after the folder the user gave, not after its split
    if (root / split).is_dir():
        root = root / split
    elif any((root / other).is_dir() for other in ("train", "test")):
        raise DatasetError(f"{root} has {' and '.join(d for d in ('train', 'test') if (root / d).is_dir())}/ but no "
                           f"{split}/ sub-folder: add {root / split}/ (one sub-folder per class)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not classes:
        raise DatasetError(f"{root} has no class sub-folders: an image folder dataset needs one sub-folder per class")
    files, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(label)
    if not files:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    # Hashing every image of a large folder is slow; names and sizes identify the set well enough.
    fingerprint = hashlib.sha256("\n".join(f"{f.relative_to(root)}:{f.stat().st_size}" for f in files)
                                 .encode()).hexdigest()
    return ImageDataset(name_root.absolute().name, tuple(classes), torch.tensor(labels, dtype=torch.long), files=files,
                        fingerprint=fingerprint)


def _decode_files(paths: Sequence[Path], size: tuple[int, int] | None) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is not None:
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
        except (OSError, UnidentifiedImageError) as e:
            raise DatasetError(f"cannot decode image {p} ({e}); remove or replace the file") from e
    if len({t.shape for t in out}) > 1:
        raise DatasetError("images in the folder have different sizes; pass a size to get_batch (the model's input)")
    return torch.stack(out)


# ---------------------------------------------------------------- the one door

def load_dataset(name_or_dir: str | Path = "fashion_mnist", split: str = "train",
                 root: str | Path | None = None) -> ImageDataset:
    """`fashion_mnist` (root defaults to Debian's package), `cifar10` (root required), or a directory.

    A directory is recognised by its contents: IDX files → Fashion-MNIST, data_batch_* → CIFAR-10,
    class sub-folders → image folder.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}: use 'train' or 'test' (validation is carved from train)")
    name = str(name_or_dir)
    if name in ("fashion_mnist", "fmnist", "fashion-mnist"):
        return load_fashion_mnist(root, split)
    if name in ("cifar10", "cifar-10"):
        if root is None:
            raise DatasetError("CIFAR-10 is not embedded: pass --data DIR pointing at the extracted python batches")
        return load_cifar10(root, split)
    path = Path(name)
    if not path.is_dir():
        raise DatasetError(f"dataset {name!r} is neither a known name (fashion_mnist, cifar10) nor a directory")
    entries = set(os.listdir(path))
    if any(e.startswith("train-images-idx3-ubyte") for e in entries):
        return load_fashion_mnist(path, split)
    if "data_batch_1" in entries or "cifar-10-batches-py" in entries:
        return load_cifar10(path, split)
    return load_image_folder(path, split)


def train_val_split(ds: ImageDataset, val_size: int = VAL_SIZE) -> tuple[ImageDataset, ImageDataset]:
    """Carve a fixed validation split from train; the test set is never used for model selection."""
    val_size = min(val_size, len(ds) // 10) if len(ds) < 10 * val_size else val_size
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    return ds.subset(perm[val_size:]), ds.subset(perm[:val_size])


def preprocess(images: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """uint8 N×C×H×W → float32 the model wants: channels adapted, resized, normalised."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise DatasetError(f"preprocess expects uint8 N×C×H×W images, got {images.dtype} {tuple(images.shape)}")
    c, h, w = config.input_size
    x = images.float().div_(255.0)
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif x.shape[1] == 3 and c == 1:  # ITU-R BT.601 luma
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise DatasetError(f"cannot adapt {x.shape[1]}-channel images to a {c}-channel model")
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=x.shape[-1] > w)
    mean = torch.tensor(config.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.std).view(1, -1, 1, 1)
    if mean.shape[1] != c:
        mean, std = mean.mean().expand(1, c, 1, 1), std.mean().expand(1, c, 1, 1)
    return (x - mean) / std
