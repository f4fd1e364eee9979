"""Peers: what a user would pick instead of edgecnn's flow, built only by the libraries, from the same FP32 ONNX.

Each peer is timed by the same harness, in the same rounds, and recorded with `"flow": "peer"`:

- `ort-quantize_static`: `onnxruntime.quantization.quantize_static(fp32.onnx, out, reader)` with every
  default (QDQ, QInt8 activations and weights, per-tensor, MinMax), run on ONNX Runtime;
- `nncf-quantize`: `nncf.quantize(ov.Core().read_model(fp32.onnx), nncf.Dataset(...))` with every default but
  `subset_size` (every sample), saved with `ov.save_model(..., compress_to_fp16=False)`, run on OpenVINO;
- `openvino-onnx`: OpenVINO reading the FP32 ONNX directly at the CPU plugin's default inference precision
  (bf16 on CPUs with AVX-512 BF16 or AMX), no edgecnn conversion.

ONNX Runtime's own FP32 needs no peer: it is the `onnxruntime fp32` record (the same file, the same session).
The peers are the libraries' defaults on edgecnn's own calibration samples (`edgecnn.calibration`: class-balanced,
seeded, from the train split minus the validation split; `calibration_samples` of them, default 300, NNCF's default
subset size), built by `library_default_int8`, the one definition `studies/quantization.py`'s peer columns use
too; the accuracy is measured on the test split, as for edgecnn's artifacts.
A peer artifact is a directory with a manifest derived from the FP32 artifact's, so sessions load it the
same way; it is reused while its source ONNX and calibration settings match.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable


from edgecnn.errors import UserError
from edgecnn.quiet import silenced

if TYPE_CHECKING:
    from edgecnn.benchmarks.accuracy import AccuracyData
    from edgecnn.calibration import SampleSet
    from edgecnn.export.quantize import GraphInput

DEFAULT_CALIBRATION_SAMPLES = 300
TARGET_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}   # a peer's runtime → its model_files key


def library_default_int8(runtime: str, fp32: Path, out: Path, samples: SampleSet, graph: GraphInput) -> None:
    """The peer INT8 model: `runtime`'s quantizer with its own defaults on edgecnn's calibration `samples`, fed in
    the graph's batch (CALIBRATION_CHUNK for a dynamic one). onnxruntime: `quantize_static(fp32, out, reader)`;
    openvino: `nncf.quantize(read_model(fp32), dataset, subset_size=every batch)` (`fp32` an ONNX file or an IR),
    saved without FP16 compression."""
    from edgecnn.calibration import OnnxRuntimeFeed, as_nncf_dataset

    if runtime == "onnxruntime":
        from onnxruntime.quantization import quantize_static

        quantize_static(str(fp32), str(out), OnnxRuntimeFeed(samples, graph.name, graph.feed_batch))
        return
    import nncf
    import openvino as ov

    calibration = as_nncf_dataset(samples, graph.feed_batch)
    quantized = nncf.quantize(ov.Core().read_model(str(fp32)), calibration,
                              subset_size=len(list(calibration.get_data())))
    ov.save_model(quantized, str(out), compress_to_fp16=False)


def _peer_int8(runtime: str, model_file: str) -> Callable[[Path, Path, SampleSet, GraphInput], dict[str, str]]:
    def build(source: Path, staging: Path, samples: SampleSet, graph: GraphInput) -> dict[str, str]:
        library_default_int8(runtime, source / "model.onnx", staging / model_file, samples, graph)
        return {TARGET_FORMATS[runtime]: model_file}
    return build


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
    # (fp32 artifact dir, staging dir, calibration samples, the graph's input) -> model_files; None: runs the FP32 ONNX
    build: Callable[[Path, Path, SampleSet, GraphInput], dict[str, str]] | None = None
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
         _peer_int8("onnxruntime", "model.onnx")),
    Peer("nncf-quantize", "openvino", "int8", "nncf.quantize on the OpenVINO model read from the ONNX, all defaults "
         "(subset_size: every sample)", _peer_int8("openvino", "model.xml"), target="openvino"),
    Peer("openvino-onnx", "openvino", "fp32",
         "OpenVINO reading the FP32 ONNX directly, CPU plugin's default inference precision",
         options=_openvino_default_precision),
)


def calibration_samples(data: AccuracyData, config: Any, samples: int) -> SampleSet:
    """edgecnn's calibration samples (what its INT8 export calibrates on) of the accuracy data's dataset."""
    from edgecnn.calibration import CalibrationOptions, prepare_calibration

    options = CalibrationOptions(calibrator="library", samples=samples)   # a fixed calibrator: no validation split
    return prepare_calibration(config, tuple(config.input_size), options, data.source).calibration


def peer_artifact(peer: Peer, source: Path, cache_dir: Path, data: AccuracyData | None,
                  samples: int) -> tuple[Path, bool]:
    """(path, reused): the peer's artifact built from the FP32 ONNX artifact `source` (or `source` itself)."""
    if peer.build is None:
        return source, True
    if data is None:
        raise UserError(f"the {peer.name} peer needs calibration images and this model has no dataset: "
                        "pass --data")
    from edgecnn.benchmarks.cache import cached_manifest
    from edgecnn.export.manifest import describe_files, manifest_config, read_manifest, write_manifest
    from edgecnn.export.quantize import GraphInput
    from edgecnn.export.staging import STAGING_MARKER, staging_directory

    manifest = read_manifest(source)
    chosen = calibration_samples(data, manifest_config(manifest), samples)
    record = {"name": peer.name, "description": peer.description, "source": str(source),
              "source_sha256": manifest["files"]["model.onnx"]["sha256"], "calibration_samples": samples,
              "calibration": chosen.record()}
    batch = manifest["input"]["shape"][0]
    path = Path(cache_dir) / f"{source.name.rsplit('-', 3)[0]}-peer-{peer.name}-b{batch}"  # named as its source
    if path.exists():
        cached = cached_manifest(path)
        if cached is not None and cached.get("peer") == record:
            return path, True
    graph = GraphInput(manifest["input"]["name"], None if manifest["input"].get("dynamic_batch") else batch)
    with staging_directory(path, overwrite=path.exists()) as staging:
        try:
            with silenced("", "nncf"):
                model_files = peer.build(source, staging, chosen, graph)
        except Exception as e:  # noqa: BLE001 (a library that cannot quantize this graph: a skip, not a crash)
            text = str(e).strip()
            raise UserError(f"{peer.name} could not be built: {type(e).__name__}"
                            + (f": {text.splitlines()[0]}" if text else "")) from e
        files = sorted(p.name for p in staging.iterdir() if p.name != STAGING_MARKER)
        write_manifest(staging, {
            **manifest, "target": peer.target, "precision": peer.precision, "files": describe_files(staging, files),
            "model_files": model_files, "default_backend": peer.runtime, "parity": [], "passes": [],
            "calibration": {"method": peer.description, **chosen.record()},
            "peer": record, "notes": [f"peer baseline built by `edgecnn bench --peers` with {peer.description}; "
                                      "not an edgecnn export, parity not checked"]})
    return path, False
