"""Runtime sessions: one interface over every backend that runs an artifact (Polygraphy-style).

    from edgecnn.export import runtime
    with runtime.load("artifacts/resnet18_fmnist-onnx-fp32", backend="onnxruntime", threads=2) as s:
        logits = s.run(batch)          # float32 N×C×H×W numpy array → float32 logits

`load` reads the manifest (validated, hashes checked) and only the files it names. Backends are
registered in one place (`BACKENDS`, filled by `@register_backend`); each declares which of the
manifest's `model_files` it reads. Every session validates its input against the manifest before
the runtime sees it, so a wrong shape, dtype or layout is a clear error, never a runtime crash.

Backends: `torch` (the eager reference, rebuilt from the manifest's weight record),
`onnxruntime` (CPU EP, all graph optimisations, intra-op threads), `openvino` (CPU, LATENCY or
THROUGHPUT hint, threads; FP32 artifacts run in f32 even on CPUs whose default is bf16),
`tensorrt` (a built engine, on an NVIDIA GPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgecnn.errors import UserError
from edgecnn.export.manifest import ArtifactError, read_manifest


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]   # None: the dynamic batch axis
    dtype: np.dtype
    layout: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> InputSpec:
        spec = manifest["input"]
        shape = tuple(d if isinstance(d, int) else None for d in spec["shape"])
        return cls(spec["name"], shape, np.dtype(spec["dtype"]), spec.get("layout", "NCHW"))

    def validate(self, batch: Any) -> np.ndarray:
        """The batch as the runtime wants it (C-contiguous), or a UserError saying what to change."""
        if not isinstance(batch, np.ndarray):
            hint = "; use tensor.numpy()" if type(batch).__module__.startswith("torch") else ""
            raise UserError(f"input must be a numpy array, got {type(batch).__name__}{hint}")
        if batch.dtype != self.dtype:
            raise UserError(f"input dtype is {batch.dtype}; the model takes {self.dtype}: "
                            f"use batch.astype(np.{self.dtype})")
        _, channels, height, width = self.shape
        expected = "×".join("N" if d is None else str(d) for d in self.shape)
        if batch.ndim == 3 and batch.shape == (channels, height, width):
            raise UserError(f"input has no batch axis (shape {batch.shape}); the model takes {expected} "
                            f"({self.layout}): use batch[None]")
        if batch.ndim != 4:
            raise UserError(f"input has {batch.ndim} dimensions (shape {batch.shape}); the model takes "
                            f"{expected} ({self.layout})")
        if batch.shape[1:] != (channels, height, width):
            if batch.shape[1:] == (height, width, channels):
                raise UserError(f"input shape {batch.shape} looks like NHWC; the model takes {self.layout} "
                                f"{expected}: transpose to NCHW with batch.transpose(0, 3, 1, 2)")
            raise UserError(f"input shape {batch.shape} does not match the model's {expected} ({self.layout})")
        if self.shape[0] is not None and batch.shape[0] != self.shape[0]:
            raise UserError(f"batch size {batch.shape[0]}, but this artifact was exported for batch "
                            f"{self.shape[0]}: export with --batch {batch.shape[0]} or --dynamic-batch")
        if batch.shape[0] == 0:
            raise UserError("input batch is empty")
        return np.ascontiguousarray(batch)


class Session:
    """An artifact loaded on one backend: `run(batch) -> logits`, `close()`, usable as a context manager."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]   # keys of the manifest's model_files this backend reads

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str) -> None:
        self.directory = directory
        self.manifest = manifest
        self.model_format = model_format
        self.input_spec = InputSpec.from_manifest(manifest)
        self._closed = False

    @classmethod
    def pick_format(cls, manifest: dict[str, Any]) -> str | None:
        """The first of this backend's formats the artifact has, or None."""
        return next((f for f in cls.formats if f in manifest["model_files"]), None)

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest["model_files"][self.model_format]

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise UserError(f"the {self.name} session of {self.directory} is closed")
        return self._run(self.input_spec.validate(batch))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """How the session runs (backend, threads, precision), for benchmark records."""
        return {"backend": self.name, "model_file": self.manifest["model_files"][self.model_format]}

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BACKENDS: dict[str, type[Session]] = {}


def register_backend(cls: type[Session]) -> type[Session]:
    BACKENDS[cls.name] = cls
    return cls


def _load_error(session: Session, e: Exception) -> ArtifactError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ArtifactError(f"{session.name} cannot load {session.model_path} ({first}); the file is corrupt "
                         "or was written for another version: export again")


@register_backend
class OnnxRuntimeSession(Session):
    name = "onnxruntime"
    formats = ("onnx",)

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str,
                 threads: int | None = None) -> None:
        super().__init__(directory, manifest, model_format)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (one per physical core)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.threads = threads
        try:
            self._session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise _load_error(self, e) from e
        self._output = self._session.get_outputs()[0].name

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self.input_spec.name: batch})[0]

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {**super().info(), "version": ort.__version__, "provider": "CPUExecutionProvider",
                "intra_op_threads": self.threads or "default", "graph_optimization": "all"}

    def close(self) -> None:
        self._session = None
        super().close()


OPENVINO_HINTS = ("LATENCY", "THROUGHPUT")


@register_backend
class OpenVinoSession(Session):
    name = "openvino"
    formats = ("openvino", "onnx")

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str, threads: int | None = None,
                 performance_hint: str = "LATENCY", inference_precision: str | None = None) -> None:
        super().__init__(directory, manifest, model_format)
        import openvino as ov

        hint = performance_hint.upper()
        if hint not in OPENVINO_HINTS:
            raise UserError(f"unknown OpenVINO performance hint {performance_hint!r}; use LATENCY or THROUGHPUT")
        core = ov.Core()
        self.inference_precision = inference_precision or self._default_precision(core, manifest["precision"])
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": self.inference_precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.threads, self.performance_hint = threads, hint
        try:
            self._compiled = core.compile_model(str(self.model_path), "CPU", config)
        except Exception as e:  # openvino raises RuntimeError subclasses for bad files
            raise _load_error(self, e) from e
        self._request = self._compiled.create_infer_request()

    @staticmethod
    def _default_precision(core: Any, precision: str) -> str:
        """f32 for FP32 artifacts (the CPU plugin otherwise picks bf16 on AMX CPUs); f16 where the CPU has it."""
        if precision == "fp16" and "FP16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return "f16"
        return "f32"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({self.input_spec.name: batch})
        return self._request.get_output_tensor(0).data.copy()

    def info(self) -> dict[str, Any]:
        import openvino as ov

        return {**super().info(), "version": ov.get_version(), "device": "CPU", "threads": self.threads or "default",
                "performance_hint": self.performance_hint, "inference_precision": self.inference_precision}

    def close(self) -> None:
        self._request = self._compiled = None
        super().close()


@register_backend
class TorchSession(Session):
    """The eager PyTorch model the artifact came from: the reference every other backend is held to."""

    name = "torch"
    formats = ("pytorch",)

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str,
                 threads: int | None = None) -> None:
        super().__init__(directory, manifest, model_format)
        from edgecnn.export.source import rebuild_source_model

        self.threads = threads
        self._model = rebuild_source_model(manifest["model"])

    @classmethod
    def pick_format(cls, manifest: dict[str, Any]) -> str | None:
        return "pytorch"  # rebuilt from the manifest's weight record, whatever the target

    @property
    def model_path(self) -> Path:
        return Path(self.manifest["model"]["weights"].get("path") or "")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                return self._model(torch.from_numpy(batch).float()).numpy()
        finally:
            torch.set_num_threads(previous)

    def info(self) -> dict[str, Any]:
        import torch

        return {"backend": self.name, "version": torch.__version__, "threads": self.threads or torch.get_num_threads()}

    def close(self) -> None:
        self._model = None
        super().close()


@register_backend
class TensorRTSession(Session):
    """A TensorRT engine built on this device (`build_engine.py` in the artifact); needs an NVIDIA GPU."""

    name = "tensorrt"
    formats = ("tensorrt_plan",)

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str,
                 threads: int | None = None) -> None:
        super().__init__(directory, manifest, model_format)
        try:
            import tensorrt as trt
            import torch
        except ImportError as e:
            raise UserError(f"the tensorrt backend needs the tensorrt package ({e}); install edgecnn[tensorrt] "
                            "on an NVIDIA device, or use backend='onnxruntime'") from e
        if not torch.cuda.is_available():
            raise UserError("the tensorrt backend needs a CUDA GPU, and torch sees none here")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{self.model_path} is not an engine this TensorRT/GPU can run; rebuild it here "
                                "with build_engine.py")
        self._context = self._engine.create_execution_context()
        self._output = manifest["output"]["name"]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).cuda()
        self._context.set_input_shape(self.input_spec.name, tuple(x.shape))
        y = torch.empty(tuple(self._context.get_tensor_shape(self._output)), device="cuda")
        self._context.set_tensor_address(self.input_spec.name, x.data_ptr())
        self._context.set_tensor_address(self._output, y.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT failed to run the engine")
        stream.synchronize()
        return y.cpu().numpy()

    def close(self) -> None:
        self._context = self._engine = None
        super().close()


def open_session(directory: Path | str, manifest: dict[str, Any], backend: str | None = None,
                 threads: int | None = None, **options: Any) -> Session:
    """A session on an already-validated manifest (export uses this on its staging directory)."""
    backend = backend or manifest["default_backend"]
    cls = BACKENDS.get(backend)
    if cls is None:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(sorted(BACKENDS))}")
    model_format = cls.pick_format(manifest)
    if model_format is None:
        raise UserError(f"backend {backend!r} reads {' or '.join(cls.formats)} models, and this "
                        f"{manifest['target']} artifact has {', '.join(manifest['model_files']) or 'none'}; "
                        f"use backend={manifest['default_backend']!r} or export for another target")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be at least 1, got {threads}")
    return cls(Path(directory), manifest, model_format, threads=threads, **options)


def load(directory: Path | str, backend: str | None = None, threads: int | None = None, **options: Any) -> Session:
    """Open the artifact in `directory` on `backend` (default: the one its target is meant for)."""
    return open_session(directory, read_manifest(directory), backend, threads, **options)
