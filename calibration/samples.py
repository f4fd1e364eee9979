"""Which images a quantizer learns its ranges from, and which images score the result.

Calibration samples come from the training split with the validation split (`train_val_split`)
carved out first, so the images that choose a calibrator or judge an accuracy drop are never the
ones the ranges were fitted on, and the test split is never touched. Selection is class-balanced
(round-robin over the classes, each class in a seeded order) and reproducible: the same seed,
data and N give the same indices, whose SHA-256 the manifest records.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecnn.data import ImageDataset, load_dataset, preprocess, train_val_split
from edgecnn.errors import DatasetError, UserError
from edgecnn.registry import ModelConfig
from edgecnn.validation import non_negative_float, non_negative_int, positive_int

DEFAULT_SAMPLES = 512
DEFAULT_SEED = 0
# "default" is the runtime quantizer's own defaults (quantize_static's, nncf.quantize's); which ones `auto` tries,
# and in which order, is each quantizer's (export/quantize.py).
CALIBRATOR_NAMES = ("auto", "default", "minmax", "entropy", "percentile", "mse")
# Datasets edgecnn ships or knows, by the name a model config gives.
KNOWN_DATASETS = ("fashion_mnist",)
PREPROCESS_CHUNK = 1024


@dataclass(frozen=True)
class CalibrationOptions:
    """What the user asked for: `--calibrator`, `--calib-samples`, `--calib-data`, `--max-drop` (points)."""
    calibrator: str = "auto"
    samples: int = DEFAULT_SAMPLES
    data: Path | None = None
    max_drop: float | None = None
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.calibrator not in CALIBRATOR_NAMES:
            raise UserError(f"unknown calibrator {self.calibrator!r}; choose one of {', '.join(CALIBRATOR_NAMES)}")
        positive_int("--calib-samples", self.samples)
        non_negative_int("seed", self.seed)
        if self.max_drop is not None:
            non_negative_float("--max-drop", self.max_drop)
        if self.data is not None:
            object.__setattr__(self, "data", Path(self.data))
            if not self.data.is_dir():
                raise UserError(f"--calib-data {self.data} is not a directory; pass a folder with one sub-folder "
                                "of images per class (or Fashion-MNIST IDX files)")

    @property
    def needs_labels(self) -> bool:
        """Choosing a calibrator and bounding the drop both score accuracy on labelled validation images."""
        return self.calibrator == "auto" or self.max_drop is not None


@dataclass
class SampleSet:
    """Preprocessed float32 N×C×H×W inputs, their labels (None if unknown) and where they came from."""
    inputs: np.ndarray
    labels: np.ndarray | None
    indices: np.ndarray
    source: str
    fingerprint: str

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def indices_sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.indices, dtype=np.int64).tobytes()).hexdigest()

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "samples": len(self), "indices_sha256": self.indices_sha256,
                "data_fingerprint": self.fingerprint}


@dataclass
class CalibrationData:
    """Samples to fit ranges on, and labelled validation images to score candidates on (None if unlabelled)."""
    calibration: SampleSet
    validation: SampleSet | None


def check_inputs(inputs: np.ndarray, what: str = "calibration data") -> np.ndarray:
    """Refuse data no quantizer can learn a range from: empty, non-finite, or one constant value."""
    if inputs.size == 0:
        raise UserError(f"the {what} is empty: give at least one image")
    if not np.isfinite(inputs).all():
        bad = int((~np.isfinite(inputs)).sum())
        raise UserError(f"the {what} has {bad} NaN or infinite values; clean the images before calibrating")
    if float(inputs.max()) == float(inputs.min()):
        raise UserError(f"the {what} is constant (every value is {float(inputs.min()):g}): ranges learnt from it "
                        "are meaningless; use real images")
    return inputs


def balanced_indices(labels: torch.Tensor, n: int, seed: int) -> np.ndarray:
    """`n` indices round-robin over the classes (each class shuffled with `seed`), so classes are balanced."""
    generator = torch.Generator().manual_seed(seed)
    per_class = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        per_class.append(members[torch.randperm(len(members), generator=generator)].tolist())
    order = [members[rank] for rank in range(max(map(len, per_class), default=0))
             for members in per_class if rank < len(members)]
    return np.asarray(order[:n], dtype=np.int64)


def _samples_from(ds: ImageDataset, indices: np.ndarray, config: ModelConfig, input_size: tuple[int, int, int],
                  source: str, what: str) -> SampleSet:
    cfg = replace(config, input_size=input_size)
    chunks = []
    for start in range(0, len(indices), PREPROCESS_CHUNK):
        images, _ = ds.get_batch(indices[start:start + PREPROCESS_CHUNK].tolist(), size=input_size[1:])
        chunks.append(preprocess(images, cfg).numpy())
    inputs = check_inputs(np.concatenate(chunks).astype(np.float32), what)
    return SampleSet(inputs, ds.labels[torch.as_tensor(indices)].numpy(), indices, source, ds.fingerprint)


def check_calibration_source(config: ModelConfig, options: CalibrationOptions) -> None:
    """Refuse, before any export work, a model whose calibration images edgecnn has no way to find."""
    if options.data is None and config.dataset not in KNOWN_DATASETS:
        raise UserError(f"{config.name} is a model for {config.dataset} and edgecnn has no {config.dataset} images "
                        "here: pass --calib-data DIR (one sub-folder of training images per class)")


def _training_dataset(config: ModelConfig, data: Path | None) -> tuple[ImageDataset, str]:
    if data is not None:
        try:
            ds = load_dataset(data, split="train")
        except DatasetError as e:
            raise DatasetError(f"--calib-data {data}: {e}") from e
        if len(ds.class_names) > config.num_classes:
            raise UserError(f"--calib-data {data} has {len(ds.class_names)} classes but {config.name} predicts "
                            f"{config.num_classes}: use images of the model's own classes")
        return ds, str(data)
    return load_dataset(config.dataset, split="train"), config.dataset


def prepare_calibration(config: ModelConfig, input_size: tuple[int, int, int],
                        options: CalibrationOptions) -> CalibrationData:
    """Calibration samples (balanced, seeded, validation split excluded) and the validation split to score on."""
    check_calibration_source(config, options)
    ds, name = _training_dataset(config, options.data)
    train, val = split_positions(ds)
    if len(train) < options.samples:
        raise UserError(f"{name} has {len(train)} training images outside the validation split, fewer than the "
                        f"{options.samples} calibration samples asked for: pass --calib-samples {len(train)} "
                        "or fewer, or a --calib-data folder with more images")
    chosen = train[balanced_indices(ds.labels[torch.as_tensor(train)], options.samples, options.seed)]
    calibration = _samples_from(ds, chosen, config, input_size,
                                f"{name} train split, validation split excluded, class-balanced, seed {options.seed}",
                                "calibration data")
    validation = None
    if len(val) and options.needs_labels:
        validation = _samples_from(ds, val, config, input_size, f"{name} validation split (train_val_split)",
                                   "validation data")
    if options.needs_labels and not len(val):
        raise UserError(f"{name} is too small to carve a validation split from, which --calibrator auto and "
                        "--max-drop score on: give more images or a fixed --calibrator without --max-drop")
    return CalibrationData(calibration, validation)


def split_positions(ds: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `ds` of `train_val_split`'s train and validation parts (the recorded indices name images)."""
    train, val = train_val_split(ImageDataset(ds.name, ds.class_names, torch.arange(len(ds))))
    return train.labels.numpy(), val.labels.numpy()


def from_arrays(inputs: np.ndarray, labels: np.ndarray | None = None, source: str = "arrays") -> SampleSet:
    """A sample set from already-preprocessed float32 N×C×H×W inputs (Python API users with their own loader)."""
    inputs = np.asarray(inputs)
    if inputs.ndim != 4:
        raise UserError(f"calibration inputs must be N×C×H×W, got shape {inputs.shape}")
    inputs = check_inputs(inputs.astype(np.float32, copy=False))
    fingerprint = hashlib.sha256(np.ascontiguousarray(inputs).tobytes()).hexdigest()
    return SampleSet(inputs, None if labels is None else np.asarray(labels), np.arange(len(inputs)), source,
                     fingerprint)


def batches(inputs: np.ndarray, batch: int | None) -> list[np.ndarray]:
    """`inputs` cut into the graph's batch size (None: one batch); a short last batch wraps to the start."""
    if batch is None:
        return [inputs]
    out = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.resize(inputs, (batch - len(chunk), *inputs.shape[1:]))])
        out.append(np.ascontiguousarray(chunk))
    return out
