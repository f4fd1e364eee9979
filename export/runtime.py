"""Runtime sessions: one interface over every backend that runs an artifact (Polygraphy-style).

    from edgecnn.export import runtime
    with runtime.load("artifacts/resnet18_fmnist-onnx-fp32", backend="onnxruntime", threads=2) as s:
        logits = s.run(batch)          # float32 N×C×H×W numpy array or torch tensor → float32 logits
        s.executed_precision           # what the runtime really computes in (fp32, fp16, bf16, int8)

`load` reads the manifest (validated, hashes checked) and only the files it names. Backends are
registered in one place (`BACKENDS`, filled by `@register_backend`); each declares which of the
manifest's `model_files` it reads. Every session validates its input against the manifest before
the runtime sees it, so a wrong shape, dtype or layout is a clear error, never a runtime crash.

Backends: `torch` (the eager reference, rebuilt from the manifest's weight record),
`onnxruntime` (CPU EP, all graph optimisations, intra-op threads), `openvino` (CPU, LATENCY or
THROUGHPUT hint, threads; FP32 artifacts run in f32 even on CPUs whose default is bf16, bf16 artifacts in
bf16 where the CPU has it),
`tensorrt` (a built engine, on an NVIDIA GPU).
"""
from __future__ import annotations

import functools
import inspect
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgecnn.errors import UserError
from edgecnn.export.manifest import ArtifactError, read_manifest
from edgecnn.registries import Registry
from edgecnn.validation import positive_int


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...]   # None: the dynamic batch axis
    dtype: np.dtype                 # one of manifest.TENSOR_DTYPES (named alike in numpy and torch)
    layout: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> InputSpec:
        spec = manifest["input"]
        shape = tuple(d if isinstance(d, int) else None for d in spec["shape"])
        return cls(spec["name"], shape, np.dtype(spec["dtype"]), spec.get("layout", "NCHW"))

    def validate(self, batch: Any, check_finite: bool = True) -> np.ndarray:
        """The batch as the runtime wants it (C-contiguous), or a UserError saying what to change.

        A torch tensor is taken as its numpy view (copied to the CPU first if it lives elsewhere).
        """
        is_tensor = type(batch).__module__.startswith("torch") and hasattr(batch, "detach")
        if is_tensor:
            batch = _tensor_to_numpy(batch, self.dtype)
        if not isinstance(batch, np.ndarray):
            raise UserError(f"input must be a numpy array or a torch tensor, got {type(batch).__name__}")
        if batch.dtype != self.dtype:
            cast = f"batch.to(torch.{self.dtype.name})" if is_tensor \
                else f"batch.astype(np.{self.dtype})"
            raise UserError(f"input dtype is {batch.dtype}; the model takes {self.dtype}: use {cast}")
        _, channels, height, width = self.shape
        expected = "×".join("N" if d is None else str(d) for d in self.shape)
        if batch.ndim == 3 and batch.shape == (channels, height, width):
            raise UserError(f"input has no batch axis (shape {batch.shape}); the model takes {expected} "
                            f"({self.layout}): use batch[None]")
        if batch.ndim != 4:
            raise UserError(f"input has {batch.ndim} dimensions (shape {batch.shape}); the model takes "
                            f"{expected} ({self.layout})")
        if batch.shape[0] == 0:
            raise UserError(f"input batch is empty (shape {batch.shape}); pass at least one image")
        if batch.shape[1:] != (channels, height, width):
            if batch.shape[1:] == (height, width, channels):
                raise UserError(f"input shape {batch.shape} looks like NHWC; the model takes {self.layout} "
                                f"{expected}: transpose to NCHW with batch.transpose(0, 3, 1, 2)")
            raise UserError(f"input shape {batch.shape} does not match the model's {expected} ({self.layout})")
        if self.shape[0] is not None and batch.shape[0] != self.shape[0]:
            raise UserError(f"batch size {batch.shape[0]}, but this artifact was exported for batch "
                            f"{self.shape[0]}: export with --batch {batch.shape[0]} or --dynamic-batch")
        batch = np.ascontiguousarray(batch)
        if check_finite and batch.dtype.kind == "f":
            refuse_non_finite(batch)
        return batch


def _tensor_to_numpy(tensor: Any, dtype: np.dtype) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    try:
        return tensor.numpy()
    except TypeError as e:  # dtypes numpy lacks, such as bfloat16
        raise UserError(f"input dtype is {tensor.dtype}, which has no numpy equivalent; the model takes {dtype}: "
                        f"use batch.to(torch.{dtype.name})") from e


def refuse_non_finite(batch: np.ndarray) -> None:
    """Refuse NaN and ±inf. The batch's dot product with itself is NaN or inf whenever a value is, so one
    BLAS pass without a copy clears a clean float32/float64 batch; values are looked at one by one only
    when it is not (or for float16, which BLAS lacks and whose squares overflow early)."""
    flat = batch.reshape(-1)
    if batch.dtype in (np.float32, np.float64) and math.isfinite(np.vdot(flat, flat)):
        return
    bad = ~np.isfinite(batch)
    if not bad.any():
        return  # large finite values overflowed the sum of squares
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    nans = int(np.isnan(batch).sum())
    raise UserError(f"input has {nans} NaN and {int(bad.sum()) - nans} infinite values (first at index {first}); "
                    "runtimes disagree on what they return for them: clean the data, or pass "
                    "check_finite=False to runtime.load to skip this check")


# Manifest / report names of precisions, from the names runtimes use for element types.
_PRECISION_NAMES = {"f32": "fp32", "float32": "fp32", "float": "fp32", "f16": "fp16", "float16": "fp16",
                    "bf16": "bf16", "bfloat16": "bf16", "u8": "int8", "i8": "int8", "uint8": "int8", "int8": "int8"}


def _summarise_precisions(precisions: Counter, fallback: str) -> str:
    """`fp32`, or `int8+fp32` (most layers first) where compute layers run in several precisions."""
    if not precisions:
        return fallback
    return "+".join(p for p, _ in precisions.most_common())


class Session:
    """An artifact loaded on one backend: `run(batch) -> logits`, `close()`, usable as a context manager."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]   # keys of the manifest's model_files this backend reads
    runs_early_exit: ClassVar[bool] = False  # runs a BranchyNet artifact's stage loop (early_exit.py)
    # Whether sessions of this backend draw on one process-wide thread pool; if each owns its own, the early-exit
    # loop gives its stage sessions one thread each, so their pools do not fight over the cores.
    shares_threads: ClassVar[bool] = True

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str, *,
                 check_finite: bool = True) -> None:
        if not isinstance(check_finite, bool):
            raise UserError(f"check_finite must be True or False, got {check_finite!r}")
        self.directory = directory
        self.manifest = manifest
        self.model_format = model_format
        self.input_spec = InputSpec.from_manifest(manifest)
        self.check_finite = check_finite
        self._closed = False

    @classmethod
    def options(cls) -> tuple[str, ...]:
        """The keyword options `runtime.load` accepts for this backend (from the constructors' signatures)."""
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            init = klass.__dict__.get("__init__")
            if init is None or klass is object:
                continue
            for param in list(inspect.signature(init).parameters.values())[4:]:
                if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name not in names:
                    names.append(param.name)
        return tuple(sorted(names))

    @classmethod
    def pick_format(cls, manifest: dict[str, Any]) -> str | None:
        """The first of this backend's formats the artifact has, or None."""
        return next((f for f in cls.formats if f in manifest["model_files"]), None)

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest["model_files"][self.model_format]

    def run(self, batch: Any) -> np.ndarray:
        """Logits for a float N×C×H×W batch (numpy array or torch tensor), validated against the manifest."""
        if self._closed:
            raise UserError(f"the {self.name} session of {self.directory} is closed")
        return self._run(self.input_spec.validate(batch, self.check_finite))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph, in order, for an already validated batch (multi-output stage graphs)."""
        return [self._run(batch)]

    def _run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output of a graph with more inputs than the image (an early-exit graph's thresholds), in order."""
        raise UserError(f"the {self.name} backend runs graphs with one input only")

    @functools.cached_property
    def executed_precision(self) -> str:
        """The precision the runtime really computes in (fp32, fp16, bf16, int8, or e.g. int8+fp32 when mixed).

        Each backend asks its runtime; it can differ from the artifact's precision (an fp16 artifact on a
        CPU without FP16 arithmetic runs in fp32).
        """
        return self._executed_precision()

    def _executed_precision(self) -> str:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """How the session runs (backend, threads, precision), for benchmark records."""
        return {"backend": self.name, "model_file": self.manifest["model_files"].get(self.model_format),
                "artifact_precision": self.manifest["precision"], "executed_precision": self.executed_precision,
                "check_finite": self.check_finite}

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BACKENDS: Registry[type[Session]] = Registry("backend", sort_choices=True)
register_backend = BACKENDS.register   # @register_backend on a Session subclass files it under its name


def _load_error(session: Session, e: Exception) -> ArtifactError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ArtifactError(f"{session.name} cannot load {session.model_path} ({first}); the file is corrupt "
                         "or was written for another version: export again")


# ONNX operators that do the arithmetic (their precision is the model's), and those that compute in integers.
_ONNX_COMPUTE_OPS = {"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "DeformConv", "Gemm", "FusedGemm",
                     "MatMul", "FusedMatMul"}
_ONNX_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "QGemm"}


def onnx_compute_precision(model: Any, fallback: str) -> str:
    """The precision of an ONNX graph's compute operators: integer kernels are int8, float ones take their
    weights' element type (a weight from DequantizeLinear or Cast takes that node's output type)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = model.graph
    types = {t.name: tensor_dtype_to_np_dtype(t.data_type).name for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) > 1 and node.input[1] in types:
            types[node.output[0]] = types[node.input[1]]  # the scale's type is the output's
        elif node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            types[node.output[0]] = tensor_dtype_to_np_dtype(to).name
    found: Counter = Counter()
    for node in graph.node:
        if node.op_type in _ONNX_INTEGER_OPS:
            found["int8"] += 1
        elif node.op_type in _ONNX_COMPUTE_OPS and len(node.input) > 1 and node.input[1] in types:
            found[_PRECISION_NAMES.get(types[node.input[1]], types[node.input[1]])] += 1
    return _summarise_precisions(found, fallback)


def onnxruntime_options(threads: int | None) -> Any:
    """The SessionOptions every edgecnn ONNX Runtime session runs with (its per-layer profiler adds its own)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (one per physical core)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def onnxruntime_compute_precision(model_path: Path | str, fallback: str, threads: int | None = None) -> str:
    """The precision ONNX Runtime computes the graph in, read from the graph it actually runs after its
    optimisations: on a CPU without FP16 kernels it casts an fp16 graph's weights to fp32 and computes in fp32,
    and it fuses QDQ into integer kernels."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgecnn-ort-") as tmp:
        options = onnxruntime_options(threads)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        return onnx_compute_precision(onnx.load(options.optimized_model_filepath), fallback)


@register_backend
class OnnxRuntimeSession(Session):
    name = "onnxruntime"
    formats = ("onnx",)
    shares_threads = False  # each InferenceSession owns an intra-op pool whose workers spin after a run

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str,
                 threads: int | None = None, **common: Any) -> None:
        super().__init__(directory, manifest, model_format, **common)
        self.threads = threads
        try:
            self._session = self._inference_session()
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise _load_error(self, e) from e
        self._output = self._session.get_outputs()[0].name

    def _inference_session(self) -> Any:
        import onnxruntime as ort

        return ort.InferenceSession(str(self.model_path), onnxruntime_options(self.threads),
                                    providers=["CPUExecutionProvider"])

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self.input_spec.name: batch})[0]

    def _run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self.input_spec.name: batch})

    def _run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, feeds)

    def _executed_precision(self) -> str:
        """`onnxruntime_compute_precision`, worked out once, on first request, so an ordinary load pays nothing."""
        return onnxruntime_compute_precision(self.model_path, self.manifest["precision"], self.threads)

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {**super().info(), "version": ort.__version__, "provider": "CPUExecutionProvider",
                "intra_op_threads": self.threads or "default", "graph_optimization": "all"}

    def close(self) -> None:
        self._session = None
        super().close()


OPENVINO_HINTS = ("LATENCY", "THROUGHPUT")
# INFERENCE_PRECISION_HINT values edgecnn sets, the CPU capability each needs, and the user-facing aliases.
OPENVINO_PRECISIONS = {"f32": None, "f16": "FP16", "bf16": "BF16"}
_OPENVINO_ALIASES = {"fp32": "f32", "fp16": "f16"}
# The hint for each artifact precision, and whether a missing capability falls back to f32 or is refused.
_OPENVINO_DEFAULT_HINTS = {"fp32": ("f32", False), "fp16": ("f16", True), "bf16": ("bf16", False),
                           "int8": ("f32", False)}  # int8: the layers NNCF left in float run in f32
# CPU plugin layer types that do the arithmetic; the element type of their data input is what they compute in.
_OPENVINO_COMPUTE_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm"}


@register_backend
class OpenVinoSession(Session):
    name = "openvino"
    formats = ("openvino", "onnx")

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str, threads: int | None = None,
                 performance_hint: str = "LATENCY", inference_precision: str | None = None, **common: Any) -> None:
        super().__init__(directory, manifest, model_format, **common)
        import openvino as ov

        hint = str(performance_hint).upper()
        if hint not in OPENVINO_HINTS:
            raise UserError(f"unknown OpenVINO performance hint {performance_hint!r}; use LATENCY or THROUGHPUT")
        core = ov.Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.inference_precision = (self._default_precision(capabilities, manifest["precision"])
                                    if inference_precision is None
                                    else self._requested_precision(capabilities, inference_precision))
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
    def _default_precision(capabilities: list[str], precision: str) -> str:
        """The hint for an artifact's precision: f32 for FP32 and INT8 (the CPU plugin otherwise picks bf16
        on AMX CPUs), f16 where the CPU has FP16 arithmetic (else f32), bf16 only where the CPU has BF16."""
        if precision not in _OPENVINO_DEFAULT_HINTS:
            raise UserError(f"the OpenVINO backend runs {', '.join(_OPENVINO_DEFAULT_HINTS)} artifacts, and this one "
                            f"is {precision!r}: export it again")
        hint, falls_back = _OPENVINO_DEFAULT_HINTS[precision]
        needed = OPENVINO_PRECISIONS[hint]
        if needed is None or needed in capabilities:
            return hint
        if falls_back:
            return "f32"
        raise UserError(f"this {precision} artifact needs a CPU with {needed} arithmetic (AVX-512 BF16 or AMX), and "
                        f"this CPU offers {', '.join(capabilities)}: export the fp32 or int8 artifact instead")

    @staticmethod
    def _requested_precision(capabilities: list[str], requested: Any) -> str:
        hint = _OPENVINO_ALIASES.get(str(requested).lower(), str(requested).lower())
        if hint not in OPENVINO_PRECISIONS:
            raise UserError(f"unknown inference_precision {requested!r}; use one of {', '.join(OPENVINO_PRECISIONS)}")
        needed = OPENVINO_PRECISIONS[hint]
        if needed is not None and needed not in capabilities:
            raise UserError(f"inference_precision={requested!r} needs a CPU with {needed} arithmetic, and this CPU "
                            f"offers {', '.join(capabilities)}: use 'f32'")
        return hint

    def _infer(self, batch: np.ndarray) -> None:
        """Read the caller's array in place and skip infer's own result dict (each a copy): measured here, a third
        of the fixed per-call cost (24 -> 16 us on a one-op graph). Callers copy the outputs out of the request."""
        self._request.infer({self.input_spec.name: batch}, share_inputs=True, share_outputs=True)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._infer(batch)
        return self._request.get_output_tensor(0).data.copy()

    def _run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._run_feeds({self.input_spec.name: batch})

    def _run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._request.infer(feeds, share_inputs=True, share_outputs=True)
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self._compiled.outputs))]

    def _executed_precision(self) -> str:
        """Read from the compiled model's runtime graph: the element type entering each compute layer (an
        fp16 artifact on a CPU without FP16 arithmetic keeps f16 weights but runs f32 kernels)."""
        found: Counter = Counter()
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            rt_info = op.get_rt_info()
            if "layerType" in rt_info and rt_info["layerType"].astype(str) in _OPENVINO_COMPUTE_LAYERS:
                element = op.input(0).get_element_type().get_type_name()
                found[_PRECISION_NAMES.get(element, element)] += 1
        return _summarise_precisions(found, _PRECISION_NAMES[self._compiled_hint()])

    def _compiled_hint(self) -> str:
        return self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def info(self) -> dict[str, Any]:
        import openvino as ov

        return {**super().info(), "version": ov.get_version(), "device": "CPU", "threads": self.threads or "default",
                "performance_hint": self.performance_hint, "inference_precision": self.inference_precision,
                "compiled_inference_precision": self._compiled_hint()}

    def close(self) -> None:
        self._request = self._compiled = None
        super().close()


@register_backend
class TorchSession(Session):
    """The eager PyTorch model the artifact came from: the reference every other backend is held to."""

    name = "torch"
    formats = ("pytorch",)

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str,
                 threads: int | None = None, **common: Any) -> None:
        super().__init__(directory, manifest, model_format, **common)
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

    def _executed_precision(self) -> str:
        found = Counter(str(p.dtype).removeprefix("torch.") for p in self._model.parameters())
        return _summarise_precisions(Counter({_PRECISION_NAMES.get(k, k): n for k, n in found.items()}), "fp32")

    def info(self) -> dict[str, Any]:
        import torch

        return {**super().info(), "version": torch.__version__,
                "threads": self.threads or torch.get_num_threads()}

    def close(self) -> None:
        self._model = None
        super().close()


@register_backend
class TensorRTSession(Session):
    """A TensorRT engine built on this device (`build_engine.py` in the artifact); needs an NVIDIA GPU."""

    name = "tensorrt"
    formats = ("tensorrt_plan",)

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str,
                 threads: int | None = None, **common: Any) -> None:
        super().__init__(directory, manifest, model_format, **common)
        try:
            import tensorrt as trt
            import torch
        except ImportError as e:
            raise UserError(f"the tensorrt backend needs the tensorrt package ({e}); install edgecnn[tensorrt] "
                            "on an NVIDIA device, or use backend='onnxruntime'") from e
        if not torch.cuda.is_available():
            raise UserError("the tensorrt backend needs a CUDA GPU, and torch sees none here")
        from edgecnn.export.tensorrt_build import EngineMismatch, check_engine_record

        try:  # before deserialising: an engine from another GPU or TensorRT version crashes or misbehaves there
            check_engine_record(self.model_path, trt.__version__, _torch_cuda_device())
        except EngineMismatch as e:
            raise ArtifactError(str(e)) from None
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{self.model_path} is not an engine this TensorRT/GPU can run; rebuild it here "
                                "with build_engine.py")
        self._context = self._engine.create_execution_context()
        self._output = manifest["output"]["name"]
        # The profile's largest batch (a static engine's own batch): larger batches run in chunks of it.
        self._max_batch = int(self._engine.get_tensor_profile_shape(self.input_spec.name, 0)[2][0]) \
            if isinstance(self.input_spec.shape[0], str) else int(self.input_spec.shape[0])
        # A stream of the session's own (on torch's default stream TensorRT adds a device synchronisation) and
        # device buffers allocated once per input shape, not per call: both would distort measured latency.
        self._stream = torch.cuda.Stream()
        self._buffers: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}
        self._bound: tuple[int, ...] | None = None

    def _bind(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        """Device input, device output and pinned host output for this input shape, bound to the context (buffers
        are made on a shape's first call, kept for the next)."""
        import torch

        if shape != self._bound:
            if not self._context.set_input_shape(self.input_spec.name, shape):
                raise UserError(f"the engine {self.model_path} does not take input shape {list(shape)}; rebuild it "
                                "with build_engine.py --batch/--max-batch covering it")
            if shape not in self._buffers:
                out_shape = tuple(self._context.get_tensor_shape(self._output))
                self._buffers[shape] = (torch.empty(shape, device="cuda"), torch.empty(out_shape, device="cuda"),
                                        torch.empty(out_shape, pin_memory=True))
            x, y, _ = self._buffers[shape]
            self._context.set_tensor_address(self.input_spec.name, x.data_ptr())
            self._context.set_tensor_address(self._output, y.data_ptr())
            self._bound = shape
        return self._buffers[shape]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([self._run_chunk(batch[i:i + self._max_batch])
                               for i in range(0, len(batch), self._max_batch)])

    def _run_chunk(self, chunk: np.ndarray) -> np.ndarray:
        import torch

        x, y, host = self._bind(tuple(chunk.shape))
        with torch.cuda.stream(self._stream):
            x.copy_(torch.from_numpy(chunk).pin_memory(), non_blocking=True)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT failed to run the engine")
            host.copy_(y, non_blocking=True)
        self._stream.synchronize()
        return host.numpy().copy()

    def _executed_precision(self) -> str:
        """The precision the engine was built to allow (TensorRT still picks each layer's kernel among
        them; its per-layer choice is in the engine inspector only for engines built with detailed
        profiling verbosity)."""
        return self.manifest["precision"]

    def close(self) -> None:
        self._context = self._engine = None
        self._buffers.clear()
        super().close()


def _torch_cuda_device() -> dict[str, str]:
    """The current CUDA device as tensorrt_build's engine record names it (name, compute capability)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def open_session(directory: Path | str, manifest: dict[str, Any], backend: str | None = None,
                 threads: int | None = None, **options: Any) -> Session:
    """A session on an already-validated manifest (export uses this on its staging directory)."""
    backend = backend or manifest["default_backend"]
    cls = BACKENDS.lookup(backend)
    if "early_exit" in manifest and not cls.runs_early_exit and not options.pop("trunk", False):
        raise UserError(f"{directory} is an early-exit artifact ({len(manifest['early_exit']['stages'])} stages): "
                        f"load it with backend='early_exit' (runtime={backend!r}), or pass trunk=True to run "
                        "the plain network")
    unknown = sorted(set(options) - set(cls.options()))
    if unknown:
        raise UserError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for the "
                        f"{backend} backend; it accepts {', '.join(cls.options())}")
    model_format = cls.pick_format(manifest)
    if model_format is None:
        raise UserError(f"backend {backend!r} reads {' or '.join(cls.formats)} models, and this "
                        f"{manifest['target']} artifact has {', '.join(manifest['model_files']) or 'none'}; "
                        f"use backend={manifest['default_backend']!r} or export for another target")
    if threads is not None:
        positive_int("threads", threads)
    return cls(Path(directory), manifest, model_format, threads=threads, **options)


def load(directory: Path | str, backend: str | None = None, threads: int | None = None, **options: Any) -> Session:
    """Open the artifact in `directory` on `backend` (default: the one its target is meant for).

    Options: `threads` (every backend), `check_finite` (default True: refuse NaN/inf inputs), and the
    backend's own (OpenVINO: `performance_hint`, `inference_precision`); `Session.options()` lists them.
    An early-exit (BranchyNet) artifact runs on `backend="early_exit"` (its stages on `runtime=`); a plain
    backend runs its trunk only when asked with `trunk=True`.
    """
    return open_session(directory, read_manifest(directory), backend, threads, **options)


from edgecnn.export import early_exit  # noqa: E402,F401  (registers the early_exit backend)
