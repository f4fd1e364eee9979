"""TensorRT: the `tensorrt` target (TensorRT-ready ONNX + build scripts), its engine session, and INT8 by ModelOpt.

- target `tensorrt`: the FP32 ONNX TensorRT parses (its operators checked against TensorRT's), the strongly
  typed FP16/INT8 graph for TensorRT 10.12+/11 and build_engine.py/.sh; the engine is built where TensorRT and a
  GPU exist (`export/tensorrt.py`: operator check and build scripts; `export/tensorrt_build.py`: the builder).
- session `tensorrt`: a built engine, on an NVIDIA GPU.
- quantizer: NVIDIA ModelOpt `modelopt.onnx.quantization.quantize` (S8 symmetric, per-channel, explicit Q/DQ
  placed for TensorRT), plus a TensorRT calibration cache stamped with the FP32 model's hash.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import numpy as np

from edgecnn.errors import UserError
from edgecnn.export import tensorrt
from edgecnn.export.backends import Backend, register
from edgecnn.export.deploy import DeployTarget, register_deploy_target
from edgecnn.export.graph_io import ExportError
from edgecnn.export.manifest import ArtifactError, sha256_file
from edgecnn.export.quantizers import Quantizer, register_quantizer
from edgecnn.export.runtime import ModelSpec, Session, register_backend
from edgecnn.export.targets import ONNX_FILE, Target, TargetOutput, register_target
from edgecnn.quiet import silenced

if TYPE_CHECKING:  # the INT8 machinery (ModelOpt, edgecnn.calibration) loads when the quantizer runs
    from edgecnn.calibration import CalibrationData
    from edgecnn.export.passes import ExportContext
    from edgecnn.export.quantize import GraphInput


# ---------------------------------------------------------------- the target

@register_target
class TensorRTTarget(Target):
    name = "tensorrt"
    description = ("TensorRT-ready ONNX (FP32 weights, FP16 as a builder flag for TensorRT 10.3-10.11) and its "
                   "strongly typed FP16/INT8 graph for TensorRT 10.12+/11, + build_engine.py/.sh; the engine is "
                   "built where TensorRT and a GPU exist")
    # What the engine's builder is told per artifact precision, per TensorRT generation.
    builder_precision: ClassVar[dict[str, dict[str, str]]] = {
        "fp32": {"weak": "fp32", "strong": "fp32 (model.onnx, strongly typed)"},
        "fp16": {"weak": "fp16 (model.onnx, BuilderFlag.FP16)",
                 "strong": f"fp16 ({tensorrt.TYPED_ONNX_FILE}: ModelOpt AutoCast, strongly typed)"},
        "int8": {"weak": "int8 from model.onnx's Q/DQ scales, fp16 elsewhere (BuilderFlag.INT8, BuilderFlag.FP16)",
                 "strong": f"int8 from {tensorrt.TYPED_ONNX_FILE}'s Q/DQ scales, fp16 elsewhere in the graph "
                           "(strongly typed)"}}

    def check_ops(self, ops: dict[str, int], graph: Path | None = None) -> None:
        super().check_ops(ops, graph)
        missing = tensorrt.unsupported_ops(ops)
        if missing:
            nodes = tensorrt.describe_nodes(graph, missing) if graph is not None else ""
            raise ExportError(f"TensorRT's ONNX parser does not support {', '.join(missing)}{nodes} "
                              f"({tensorrt.TENSORRT_OPS_SOURCE}); the model cannot be built as a TensorRT engine: "
                              f"{tensorrt.way_out(missing)}")

    def write(self, ctx: ExportContext) -> TargetOutput:
        report = self._write_onnx(ctx, ONNX_FILE, half=False)
        # INT8 always has ModelOpt (its quantizer); FP16 needs AutoCast for the strongly typed graph.
        typed = ctx.precision == "int8" or (ctx.precision == "fp16" and tensorrt.autocast_available())
        typed_name = tensorrt.TYPED_ONNX_FILE if typed else None
        files = [ONNX_FILE] + tensorrt.write_build_scripts(ctx.staging, ONNX_FILE, ctx.input_name,
                                                           ctx.input_shape, ctx.precision, typed_name)
        info = {"onnx": report, "engine_built": False, "builder_precision": self.builder_precision[ctx.precision],
                "strongly_typed_graph": ONNX_FILE if ctx.precision == "fp32" else typed_name,
                "ops_checked_against": tensorrt.TENSORRT_OPS_SOURCE, "unsupported_ops": []}
        output = TargetOutput(files, {"onnx": ONNX_FILE}, "onnxruntime", ("onnxruntime",), info, parity_measures={
            "onnxruntime": f"the FP32 TensorRT-ready ONNX in ONNX Runtime; no {ctx.precision.upper()} TensorRT "
                           "engine is built here"})
        if ctx.precision == "fp16":
            if typed:
                self._add_strongly_typed_graph(ctx, output, quantized=False)
            else:
                output.notes.append(f"no strongly typed FP16 graph was written ({tensorrt.TYPED_ONNX_FILE} needs "
                                    "NVIDIA ModelOpt: pip install 'edgecnn[tensorrt-int8]'), so TensorRT 10.12+ "
                                    "and 11, which build strongly typed only, refuse this artifact; TensorRT "
                                    "10.3-10.11 build it with --fp16")
        buildable, reason = tensorrt.engine_buildable_here()
        if not buildable:
            info["engine_not_built_because"] = reason
            checked = "the INT8 Q/DQ ONNX" if ctx.precision == "int8" else "the FP32 TensorRT-ready ONNX"
            output.notes.append(f"no TensorRT engine was built: {reason}. Run build_engine.py (TensorRT Python API) "
                                f"or build_engine.sh (trtexec) on the target device: TensorRT 10.3-10.11 build "
                                f"model.onnx with precision flags, 10.12+ and 11 the strongly typed graph. Parity "
                                f"was checked with ONNX Runtime on {checked}.")
        elif ctx.precision != "int8":  # an INT8 engine needs the Q/DQ graph the INT8 pass writes: finish_int8
            self.build_engine(ctx, output)
        if report["opset"] > tensorrt.TENSORRT_MAX_OPSET:
            output.notes.append(f"opset {report['opset']} is newer than TensorRT 10.0 parses "
                                f"(≤ {tensorrt.TENSORRT_MAX_OPSET}); use a newer TensorRT 10.x or --opset "
                                f"{tensorrt.TENSORRT_MAX_OPSET}")
        return output

    def finish_int8(self, ctx: ExportContext, output: TargetOutput) -> None:
        self._add_strongly_typed_graph(ctx, output, quantized=True)
        if tensorrt.engine_buildable_here()[0]:
            self.build_engine(ctx, output)

    @staticmethod
    def _add_strongly_typed_graph(ctx: ExportContext, output: TargetOutput, quantized: bool) -> None:
        """Write model_fp16.onnx from the artifact's model.onnx as it stands, and record how far its outputs are
        from model.onnx's on the export's example input (ONNX Runtime runs both on the CPU)."""
        import onnxruntime as ort

        source, typed = ctx.staging / ONNX_FILE, ctx.staging / tensorrt.TYPED_ONNX_FILE
        tensorrt.write_strongly_typed_graph(source, typed, quantized)
        feed = {ctx.input_name: ctx.example.numpy()}
        outputs = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0]
                   for path in (source, typed)]
        output.info["strongly_typed_max_abs_diff"] = float(np.max(np.abs(outputs[0] - outputs[1].astype(np.float32))))
        output.files.append(tensorrt.TYPED_ONNX_FILE)
        output.model_files[tensorrt.STRONGLY_TYPED_FORMAT] = tensorrt.TYPED_ONNX_FILE

    @staticmethod
    def build_engine(ctx: ExportContext, output: TargetOutput) -> None:
        """Build model.plan from the artifact's graphs as they stand (for INT8, once ModelOpt has written its Q/DQ
        graph), and make the engine the artifact's default and parity backend."""
        from edgecnn.export.tensorrt_build import build_engine

        typed = output.model_files.get(tensorrt.STRONGLY_TYPED_FORMAT)
        try:
            build_engine(ctx.staging / ONNX_FILE, ctx.staging / tensorrt.PLAN_FILE, input_name=ctx.input_name,
                         input_shape=ctx.input_shape, precision=ctx.precision,
                         strongly_typed_onnx=ctx.staging / typed if typed else None)
        except RuntimeError as e:  # refused for this TensorRT, or its parser or builder failed: one line
            raise ExportError(f"the TensorRT engine could not be built here: {e}") from e
        output.files += [tensorrt.PLAN_FILE, tensorrt.ENGINE_RECORD]
        output.model_files["tensorrt_plan"] = tensorrt.PLAN_FILE
        output.info["engine_built"] = True
        output.default_backend, output.parity_backends, output.parity_measures = "tensorrt", ("tensorrt",), {}


# ---------------------------------------------------------------- the session

@register_backend
class TensorRTSession(Session):
    """A TensorRT engine built on this device (`build_engine.py` in the artifact); needs an NVIDIA GPU."""

    name = "tensorrt"
    formats = ("tensorrt_plan",)
    suffixes = {".plan": "tensorrt_plan", ".engine": "tensorrt_plan"}

    def __init__(self, model: ModelSpec, threads: int | None = None, **common: Any) -> None:
        super().__init__(model, **common)
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
        self._output = model.output
        # The profile's largest batch (a static engine's own batch): larger batches run in chunks of it.
        self._max_batch = int(self._engine.get_tensor_profile_shape(self.input_spec.name, 0)[2][0]) \
            if self.input_spec.shape[0] is None else int(self.input_spec.shape[0])
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
        return self.precision

    def close(self) -> None:
        self._context = self._engine = None
        self._buffers.clear()
        super().close()


def _torch_cuda_device() -> dict[str, str]:
    """The current CUDA device as tensorrt_build's engine record names it (name, compute capability)."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


# ---------------------------------------------------------------- INT8 (ModelOpt)

TRT_CACHE = "calibration.cache"
MODELOPT_HINT = ("pip install 'edgecnn[tensorrt-int8]' (NVIDIA ModelOpt without its CUDA extras: "
                 "nvidia-modelopt, onnx-graphsurgeon, onnxslim, polygraphy, pulp, omegaconf, pydantic, nvidia-ml-py)")


@contextmanager
def _onnxruntime_quantization_restored() -> Iterator[None]:
    """ModelOpt patches onnxruntime.quantization's calibrators and quantizers and edits its op registries in place
    while it quantizes (modelopt/onnx/quantization/ort_utils.py configure_ort) and never undoes it: after one
    TensorRT INT8 export, the ONNX target's quantize_static in the same process calibrated with ModelOpt's code (or
    failed) and no longer put Q/DQ around Relu, Reshape or Split. Put the functions, classes and registries back."""
    import importlib
    import sys

    for name in ("calibrate", "base_quantizer", "qdq_quantizer", "quantize", "registry"):
        importlib.import_module(f"onnxruntime.quantization.{name}")
    modules = [m for n, m in list(sys.modules.items()) if n.startswith("onnxruntime.quantization") and m]
    classes = {c for m in modules for c in vars(m).values() if isinstance(c, type) and c.__module__ == m.__name__}
    saved = {owner: dict(vars(owner)) for owner in (*modules, *classes)}
    tables = [(table, dict(table)) for m in modules for key, table in vars(m).items()
              if isinstance(table, dict) and not key.startswith("__")]  # QDQRegistry and the other op registries
    try:
        yield
    finally:
        for table, before in tables:
            if table != before:
                table.clear()
                table.update(before)
        for owner, before in saved.items():  # functions and classes only: module state such as caches may move
            for key, value in before.items():
                now = vars(owner).get(key)
                if now is not value and (callable(value) or callable(now)):
                    setattr(owner, key, value)
            if isinstance(owner, type):
                for key in set(vars(owner)) - set(before):
                    delattr(owner, key)


@contextmanager
def _modelopt_bars_silenced() -> Iterator[None]:
    """ModelOpt's histogram collector opens a tqdm bar on stderr for every calibration batch (512 bars for the
    entropy calibrator on a batch-1 graph); edgecnn's own export bar says what is running."""
    from modelopt.onnx.quantization import ort_patching

    bar = ort_patching.tqdm
    ort_patching.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        ort_patching.tqdm = bar


@register_quantizer
class ModelOptQuantizer(Quantizer):
    name = "modelopt"
    target = "tensorrt"
    tool = "NVIDIA ModelOpt (modelopt.onnx.quantization)"
    calibrators = {"entropy": "calibration_method='entropy'", "minmax": "calibration_method='max'"}
    scheme = "explicit Q/DQ for TensorRT 10: S8 symmetric activations, S8 per-channel weights (DQ only)"
    model_format = "onnx"
    scored_on = "onnxruntime"   # the Q/DQ ONNX; a TensorRT engine is built on the device

    def available(self) -> str | None:
        try:
            import modelopt.onnx.quantization  # noqa: F401
        except Exception:  # ImportError, or a missing optional dependency it imports eagerly
            return MODELOPT_HINT
        return None

    def quantize(self, graph: GraphInput, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                 exclude: list[str]) -> None:
        from modelopt.onnx.quantization import quantize

        from edgecnn.calibration import as_modelopt_data

        method = "max" if calibrator == "minmax" else calibrator
        with silenced("", stdout=True), _onnxruntime_quantization_restored(), _modelopt_bars_silenced():
            quantize(str(fp32), quantize_mode="int8", calibration_data=as_modelopt_data(data.calibration, graph.name),
                     calibration_method=method, calibration_eps=["cpu"], output_path=str(out), log_level="WARNING",
                     nodes_to_exclude=exclude or None, high_precision_dtype="fp32", dq_only=True)

    def finish(self, ctx: ExportContext, fp32: Path, calibrator: str) -> list[str]:
        """A TensorRT EntropyCalibration2-format cache for implicit INT8 / DLA users: the explicit model's own scales.

        Each activation QuantizeLinear ModelOpt placed carries a symmetric S8 scale (zero point 0), which is
        exactly the dynamic range TensorRT's implicit quantization wants for that tensor.
        """
        import onnx
        from onnx import numpy_helper

        from edgecnn.calibration import write_cache

        graph = onnx.load(str(ctx.staging / ctx.output.model_files["onnx"]), load_external_data=False).graph
        constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                          if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR})
        amax = {}
        for node in graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] not in constants and node.input[1] in constants:
                scale = constants[node.input[1]]
                if scale.size == 1:
                    amax[node.input[0]] = float(scale.reshape(())) * 127.0
        written = write_cache(ctx.staging / TRT_CACHE, amax, sha256_file(fp32), _tensorrt_version())
        ctx.output.parity_measures = {b: "the INT8 Q/DQ ONNX in ONNX Runtime (CPU), not a TensorRT engine"
                                      for b in ctx.output.parity_backends if b != "tensorrt"}
        ctx.notes.append("INT8 engine: sh build_engine.sh (or python3 build_engine.py) picks the TensorRT generation it "
                         "finds: 10.12+ and 11 build model_fp16.onnx strongly typed (trtexec --onnx=model_fp16.onnx "
                         "--stronglyTyped: Q/DQ scales, FP16 elsewhere), 10.3-10.11 build model.onnx with trtexec "
                         "--onnx=model.onnx --int8 --fp16 (FP16 for the layers left unquantized). "
                         f"{TRT_CACHE} holds the same scales for the FP32 graph, which this export at --precision "
                         "fp32 writes (its model.onnx's SHA-256 is the cache's stamp; edgecnn.calibration.read_cache "
                         "checks it), for TensorRT 10's implicit quantization only: trtexec "
                         f"--onnx=FP32_ARTIFACT/model.onnx --int8 --calib={TRT_CACHE}. TensorRT 11 has no "
                         "calibrators, and the cache covers only the tensors that feed a QuantizeLinear, so it is no "
                         "DLA calibration")
        return [p.name for p in written]


def _tensorrt_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("tensorrt")
    except importlib.metadata.PackageNotFoundError:
        return "10.0.0"  # the TensorRT generation whose Q/DQ rules the artifact follows


# ---------------------------------------------------------------- the backend

def _unavailable() -> str | None:
    buildable, reason = tensorrt.engine_buildable_here()
    return None if buildable else reason


register(Backend(
    "tensorrt", "NVIDIA TensorRT, an engine built on the device's GPU", TensorRTTarget, (TensorRTSession,),
    tools=("tensorrt",), unavailable=_unavailable, quantizers=(ModelOptQuantizer,)))

register_deploy_target(DeployTarget(
    "jetson", "tensorrt", "onnxruntime", "setup_jetson.sh",
    ("numpy>=1.21", "pillow>=8", "onnxruntime>=1.16  # CPU fallback only; TensorRT comes with JetPack "
     "(python3-libnvinfer), never from pip on a Jetson"),
    "NVIDIA Jetson: TensorRT engine built on the device from the TensorRT-ready ONNX (ONNX Runtime on the CPU "
    "until it is built)"))

__all__ = ["MODELOPT_HINT", "ModelOptQuantizer", "TRT_CACHE", "TensorRTSession", "TensorRTTarget"]
