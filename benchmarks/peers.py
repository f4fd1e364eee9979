"""Peers: what a user would pick instead of edgecnn's flow, built only by the libraries, from the same FP32 ONNX.

Each peer is timed by the same harness, in the same rounds, and recorded with `"flow": "peer"`:

- `ort-quantize_static`: `onnxruntime.quantization.quantize_static(fp32.onnx, out, reader)` with every
  default (QDQ, QInt8 activations and weights, per-tensor, MinMax), run on ONNX Runtime;
- `nncf-quantize`: `nncf.quantize(ov.Core().read_model(fp32.onnx), nncf.Dataset(...))` with every default,
  saved with `ov.save_model` (its defaults), run on OpenVINO;
- `openvino-onnx`: OpenVINO reading the FP32 ONNX directly at the CPU plugin's default inference precision
  (bf16 on CPUs with AVX-512 BF16 or AMX), no edgecnn conversion.

ONNX Runtime's own FP32 needs no peer: it is the `onnxruntime fp32` record (the same file, the same session).
Calibration uses the first `calibration_samples` images of a fixed shuffle of the train split (the default,
300, is NNCF's default subset size); the accuracy is measured on the test split, as for edgecnn's artifacts.
A peer artifact is a directory with a manifest derived from the FP32 artifact's, so sessions load it the
same way; it is reused while its source ONNX and calibration settings match.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgecnn.errors import UserError
from edgecnn.quiet import silenced

if TYPE_CHECKING:
    from edgecnn.benchmarks.harness import AccuracyData

DEFAULT_CALIBRATION_SAMPLES = 300
CALIBRATION_SEED = 0


def _ort_quantize_static(source: Path, staging: Path, batches: list[np.ndarray], input_name: str) -> dict[str, str]:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter({input_name: b} for b in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    quantize_static(str(source / "model.onnx"), str(staging / "model.onnx"), Reader())
    return {"onnx": "model.onnx"}


def _nncf_quantize(source: Path, staging: Path, batches: list[np.ndarray], input_name: str) -> dict[str, str]:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(source / "model.onnx"))
    quantized = nncf.quantize(model, nncf.Dataset(batches))
    ov.save_model(quantized, str(staging / "model.xml"))
    return {"openvino": "model.xml"}


def _openvino_default_precision() -> dict[str, Any]:
    import openvino as ov

    hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
    return {"inference_precision": getattr(hint, "get_type_name", lambda: str(hint))()}


@dataclass(frozen=True)
class Peer:
    name: str
    runtime: str          # the runtime backend that runs it
    precision: str        # what it is meant to compute in
    description: str
    # (fp32 artifact dir, staging dir, calibration batches, input name) -> model_files; None: runs the FP32 ONNX
    build: Callable[[Path, Path, list[np.ndarray], str], dict[str, str]] | None = None
    options: Callable[[], dict[str, Any]] = dict   # runtime.load options
    target: str = "onnx"

    def describe(self, calibration_samples: int) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "calibration_samples": calibration_samples if self.build else None}

    def load_options(self) -> dict[str, Any]:
        return self.options()


PEERS: tuple[Peer, ...] = (
    Peer("ort-quantize_static", "onnxruntime", "int8",
         "onnxruntime.quantization.quantize_static, all defaults (QDQ, QInt8/QInt8, per-tensor, MinMax)",
         _ort_quantize_static),
    Peer("nncf-quantize", "openvino", "int8", "nncf.quantize on the OpenVINO model read from the ONNX, all defaults",
         _nncf_quantize, target="openvino"),
    Peer("openvino-onnx", "openvino", "fp32",
         "OpenVINO reading the FP32 ONNX directly, CPU plugin's default inference precision",
         options=_openvino_default_precision),
)


@functools.lru_cache(maxsize=4)
def _train_split(data: str, root: str | None) -> Any:
    from edgecnn.data import load_dataset

    return load_dataset(data, "train", root)


def calibration_batches(data: AccuracyData, config: Any, batch: int, samples: int) -> list[np.ndarray]:
    """`samples` train images (a fixed shuffle) preprocessed for the model, in batches of the artifact's size."""
    import torch

    from edgecnn.data import preprocess

    train = _train_split(data.data, data.root)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(CALIBRATION_SEED))
    usable = min(samples, len(train)) // batch * batch
    if usable == 0:
        raise UserError(f"{samples} calibration samples do not fill one batch of {batch}; raise "
                        "--calibration-samples")
    images, _ = train.get_batch(order[:usable], size=tuple(config.input_size[1:]))
    x = preprocess(images, config).numpy()
    return [np.ascontiguousarray(x[i:i + batch]) for i in range(0, usable, batch)]


def peer_artifact(peer: Peer, source: Path, cache_dir: Path, data: AccuracyData | None,
                  samples: int) -> tuple[Path, bool]:
    """(path, reused): the peer's artifact built from the FP32 ONNX artifact `source` (or `source` itself)."""
    if peer.build is None:
        return source, True
    if data is None:
        raise UserError(f"the {peer.name} peer needs calibration images and this model has no dataset: "
                        "pass --data")
    from edgecnn.benchmarks.harness import cached_manifest
    from edgecnn.benchmarks.models import manifest_config
    from edgecnn.export.manifest import (STAGING_MARKER, describe_files, read_manifest, staging_directory,
                                         write_manifest)

    manifest = read_manifest(source)
    record = {"name": peer.name, "description": peer.description, "source": str(source),
              "source_sha256": manifest["files"]["model.onnx"]["sha256"], "calibration_samples": samples,
              "calibration_split": "train",
              "calibration_data": _train_split(data.data, data.root).fingerprint[:16]}
    batch = manifest["input"]["shape"][0]
    path = Path(cache_dir) / f"{source.name.rsplit('-', 3)[0]}-peer-{peer.name}-b{batch}"  # named as its source
    if path.exists():
        cached = cached_manifest(path)
        if cached is not None and cached.get("peer") == record:
            return path, True
    batches = calibration_batches(data, manifest_config(manifest), batch, samples)
    with staging_directory(path, overwrite=path.exists()) as staging:
        try:
            with silenced("", "nncf"):
                model_files = peer.build(source, staging, batches, manifest["input"]["name"])
        except Exception as e:  # noqa: BLE001 (a library that cannot quantize this graph: a skip, not a crash)
            text = str(e).strip()
            raise UserError(f"{peer.name} could not be built: {type(e).__name__}"
                            + (f": {text.splitlines()[0]}" if text else "")) from e
        files = sorted(p.name for p in staging.iterdir() if p.name != STAGING_MARKER)
        write_manifest(staging, {
            **manifest, "target": peer.target, "precision": peer.precision, "files": describe_files(staging, files),
            "model_files": model_files, "default_backend": peer.runtime, "parity": [], "passes": [],
            "calibration": {"method": peer.description, "samples": len(batches) * batch, "split": "train"},
            "peer": record, "notes": [f"peer baseline built by `edgecnn bench --peers` with {peer.description}; "
                                      "not an edgecnn export, parity not checked"]})
    return path, False
