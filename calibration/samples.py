"""Which images a quantizer learns its ranges from, and which images score the result.

Calibration samples come from the training split with the validation split (`train_val_split`)
carved out first, so the images that choose a calibrator or judge an accuracy drop are never the
ones the ranges were fitted on, and the test split is never touched. Selection is class-balanced
(round-robin over the classes, each class in a seeded order) and reproducible: the same seed,
data and N give the same indices, whose SHA-256 the manifest records.

The images are the weights' own dataset (`edgecnn.model_ref.WeightsData`: the checkpoint's, the one
stated for an ONNX file, or the one the user named with --data), never another one silently. A
`--calib-data` folder's classes are matched to the model's by name (or class number), never by
sort order alone when the model has names; a flat folder of images (no labels) calibrates alone,
with a fixed calibrator and no accuracy bound. `--calib-data synthetic` calibrates on generated
inputs: an INT8 latency answer for a model without data, whose accuracy is unknown.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecnn.data import ImageDataset, is_flat_image_folder, load_dataset, preprocess, train_val_split
from edgecnn.errors import DatasetError, UserError
from edgecnn.model_ref import WeightsData, aligned_labels, comparable_class_name, weights_data
from edgecnn.registry import ModelConfig
from edgecnn.validation import non_negative_float, non_negative_int, positive_int

DEFAULT_SAMPLES = 512
DEFAULT_SEED = 0
# "library" is the runtime quantizer library's own defaults (quantize_static's, nncf.quantize's); which ones `auto`
# tries, and in which order, is each quantizer's (export/backends/).
CALIBRATOR_NAMES = ("auto", "library", "minmax", "entropy", "percentile", "mse")
# Old names, accepted for one release, and what they are now: "default" read as "the default calibrator", which is
# auto (issue 24). Records made before the rename (manifests, bench caches, results) keep the old name.
DEPRECATED_CALIBRATORS = {"default": "library"}
# What an unset calibrator means for a flat --calib-data folder: auto needs labelled validation images.
UNLABELLED_CALIBRATOR = "library"
NEEDS_LABELS_FIX = f"pass a fixed --calibrator (e.g. {UNLABELLED_CALIBRATOR}) without --max-drop to calibrate only"
# How --max-drop picks the layers it returns to float: the most sensitive first, or the cheapest set that fits
# (measured accuracy per millisecond); and where layers compute: INT8 wherever quantizable, or only where faster.
FALLBACKS = ("sensitivity", "cost")
PLACEMENTS = ("accuracy", "fast")
PREPROCESS_CHUNK = 1024
SYNTHETIC = "synthetic"  # --calib-data synthetic: generated inputs, latency only
SYNTHETIC_SOURCE = ("synthetic: uniform random pixels 0-255, seed {seed}, preprocessed as the model's inputs "
                    "(no data: an INT8 latency answer, accuracy unknown)")
NO_DATA_FIX = ("pass --data DIR (the dataset the weights were trained on), --calib-data DIR (images to calibrate "
               "on) or --calib-data synthetic (generated inputs: an INT8 latency answer, accuracy unknown)")


def canonical_calibrator(name: str) -> str:
    """The current name of calibrator `name`: `library` for the deprecated `default`, else `name` itself (also for
    reading records made before the rename)."""
    return DEPRECATED_CALIBRATORS.get(name, name) if isinstance(name, str) else name


@dataclass(frozen=True)
class CalibrationOptions:
    """What the user asked for: `--calibrator`, `--calib-samples`, `--calib-data`, `--max-drop` (points).

    An unset calibrator is `auto`, except for a flat `data` folder without `max_drop`: nothing labelled to choose
    on, so UNLABELLED_CALIBRATOR (the quantizer library's own defaults). An explicit `auto` there is refused. A
    deprecated name (DEPRECATED_CALIBRATORS: `default`) becomes the current one (`library`)."""
    calibrator: str | None = None
    samples: int = DEFAULT_SAMPLES
    data: Path | None = None
    max_drop: float | None = None
    seed: int = DEFAULT_SEED
    fallback: str = "sensitivity"           # --fallback
    placement: str = "accuracy"             # --placement
    profile_threads: int | None = None      # --threads the runtime is profiled with (None: its default)
    synthetic: bool = False                 # --calib-data synthetic: calibrate on generated inputs (latency only)
    quantizer: str | None = None            # --quantizer: a registered quantizer's name (None: the target's default)

    def __post_init__(self) -> None:
        positive_int("--calib-samples", self.samples)
        if self.fallback not in FALLBACKS:
            raise UserError(f"unknown --fallback {self.fallback!r}; choose one of {', '.join(FALLBACKS)}")
        if self.placement not in PLACEMENTS:
            raise UserError(f"unknown --placement {self.placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if self.fallback == "cost" and self.max_drop is None:
            raise UserError("--fallback cost chooses which layers --max-drop returns to float: give --max-drop PT too")
        if self.profile_threads is not None:
            positive_int("--threads", self.profile_threads)
        non_negative_int("seed", self.seed)
        if self.max_drop is not None:
            non_negative_float("--max-drop", self.max_drop)
        if self.synthetic and self.data is not None:
            raise UserError("--calib-data is a folder or synthetic, not both")
        if self.synthetic and (self.calibrator == "auto" or self.max_drop is not None):
            raise UserError("--calib-data synthetic has no labels, and --calibrator auto and --max-drop score on "
                            f"labelled validation images: use a fixed --calibrator (e.g. {UNLABELLED_CALIBRATOR}) "
                            "without --max-drop, or real data")
        if self.data is not None:
            object.__setattr__(self, "data", Path(self.data))
            if not self.data.is_dir():
                raise UserError(f"--calib-data {self.data} is not a directory; pass a folder with one sub-folder "
                                "of images per class, a flat folder of images, or Fashion-MNIST IDX files")
        if self.calibrator is None:
            object.__setattr__(self, "calibrator", UNLABELLED_CALIBRATOR if self.unlabelled_default else "auto")
        object.__setattr__(self, "calibrator", canonical_calibrator(self.calibrator))  # what manifests record
        if self.calibrator not in CALIBRATOR_NAMES:
            raise UserError(f"unknown calibrator {self.calibrator!r}; choose one of {', '.join(CALIBRATOR_NAMES)}")

    @property
    def unlabelled_default(self) -> bool:
        """Whether an unset calibrator falls back to UNLABELLED_CALIBRATOR: synthetic inputs, or a flat folder
        without --max-drop."""
        return self.synthetic or (self.data is not None and self.max_drop is None and is_flat_image_folder(self.data))

    @property
    def float_choices(self) -> dict[str, str]:
        """--placement and --fallback where they differ from the defaults (accuracy, sensitivity): what decides,
        beyond the calibration itself, which layers an INT8 model leaves in float."""
        return {name: getattr(self, name) for name in ("placement", "fallback")
                if getattr(self, name) != getattr(type(self), name)}

    @property
    def measures_latency(self) -> bool:
        """Whether quantizing times layers on the runtime (--placement fast, --fallback cost)."""
        return self.placement == "fast" or self.fallback == "cost"

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
                  source: str, what: str, labelled: bool) -> SampleSet:
    cfg = replace(config, input_size=input_size)
    chunks = []
    for start in range(0, len(indices), PREPROCESS_CHUNK):
        images, _ = ds.get_batch(indices[start:start + PREPROCESS_CHUNK].tolist(), size=input_size[1:])
        chunks.append(preprocess(images, cfg).numpy())
    inputs = check_inputs(np.concatenate(chunks).astype(np.float32), what)
    labels = ds.labels[torch.as_tensor(indices)].numpy() if labelled else None
    return SampleSet(inputs, labels, indices, source, ds.fingerprint)


def _preview(names: list[str] | tuple[str, ...], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" (and {len(names) - shown} more)" if len(names) > shown else "")


def match_classes(folders: tuple[str, ...], config: ModelConfig) -> tuple[list[int], str]:
    """Each class folder's index among the model's classes, and how they were matched.

    By name (see `_comparable`) when every folder names one of the model's classes, else by number when every
    folder is one (0, 1, …); sorted order only for a model without class names and a folder per class.
    Anything else is a UserError saying why: sorted order would score validation against the wrong labels."""
    names, n = config.class_names or (), config.num_classes
    by_name = {comparable_class_name(c): k for k, c in enumerate(names)}
    if names and all(comparable_class_name(f) in by_name for f in folders):
        return [by_name[comparable_class_name(f)] for f in folders], "classes matched to the model's by name"
    if all(f.isdecimal() and int(f) < n for f in folders):
        return [int(f) for f in folders], "classes matched to the model's by number"
    if not names and len(folders) == n:
        return list(range(n)), f"classes taken in sorted folder order ({config.name} has no class names)"
    count = (f"{len(folders)} class folder{'s' if len(folders) != 1 else ''} but {config.name} predicts {n} classes"
             if len(folders) != n else "")
    if not names:
        raise UserError(f"it has {count}, and no class names to match folders by: give one folder per class, or "
                        f"folders named by class number 0-{n - 1}")
    unknown = [f for f in folders if comparable_class_name(f) not in by_name]
    raise UserError(f"its folders {_preview(unknown)} are neither {config.name}'s class names ({_preview(names)}) "
                    f"nor class numbers 0-{n - 1}{f', and it has {count}' if count else ''}: name the folders after "
                    "the model's classes (case and punctuation do not matter)")


@dataclass
class _Source:
    """The images to calibrate on, and whether their labels are the model's class indices (validation can score)."""
    dataset: ImageDataset
    name: str
    labelled: bool
    notes: tuple[str, ...] = ()


def _folder_source(config: ModelConfig, options: CalibrationOptions) -> _Source:
    """A --calib-data folder, its classes matched to the model's; refused when validation needs labels it lacks."""
    data = options.data
    try:
        ds = load_dataset(data, split="train", require_labels=False)
    except DatasetError as e:
        raise DatasetError(f"--calib-data {data}: {e}") from e
    skipped = (ds.skipped_summary(),) if ds.skipped else ()
    if not ds.labelled:
        if options.needs_labels:
            raise UserError(f"--calib-data {data} is a flat folder of images with no class sub-folders, but "
                            "--calibrator auto and --max-drop score accuracy on labelled validation images: "
                            f"{NEEDS_LABELS_FIX}, or sort the images into one sub-folder per class")
        return _Source(ds, str(data), False, ("a flat folder with no class sub-folders (unlabelled)", *skipped))
    try:
        indices, how = match_classes(ds.class_names, config)
    except UserError as e:
        if options.needs_labels:
            raise UserError(f"--calib-data {data} cannot be labelled for {config.name}'s validation: {e}; or "
                            f"{NEEDS_LABELS_FIX}") from e
        return _Source(ds, str(data), False, ("class folders not matched to the model's classes, used for "
                                              "balancing only", *skipped))
    labels = torch.tensor(indices, dtype=torch.long)[ds.labels]
    present = set(indices)
    missing = [config.class_names[k] if config.class_names else str(k)
               for k in range(config.num_classes) if k not in present]
    if missing and options.needs_labels:
        raise UserError(f"--calib-data {data} has images of {config.num_classes - len(missing)} of {config.name}'s "
                        f"{config.num_classes} classes (missing: {_preview(missing)}); --calibrator auto and "
                        "--max-drop score on a validation split that needs every class: add a folder per missing "
                        f"class, or {NEEDS_LABELS_FIX}")
    return _Source(replace(ds, labels=labels), str(data), True, (how, *skipped))


def _weights_dataset(config: ModelConfig, dataset: WeightsData | None) -> WeightsData:
    """The dataset to calibrate on when no --calib-data is given: the weights' own (or --data), else one line."""
    data = dataset or weights_data(config, None)
    if data is None:
        raise UserError(f"{config.name}'s weights name no dataset to calibrate on: {NO_DATA_FIX}")
    return data


def _calibration_source(config: ModelConfig, options: CalibrationOptions, dataset: WeightsData | None) -> _Source:
    if options.data is not None:
        return _folder_source(config, options)
    data = _weights_dataset(config, dataset)
    ds = data.load("train")
    if len(ds.class_names) != config.num_classes:
        raise UserError(f"{data.label} has {len(ds.class_names)} classes but {config.name} predicts "
                        f"{config.num_classes}; pass --data with the dataset these weights were trained on")
    order = aligned_labels(ds.class_names, config)
    if order is not None:
        ds = replace(ds, labels=torch.tensor(order, dtype=torch.long)[ds.labels])
    return _Source(ds, data.name if data.path is None else data.label, True,
                   (f"--data, instead of the weights' own {data.instead_of}",) if data.instead_of else ())


def check_calibration_source(config: ModelConfig, options: CalibrationOptions,
                             dataset: WeightsData | None = None) -> None:
    """Refuse, before any export work, a model whose calibration images edgecnn has no way to find, and a
    --calib-data folder that cannot give what the options ask for (labels matching the model's classes).
    A folder is only listed here, not decoded; a named dataset is read when it is used."""
    if options.synthetic:
        return
    if options.data is not None:
        _calibration_source(config, options, dataset)
        return
    data = _weights_dataset(config, dataset)
    if data.path is not None and not Path(data.path).is_dir():
        data.load("train")  # one line asking for --data


def synthetic_samples(config: ModelConfig, input_size: tuple[int, int, int], samples: int, seed: int) -> SampleSet:
    """Seeded uniform random pixels preprocessed as the model's inputs: ranges for a latency-only INT8 artifact."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (samples, *input_size), dtype=torch.uint8, generator=generator)
    inputs = check_inputs(preprocess(images, replace(config, input_size=input_size)).numpy(), "synthetic inputs")
    return SampleSet(inputs, None, np.arange(samples), SYNTHETIC_SOURCE.format(seed=seed),
                     hashlib.sha256(inputs.tobytes()).hexdigest())


def prepare_calibration(config: ModelConfig, input_size: tuple[int, int, int],
                        options: CalibrationOptions, dataset: WeightsData | None = None) -> CalibrationData:
    """Calibration samples (balanced, seeded, validation split excluded) and the validation split to score on.

    `dataset` is the weights' (`edgecnn.model_ref.weights_data`; None: the config's, Fashion-MNIST for the zoo's
    own). A flat folder has no validation split to keep apart: every image is a calibration candidate."""
    if options.synthetic:
        return CalibrationData(synthetic_samples(config, input_size, options.samples, options.seed), None)
    source = _calibration_source(config, options, dataset)
    ds, name = source.dataset, source.name
    train, val = split_positions(ds) if ds.labelled else (np.arange(len(ds)), np.zeros(0, dtype=np.int64))
    if len(train) < options.samples:
        outside = " outside the validation split" if ds.labelled else ""
        raise UserError(f"{name} has {len(train)} training images{outside}, fewer than the "
                        f"{options.samples} calibration samples asked for: pass --calib-samples {len(train)} "
                        "or fewer, or a --calib-data folder with more images")
    chosen = train[balanced_indices(ds.labels[torch.as_tensor(train)], options.samples, options.seed)]
    how = "train split, validation split excluded, class-balanced" if ds.labelled else "all images, shuffled"
    notes = "".join(f"; {note}" for note in source.notes)
    calibration = _samples_from(ds, chosen, config, input_size, f"{name} {how}, seed {options.seed}{notes}",
                                "calibration data", source.labelled)
    validation = None
    if len(val) and options.needs_labels:
        validation = _samples_from(ds, val, config, input_size, f"{name} validation split (train_val_split){notes}",
                                   "validation data", True)
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
