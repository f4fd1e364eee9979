"""`edgecnn.quantize`: an FP32 model file to INT8 with the runtime's own library, no export needed.

    import edgecnn
    result = edgecnn.quantize("lenet-onnx/model.onnx", (inputs, labels), backend="onnxruntime")
    result.model, result.calibrator, result.int8_accuracy      # lenet-onnx/int8/model.onnx, "minmax", 88.4

It runs what `edgecnn export --precision int8` runs (`quantize.quantize_model`: the calibrator choice, the
float fallback of `max_drop`, the provenance record), on a model file instead of an export's staging directory.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecnn.calibration import (DEFAULT_SAMPLES, DEPRECATED_CALIBRATORS, CalibrationData, CalibrationOptions,
                                 SampleSet, from_arrays, prepare_calibration)
from edgecnn.errors import UserError
from edgecnn.export.quantize import GraphInput, ModelFiles, check_int8, quantize_model
from edgecnn.export.quantizers import Quantizer, get_quantizer

# Labelled arrays: this share of the images (seeded) is held out to score calibrators and --max-drop on.
VALIDATION_SHARE = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class QuantizeResult:
    """What `edgecnn.quantize` wrote and how it chose."""
    model: Path                             # the INT8 model file
    files: tuple[Path, ...]                 # every file of the INT8 model (an IR's .bin too)
    backend: str
    calibrator: str                         # the calibrator used (what `auto` chose)
    fp32_accuracy: float | None             # top-1 % on the held-out labelled images; None without labels
    int8_accuracy: float | None
    excluded: tuple[str, ...]               # nodes left in float: `exclude` plus what `max_drop` returned to float
    record: dict[str, Any]                  # the full provenance record (an export manifest's "calibration")


def quantize(model_file: str | Path, data: Any, *, backend: str, calibrator: str = "auto",
             max_drop: float | None = None, exclude: tuple[str, ...] | list[str] = (), out: str | Path | None = None,
             samples: int = DEFAULT_SAMPLES, quantizer: str | None = None, fallback: str = "sensitivity",
             placement: str = "accuracy", threads: int | None = None) -> QuantizeResult:
    """Quantize the FP32 model file `model_file` to INT8 with `backend`'s own library; write it into `out`.

    - `model_file`: .onnx for onnxruntime and tensorrt (ModelOpt's Q/DQ ONNX; no engine is built), .xml (with its
      .bin beside it) for openvino.
    - `data`: preprocessed float32 N×C×H×W images as a numpy array (unlabelled), a tuple `(inputs, labels)`
      (a seeded fifth is held out to score on), an `edgecnn.calibration.CalibrationData`, or a dataset name or
      folder (as `--data`; needs the edgecnn export's manifest.json beside the model file for the preprocessing;
      `samples` images, class-balanced, validation split held out).
    - `calibrator`: "auto" (the backend's candidates, scored on the labelled images; without labels, its first
      candidate) or one of the backend's calibrators ("library" is the library's own defaults, as calling it
      alone gives; "default", its old name, still works for one release and warns).
    - `max_drop`: the most validation top-1 points INT8 may lose; the most sensitive nodes go back to float
      (needs labels). `exclude`: node names kept float in every candidate.
    - `out`: a folder for the INT8 model files (same names as the FP32 ones); default `int8/` beside the model.
    - `fallback`: with `max_drop`, which nodes go back to float: "sensitivity" (the most sensitive first) or "cost"
      (the set that meets the drop with the least latency lost, each node's gain and cost measured here).
    - `placement`: "fast" leaves in float the layers whose INT8 kernel the backend's profiler measures slower than
      their float one here ("accuracy", the default: INT8 wherever the quantizer can). `threads`: what the backend
      is timed with for "fast" and "cost" (default: its own).
    - `quantizer`: a registered quantizer's name (`edgecnn.export.quantizers.QUANTIZERS`) for the backend's target;
      default: the target's first (onnxruntime.quantization, nncf, modelopt).

    Returns a `QuantizeResult`; bad input is one-line `edgecnn.errors.UserError`.
    """
    from edgecnn.export.backends import BACKENDS

    if isinstance(calibrator, str) and calibrator in DEPRECATED_CALIBRATORS:
        warnings.warn(f"calibrator={calibrator!r} is now calibrator={DEPRECATED_CALIBRATORS[calibrator]!r}",
                      DeprecationWarning, stacklevel=2)
        calibrator = DEPRECATED_CALIBRATORS[calibrator]
    runtime = BACKENDS.lookup(backend)
    chosen = _quantizer(runtime, quantizer)
    model_file = Path(model_file)
    suffix = next((s for s, fmt in runtime.sessions[0].suffixes.items() if fmt == chosen.model_format),
                  f".{chosen.model_format}")   # its session's suffix for the format the quantizer rewrites
    if model_file.suffix != suffix:
        raise UserError(f"the {backend} backend quantizes {suffix} model files, and {model_file} is not one: "
                        f"give the FP32 {suffix} file, or the backend that runs {model_file.suffix or 'it'}")
    if not model_file.is_file():
        raise UserError(f"{model_file} is not a file: give the FP32 model file to quantize")
    if isinstance(max_drop, bool) or (max_drop is not None and not isinstance(max_drop, (int, float))):
        raise UserError(f"max_drop must be a number of accuracy points, got {max_drop!r}")
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    out = model_file.parent / "int8" if out is None else Path(out)
    if out.resolve() == model_file.parent.resolve():
        raise UserError(f"out {out} is the FP32 model's own folder: the INT8 files would replace it; choose another")
    files = ModelFiles.of(chosen, model_file.parent, model_file.name)
    missing = [name for name in files.files if not (files.directory / name).is_file()]
    if missing:
        raise UserError(f"{model_file}'s model needs {', '.join(missing)} beside it, and it is not there")
    graph = GraphInput.of_model(model_file)
    asked = CalibrationOptions(calibrator=calibrator, samples=samples, max_drop=max_drop, quantizer=chosen.name,
                               fallback=fallback, placement=placement, profile_threads=threads)
    calibration, options = _calibration(model_file, data, asked, chosen, backend)
    check_int8(chosen.target, options)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name in files.files:
            shutil.copy2(files.directory / name, out / Path(name).name)
        written = ModelFiles(out, model_file.name, tuple(Path(name).name for name in files.files))
        record = quantize_model(chosen, written, graph, calibration, options, backend=chosen.scored_on,
                                exclude=exclude)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    record["requested"] = calibrator
    excluded = [*exclude, *(n for n in (record.get("nodes_left_in_float_for_speed") or []) + record["nodes_to_exclude"]
                            if n not in exclude)]
    return QuantizeResult(written.model, tuple(out / name for name in written.files), backend, record["calibrator"],
                          record["fp32_validation_accuracy"], record["int8_validation_accuracy"], tuple(excluded),
                          record)


def _quantizer(backend: Any, name: str | None) -> Quantizer:
    """The quantizer `name` for the backend's target (None: its default), or one line saying why not."""
    if backend.quantizer is None:
        from edgecnn.export.backends import BACKENDS

        with_int8 = [b.name for b in BACKENDS.values() if b.quantizer is not None]
        raise UserError(f"the {backend.name} backend has no INT8 quantizer; quantize for {', '.join(with_int8)}")
    return get_quantizer(backend.target_name, name)


def _calibration(model_file: Path, data: Any, asked: CalibrationOptions, quantizer: Quantizer,
                 backend: str) -> tuple[CalibrationData, CalibrationOptions]:
    """The samples to calibrate on and the labelled images to score on, and the options `quantize_model` takes."""
    if asked.calibrator != "auto" and asked.calibrator not in quantizer.calibrators:
        raise UserError(f"calibrator {asked.calibrator!r} does not exist for the {backend} backend ({quantizer.tool}); "
                        f"choose auto or {', '.join(quantizer.calibrators)}")
    if isinstance(data, (str, Path)):
        config, dataset, shape = _named_data(model_file, data)
        return prepare_calibration(config, shape, asked, dataset), asked
    if isinstance(data, CalibrationData):
        prepared = data
    elif isinstance(data, np.ndarray):
        prepared = CalibrationData(from_arrays(data), None)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        prepared = _split(from_arrays(data[0], _labels(data[1], len(data[0]))))
    else:
        raise UserError(f"data must be a numpy array of preprocessed N×C×H×W images, a tuple (inputs, labels), "
                        f"a dataset name or a folder; got {type(data).__name__}")
    if prepared.validation is None and asked.max_drop is not None:
        raise UserError("max_drop scores INT8 against FP32 on labelled images, and these have no labels: "
                        "pass (inputs, labels), or drop max_drop")
    calibrator = asked.calibrator
    if prepared.validation is None and calibrator == "auto":
        calibrator = quantizer.auto_candidates()[0]  # what auto keeps unless another scores significantly better
    return prepared, replace(asked, calibrator=calibrator, samples=len(prepared.calibration))


def _labels(labels: Any, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise UserError(f"labels must be {n} integer class indices, one per image; got shape {labels.shape} of "
                        f"{labels.dtype}")
    return labels


def _split(samples: SampleSet) -> CalibrationData:
    """Labelled arrays: a seeded VALIDATION_SHARE held out to score on, the rest to calibrate on."""
    n = len(samples)
    held = max(1, round(n * VALIDATION_SHARE))
    if n - held < 1:
        raise UserError(f"{n} labelled image{'s' if n != 1 else ''} cannot be split into calibration and validation "
                        "images: give more")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)

    def part(positions: np.ndarray, what: str) -> SampleSet:
        positions = np.sort(positions)
        return SampleSet(samples.inputs[positions], samples.labels[positions], positions,
                         f"{samples.source}: {what} (seeded split, {VALIDATION_SHARE:.0%} held out)",
                         samples.fingerprint)
    return CalibrationData(part(order[held:], "calibration"), part(order[:held], "validation"))


def _named_data(model_file: Path, data: str | Path) -> tuple[Any, Any, tuple[int, int, int]]:
    """The model's preprocessing and classes (from the export's manifest beside the file) and the dataset named."""
    from edgecnn.export.manifest import manifest_config, read_manifest
    from edgecnn.model_ref import weights_data, with_data

    manifest_file = model_file.parent / "manifest.json"
    if not manifest_file.is_file():
        raise UserError(f"data {str(data)!r} names images, and edgecnn preprocesses them as the model's export says; "
                        f"{model_file} has no edgecnn manifest.json beside it: pass preprocessed arrays instead")
    manifest = read_manifest(model_file.parent, verify=False)
    config = manifest_config(manifest)
    shape = tuple(config.input_size)
    model = manifest["model"]
    return config, with_data(weights_data(config, model.get("weights")), str(data)), shape


__all__ = ["QuantizeResult", "quantize"]
