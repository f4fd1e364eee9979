"""Datasets: Fashion-MNIST (IDX, the embedded default), CIFAR-10 python batches, image folders.

Images stay uint8 N×C×H×W until `preprocess` turns a batch into what a given model wants
(channel adaptation, resize, normalisation), so any model can run on any dataset.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import os
import pickle
import stat
import struct
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgecnn.errors import DatasetError
from edgecnn.registry import CIFAR10_CLASSES, FMNIST_CLASSES, ModelConfig

if TYPE_CHECKING:
    from PIL import Image

FMNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FMNIST_APT_HINT = "install it with `apt-get install -y dataset-fashion-mnist` or pass --data DIR"
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VAL_SIZE = 5000
VAL_SPLIT_SEED = 20260101  # fixed, independent of the training seed, so the val split never moves
UNLABELLED = -1  # the label of every image in a flat folder (no class sub-folders)
# The decompression-bomb guard: images with more pixels are refused (default: Pillow's MAX_IMAGE_PIXELS).
IMAGE_PIXELS_ENV = "EDGECNN_MAX_IMAGE_PIXELS"


@dataclass
class ImageDataset:
    """Images as uint8 N×C×H×W (in memory) or as files decoded on demand (image folders)."""
    name: str
    class_names: tuple[str, ...]
    labels: torch.Tensor
    images: torch.Tensor | None = None
    files: list[Path] | None = None
    fingerprint: str = ""  # SHA-256 over the source files, recorded in checkpoints
    skipped: dict[str, int] = field(default_factory=dict)  # image-named entries not read, by why (not regular files)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        """False for a flat folder of images: no class names, every label UNLABELLED (good for calibration only)."""
        return bool(self.class_names)

    def skipped_summary(self) -> str:
        """One phrase for reports, e.g. 'skipped 2 entries that are not regular files (FIFO: 1, symlink loop: 1)'."""
        return _skipped_summary(self.skipped)

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
                            self.fingerprint, self.skipped)


def _skipped_summary(skipped: dict[str, int]) -> str:
    if not skipped:
        return ""
    reasons = ", ".join(f"{why}: {n}" for why, n in sorted(skipped.items()))
    return f"skipped {sum(skipped.values())} entries that are not regular files ({reasons})"


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

def _split_root(root: Path, split: str) -> Path:
    """`root/split/` when it exists; refused when only the other split's folder does."""
    if (root / split).is_dir():
        return root / split
    if any((root / other).is_dir() for other in ("train", "test")):
        raise DatasetError(f"{root} has {' and '.join(d for d in ('train', 'test') if (root / d).is_dir())}/ but no "
                           f"{split}/ sub-folder: add {root / split}/ (one sub-folder per class)")
    return root


def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []


def _not_regular(error: OSError | None, mode: int = 0) -> str:
    """Why an image-named entry is not read: what it is instead of a regular file."""
    if error is not None:
        return {errno.ENOENT: "dangling symlink", errno.ELOOP: "symlink loop"}.get(error.errno, error.strerror or
                                                                                   "unreadable")
    for test, kind in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "device"


def _regular_images(folder: Path, skipped: Counter) -> list[tuple[Path, int]]:
    """Image files in `folder` with their sizes. Anything else with an image name (dangling symlink, symlink loop,
    FIFO, device…) is counted in `skipped` by kind and never opened: opening a FIFO blocks forever."""
    found = []
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            info = f.stat()
        except OSError as e:
            skipped[_not_regular(e)] += 1
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((f, info.st_size))
        else:
            skipped[_not_regular(None, info.st_mode)] += 1
    return found


def load_image_folder(root: Path | str, split: str = "train", require_labels: bool = True) -> ImageDataset:
    """One sub-folder per class (ImageNet validation layout too); `root/split/` is used when it exists.

    Without class sub-folders, `require_labels=False` reads the folder's own images, unlabelled (calibration)."""
    name_root = Path(root)  # the dataset is named after the folder the user gave, not after its split
    root = _split_root(name_root, split)
    classes = _class_folders(root)
    skipped: Counter = Counter()
    if classes:
        per_class = [_regular_images(root / cls, skipped) for cls in classes]
        found = [entry for entries in per_class for entry in entries]
        labels = [label for label, entries in enumerate(per_class) for _ in entries]
    elif require_labels or not root.is_dir():
        raise DatasetError(f"{root} has no class sub-folders: an image folder dataset needs one sub-folder per class")
    else:
        found = _regular_images(root, skipped)
        labels = [UNLABELLED] * len(found)
    if not found:
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}"
                           + (f" ({_skipped_summary(skipped)})" if skipped else ""))
    # Hashing every image of a large folder is slow; names and sizes identify the set well enough.
    fingerprint = hashlib.sha256("\n".join(f"{f.relative_to(root)}:{size}" for f, size in found)
                                 .encode()).hexdigest()
    return ImageDataset(name_root.absolute().name, tuple(classes), torch.tensor(labels, dtype=torch.long),
                        files=[f for f, _ in found], fingerprint=fingerprint, skipped=dict(skipped))


def max_image_pixels() -> int | None:
    """The decompression-bomb limit: EDGECNN_MAX_IMAGE_PIXELS if set, else Pillow's MAX_IMAGE_PIXELS (None: none)."""
    from PIL import Image

    raw = os.environ.get(IMAGE_PIXELS_ENV)
    if raw is None:
        return Image.MAX_IMAGE_PIXELS
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise DatasetError(f"{IMAGE_PIXELS_ENV}={raw!r} is not a whole number of pixels of 1 or more: set it to the "
                           "largest image size (width × height) to accept, or unset it")
    return limit


@contextmanager
def _pixel_limit_of_edgecnn() -> Iterator[int | None]:
    """Pillow's own guard (a warning above MAX_IMAGE_PIXELS, an error above twice that) is replaced by edgecnn's
    single limit for the duration, so raising EDGECNN_MAX_IMAGE_PIXELS really raises it; Pillow's is restored."""
    from PIL import Image

    limit, saved = max_image_pixels(), Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield limit
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _to_8bit(im: Image.Image, path: Path) -> Image.Image:
    """Scale 16-bit, 32-bit integer and float pixels by their mode's real range to 8 bits; refuse what has none."""
    from PIL import Image

    if not (im.mode == "F" or im.mode == "I" or im.mode.startswith("I;16")):
        return im
    values = np.asarray(im, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if im.mode == "F":
        if not (np.isfinite(values).all() and 0.0 <= low and high <= 1.0):
            raise DatasetError(f"image {path} has float pixels from {low:g} to {high:g}; edgecnn reads float images "
                               "in [0, 1] only (scaled by 255): rescale it to [0, 1] or save it as 8-bit")
        scale = 255.0
    else:
        if low < 0 or high > 65535:
            raise DatasetError(f"image {path} has 32-bit integer pixels from {low:g} to {high:g}, outside the 16-bit "
                               "range 0-65535 edgecnn scales from: save it as 8- or 16-bit")
        scale = 255.0 / 65535.0
    return Image.fromarray(np.round(values * scale).astype(np.uint8), "L")


def _decode_image(path: Path, size: tuple[int, int] | None, limit: int | None) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        pixels = im.width * im.height
        if limit is not None and pixels > limit:
            raise DatasetError(f"image {path} is {im.width}×{im.height} = {pixels:,} pixels, more than the limit of "
                               f"{limit:,} that guards against decompression bombs: if it is genuine, run with "
                               f"{IMAGE_PIXELS_ENV}={pixels}, else remove it")
        rgb = _to_8bit(im, path).convert("RGB")
        if size is not None:
            rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
        return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def _decode_files(paths: Sequence[Path], size: tuple[int, int] | None) -> torch.Tensor:
    from PIL import UnidentifiedImageError

    out = []
    with _pixel_limit_of_edgecnn() as limit:
        for p in paths:
            try:
                out.append(_decode_image(p, size, limit))
            except (OSError, UnidentifiedImageError, ValueError) as e:
                raise DatasetError(f"cannot decode image {p} ({e}); remove or replace the file") from e
    if len({t.shape for t in out}) > 1:
        raise DatasetError("images in the folder have different sizes; pass a size to get_batch (the model's input)")
    return torch.stack(out)


# ---------------------------------------------------------------- the one door

def load_dataset(name_or_dir: str | Path = "fashion_mnist", split: str = "train",
                 root: str | Path | None = None, require_labels: bool = True) -> ImageDataset:
    """`fashion_mnist` (root defaults to Debian's package), `cifar10` (root required), or a directory.

    A directory is recognised by its contents: IDX files → Fashion-MNIST, data_batch_* → CIFAR-10,
    class sub-folders → image folder; a flat folder of images only with `require_labels=False` (unlabelled).
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
    kind = _directory_kind(path)
    if kind == "fashion_mnist":
        return load_fashion_mnist(path, split)
    if kind == "cifar10":
        return load_cifar10(path, split)
    return load_image_folder(path, split, require_labels)


def _directory_kind(path: Path) -> str:
    entries = set(os.listdir(path))
    if any(e.startswith("train-images-idx3-ubyte") for e in entries):
        return "fashion_mnist"
    if "data_batch_1" in entries or "cifar-10-batches-py" in entries:
        return "cifar10"
    return "image_folder"


def is_flat_image_folder(directory: str | Path, split: str = "train") -> bool:
    """Whether `directory` is a folder of images without class sub-folders (no labels), judged from its listing."""
    path = Path(directory)
    if _directory_kind(path) != "image_folder":
        return False
    try:
        return not _class_folders(_split_root(path, split))
    except DatasetError:  # train/ without the split asked for: the loader says so
        return False


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
