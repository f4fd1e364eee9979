"""Export targets, registered in one place: each writes its model files into the staging directory.

A target declares what its runtimes can run (`supports_deform_conv`, ops it rejects), which backend
loads its artifacts by default, and which backends check parity at export time. Adding a target is
one class with `@register_target`; nothing else branches on target names.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgecnn.errors import UserError
from edgecnn.export import tensorrt
from edgecnn.export.onnx_graph import ExportError, HalfPrecision, export_onnx
from edgecnn.export.onnx_source import OnnxModel
from edgecnn.registries import Registry

if TYPE_CHECKING:
    from edgecnn.export.pipeline import ExportContext

ONNX_FILE = "model.onnx"
PRECISIONS = ("fp32", "fp16", "int8", "bf16")  # every target's, for the CLI


@dataclass
class TargetOutput:
    files: list[str]                      # every file the artifact holds besides the manifest
    model_files: dict[str, str]           # format → file, what runtime backends look up
    default_backend: str
    parity_backends: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    io_dtype: str = "float32"             # of the graph's input and output
    # backend → what its parity check runs when that is not simply the artifact at its precision
    parity_measures: dict[str, str] = field(default_factory=dict)


class Target:
    name: ClassVar[str]
    description: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    # Whether the target's runtime executes ONNX DeformConv; deformable layers read the target's name in
    # prepare_export and lower to GridSample + Conv where it does not.
    supports_deform_conv: ClassVar[bool] = False
    # Whether an FP16 artifact can take and return float16 (keep_io_types=False).
    half_io: ClassVar[bool] = False

    def write(self, ctx: ExportContext) -> TargetOutput:
        raise NotImplementedError

    def check_precision(self, precision: str) -> None:
        """Refuse, before any work, a precision this machine cannot run (bf16 without BF16 hardware)."""

    def check_ops(self, ops: dict[str, int], graph: Path | None = None) -> None:
        """Reject, with a specific message (naming the nodes when `graph`, the ONNX file, is given), ops the
        target's converter or runtime cannot take."""
        if "DeformConv" in ops and not self.supports_deform_conv:
            raise ExportError(f"the graph has {ops['DeformConv']} DeformConv node(s), which the {self.name} target "
                              "cannot run: the model's deformable layers must lower to GridSample + Conv in "
                              f"prepare_export({self.name!r})")

    def finish_int8(self, ctx: ExportContext, output: TargetOutput) -> None:
        """After the INT8 pass has quantized `output`'s model in `ctx.staging`: what the target builds from it."""

    def _write_onnx(self, ctx: ExportContext, name: str, half: bool) -> dict[str, Any]:
        if isinstance(ctx.module, OnnxModel):  # an ONNX source: its folded graph, not a torch export
            report = ctx.module.write(ctx.staging / name, ctx.batch, ctx.dynamic_batch, half, ctx.keep_io_types,
                                      ctx.input_size)
            self.check_ops(report["ops"], ctx.staging / name)
            return report
        module = HalfPrecision(ctx.module, ctx.keep_io_types) if half else ctx.module
        example = ctx.example.half() if half and not ctx.keep_io_types else ctx.example
        report = export_onnx(module, example, ctx.staging / name, opset=ctx.opset,
                             dynamic_batch=ctx.dynamic_batch, exporter=ctx.exporter, output_names=ctx.output_names)
        self.check_ops(report["ops"], ctx.staging / name)
        return report


TARGETS: Registry[Target] = Registry("target", instantiate=True)
register_target = TARGETS.register   # @register_target on a Target subclass files an instance under its name
get_target = TARGETS.lookup


@register_target
class OnnxTarget(Target):
    name = "onnx"
    description = "ONNX graph for ONNX Runtime (FP16: half weights and compute, float32 inputs and outputs)"
    supports_deform_conv = True
    half_io = True

    def write(self, ctx: ExportContext) -> TargetOutput:
        half = ctx.precision == "fp16"
        report = self._write_onnx(ctx, ONNX_FILE, half=half)
        return TargetOutput([ONNX_FILE], {"onnx": ONNX_FILE}, "onnxruntime", ("onnxruntime",), {"onnx": report},
                            io_dtype="float16" if half and not ctx.keep_io_types else "float32")


@register_target
class OpenVinoTarget(Target):
    name = "openvino"
    description = ("OpenVINO IR (.xml/.bin) converted by OpenVINO from the ONNX graph; FP16 compresses weights, "
                   "BF16 is the FP32 IR run with INFERENCE_PRECISION_HINT=bf16")
    precisions = PRECISIONS

    def check_precision(self, precision: str) -> None:
        if precision != "bf16":
            return
        import openvino as ov

        if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise UserError(f"bf16 needs a CPU with AVX-512 BF16 or AMX, and this one "
                            f"({ov.Core().get_property('CPU', 'FULL_DEVICE_NAME')}) has neither: OpenVINO would "
                            "run it in f32. Export fp32, fp16 or int8 here, or export bf16 on such a CPU")

    def write(self, ctx: ExportContext) -> TargetOutput:
        import openvino as ov

        intermediate = f".{ONNX_FILE}"
        report = self._write_onnx(ctx, intermediate, half=False)
        xml = "model.xml"
        try:
            # From bytes: given a path, OpenVINO's converter splits it at commas.
            converted = ov.convert_model(io.BytesIO((ctx.staging / intermediate).read_bytes()))
            ov.save_model(converted, str(ctx.staging / xml), compress_to_fp16=ctx.precision == "fp16")
        except Exception as e:  # openvino raises its own errors for graphs it cannot convert
            raise ExportError(f"OpenVINO's converter rejected the ONNX graph: {_openvino_reason(e)}"
                              f"{ctx.size_hint}") from e
        finally:
            (ctx.staging / intermediate).unlink(missing_ok=True)
        info = {"onnx": report, "converter": f"openvino.convert_model (ONNX front end) {ov.get_version()}",
                "compressed_to_fp16": ctx.precision == "fp16"}
        return TargetOutput([xml, "model.bin"], {"openvino": xml}, "openvino", ("openvino",), info)


def _openvino_reason(e: Exception) -> str:
    """The failing ops and the last specific reason from OpenVINO's multi-line conversion report."""
    lines = [line.strip(" -") for line in str(e).splitlines() if line.strip()]
    failed = next((line for line in lines if line.startswith("Conversion is failed for")), None)
    details = [line for line in lines if not line.startswith(("Check ", "FrontEnd API", "While validating",
                                                               "Model wasn't", "Summary", "Conversion is failed",
                                                               "[ONNX Frontend]", "Conv", "Failed operations"))]
    reason = details[-1] if details else (lines[0] if lines else type(e).__name__)
    return f"{failed}: {reason}" if failed else reason


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
