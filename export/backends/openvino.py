"""OpenVINO: the `openvino` target (IR converted from the ONNX graph), its CPU session, and INT8 by NNCF.

- target `openvino`: OpenVINO IR (.xml/.bin) from `openvino.convert_model`; FP16 compresses weights, BF16 is the
  FP32 IR run with INFERENCE_PRECISION_HINT=bf16.
- session `openvino`: the CPU plugin, LATENCY or THROUGHPUT hint, threads; FP32 artifacts run in f32 even on CPUs
  whose default is bf16, bf16 artifacts in bf16 where the CPU has it.
- quantizer: NNCF `nncf.quantize` on the OpenVINO model (`quantize_with_accuracy_control` with `max_drop`);
  calibrators are `library` (nncf.quantize's own defaults, what `auto` keeps unless another is significantly
  better) and NNCF range estimators (MINMAX, MEAN_QUANTILE, HISTOGRAM, the MSE-optimal one).
"""
from __future__ import annotations

import io
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecnn.errors import UserError
from edgecnn.export.backends import Backend, needs, register
from edgecnn.export.deploy import DeployTarget, register_deploy_target
from edgecnn.export.early_exit_graph import compose_openvino
from edgecnn.export.graph_io import ExportError
from edgecnn.export.profile import ModelRun, NodeTime, ProfiledRun, graph_layers, layer_sqnr
from edgecnn.export.quantizers import Quantizer, register_quantizer
from edgecnn.export.runtime import (PRECISION_NAMES, ModelSpec, Session, load_error, register_backend,
                                    summarise_precisions)
from edgecnn.export.targets import ONNX_FILE, Target, TargetOutput, register_target
from edgecnn.quiet import silenced

if TYPE_CHECKING:  # the INT8 machinery (nncf, edgecnn.calibration) loads when the quantizer runs
    from edgecnn.calibration import CalibrationData
    from edgecnn.export.passes import ExportContext
    from edgecnn.export.quantize import GraphInput


# ---------------------------------------------------------------- the target

@register_target
class OpenVinoTarget(Target):
    name = "openvino"
    description = ("OpenVINO IR (.xml/.bin) converted by OpenVINO from the ONNX graph; FP16 compresses weights, "
                   "BF16 is the FP32 IR run with INFERENCE_PRECISION_HINT=bf16")
    precisions = ("fp32", "fp16", "int8", "bf16")

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


# ---------------------------------------------------------------- the session

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
    suffixes = {".xml": "openvino", ".onnx": "onnx"}

    def __init__(self, model: ModelSpec, threads: int | None = None, performance_hint: str = "LATENCY",
                 inference_precision: str | None = None, **common: Any) -> None:
        super().__init__(model, **common)
        import openvino as ov

        hint = str(performance_hint).upper()
        if hint not in OPENVINO_HINTS:
            raise UserError(f"unknown OpenVINO performance hint {performance_hint!r}; use LATENCY or THROUGHPUT")
        core = ov.Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.inference_precision = (self._default_precision(capabilities, self.precision)
                                    if inference_precision is None
                                    else self._requested_precision(capabilities, inference_precision))
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": self.inference_precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.threads, self.performance_hint = threads, hint
        try:
            self._compiled = core.compile_model(str(self.model_path), "CPU", config)
        except Exception as e:  # openvino raises RuntimeError subclasses for bad files
            raise load_error(self, e) from e
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
                found[PRECISION_NAMES.get(element, element)] += 1
        return summarise_precisions(found, PRECISION_NAMES[self._compiled_hint()])

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


# ---------------------------------------------------------------- INT8 (NNCF)

@register_quantizer
class NncfQuantizer(Quantizer):
    name = "nncf"
    target = "openvino"
    tool = "nncf"
    calibrators = {"library": "nncf.quantize defaults (RangeEstimatorParametersSet.MEAN_MINMAX activations)",
                   "minmax": "RangeEstimatorParametersSet.MINMAX",
                   "percentile": "RangeEstimatorParametersSet.MEAN_QUANTILE",
                   "mse": "RangeEstimatorParametersSet.HISTOGRAM (minimises the quantization error)"}
    model_format = "openvino"
    scored_on = "openvino"
    max_drop_by = "nncf.quantize_with_accuracy_control (--fallback cost or --placement fast: edgecnn's search)"
    ranked_by = "SQNR of each layer's output against FP32, nncf.quantize defaults"
    scheme = "OpenVINO IR with FakeQuantize, NNCF PERFORMANCE preset (symmetric), S8 per-channel weights"

    def available(self) -> str | None:
        try:
            import nncf  # noqa: F401
        except ImportError:
            return "pip install 'edgecnn[openvino]'"
        return None

    def files(self, model_file: str) -> list[str]:
        return [model_file, str(Path(model_file).with_suffix(".bin"))]

    def _parameters(self, calibrator: str, data: CalibrationData, batch: int | None) -> dict[str, Any]:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        from edgecnn.calibration import as_nncf_dataset, batches, canonical_calibrator

        calibrator = canonical_calibrator(calibrator)  # a record made before the rename says "default"
        calibration = as_nncf_dataset(data.calibration, batch)
        params = {"calibration_dataset": calibration, "subset_size": len(batches(data.calibration.inputs, batch))}
        if calibrator == "library":  # exactly what a user calling nncf.quantize alone gets
            return params
        estimator = getattr(RangeEstimatorParametersSet, self.calibrators[calibrator].split(".")[1].split()[0])
        return {**params, "preset": nncf.QuantizationPreset.PERFORMANCE,
                "advanced_parameters": AdvancedQuantizationParameters(activations_range_estimator_params=estimator)}

    def quantize(self, graph: GraphInput, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                 exclude: list[str]) -> None:
        import nncf
        import openvino as ov

        params = self._parameters(calibrator, data, graph.feed_batch)
        ignored = nncf.IgnoredScope(names=exclude) if exclude else None
        with silenced("nncf", stdout=True):  # its progress bars (rich, on stdout): edgecnn shows its own
            quantized = nncf.quantize(ov.Core().read_model(str(fp32)), params.pop("calibration_dataset"),
                                      ignored_scope=ignored, **params)
        ov.save_model(quantized, str(out), compress_to_fp16=False)

    def sensitivity(self, graph: GraphInput, fp32: Path, data: CalibrationData) -> list[str]:
        """Graph nodes, those of the layer whose output strays furthest from FP32 (lowest SQNR) first."""
        from edgecnn.export.quantize import SENSITIVITY_SAMPLES

        quantized = fp32.with_name("sensitivity.xml")
        self.quantize(graph, fp32, quantized, "library", data, [])
        layers = graph_layers(fp32)
        sqnr = layer_sqnr(ModelRun(fp32, "openvino"), ModelRun(quantized, "openvino", "int8"), layers,
                          graph_layers(fp32, quantized), data.calibration.inputs[:SENSITIVITY_SAMPLES],
                          graph.feed_batch)
        ranked = sorted(sqnr, key=lambda layer: math.inf if sqnr[layer] is None else sqnr[layer])
        return [node for layer in ranked for node in layers.nodes[layer]]

    def accuracy_control(self, graph: GraphInput, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                         fp32_accuracy: float, max_drop: float) -> dict[str, Any]:
        import nncf
        import openvino as ov

        from edgecnn.calibration import batches

        batch = graph.feed_batch
        params = self._parameters(calibrator, data, batch)
        if "advanced_parameters" in params:
            params["advanced_quantization_parameters"] = params.pop("advanced_parameters")  # this API's name for it
        val = data.validation
        items = list(zip(batches(val.inputs, batch), _label_batches(val.labels, batch)))

        def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
            """Accuracy (%) and, as NNCF ranks by them, one value per dataset item (a batch)."""
            correct, per_item = 0, []
            for x, y in items:
                hits = (np.asarray(compiled(x)[0]).argmax(1)[:len(y)] == y)
                correct += int(hits.sum())
                per_item.append(float(hits.mean()))
            return 100.0 * correct / len(val.labels), per_item

        with silenced("nncf", stdout=True):
            quantized = nncf.quantize_with_accuracy_control(
                ov.Core().read_model(str(fp32)), params.pop("calibration_dataset"),
                nncf.Dataset(items, lambda item: item[0]), validate, max_drop=max_drop,
                drop_type=nncf.DropType.ABSOLUTE, **params)
        ov.save_model(quantized, str(out), compress_to_fp16=False)
        return {"method": "nncf.quantize_with_accuracy_control", "drop_type": "absolute"}

    def nodes_after(self, model: Path, output: str) -> list[str]:
        import openvino as ov

        ov_model = ov.Core().read_model(str(model))
        producer = next(o for o in ov_model.outputs if output in o.get_names()).get_node()
        if producer.get_type_name() == "Result":  # the model's output port may be the Result's own
            producer = producer.input_value(0).get_node()
        frontier, names = [producer], []
        while frontier:
            for port in frontier.pop().outputs():
                for target in port.get_target_inputs():
                    node = target.get_node()
                    if node.get_type_name() != "Result" and node.get_friendly_name() not in names:
                        names.append(node.get_friendly_name())
                        frontier.append(node)
        return names

    def float_nodes(self, model: Path) -> list[str]:
        import openvino as ov

        names = []
        for op in ov.Core().read_model(str(model)).get_ordered_ops():
            if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul"):
                producer = op.input_value(0).get_node()
                if producer.get_type_name() != "FakeQuantize":
                    names.append(op.get_friendly_name())
        return names


def _label_batches(labels: np.ndarray, batch: int) -> list[np.ndarray]:
    return [labels[i:i + batch] for i in range(0, len(labels), batch)]


# ---------------------------------------------------------------- the backend

class OpenVinoProfiledRun(ProfiledRun):
    """A model on OpenVINO's CPU plugin as OpenVinoSession compiles and runs it, with performance counters
    (`PERF_COUNT`: executed kernel and its precision per node) when `trace` is given."""

    def __init__(self, path: Path, precision: str, threads: int | None, trace: Path | None) -> None:
        import openvino as ov

        core = ov.Core()
        hint = OpenVinoSession._default_precision(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"), precision)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint,
                                  **({"INFERENCE_NUM_THREADS": threads} if threads else {}),
                                  **({"PERF_COUNT": True} if trace is not None else {})}
        self._profiled = trace is not None
        self._compiled = core.compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._times: dict[str, list[float]] = {}
        self._kinds: dict[str, tuple[str, str]] = {}

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        self._request.infer({0: batch}, share_inputs=True, share_outputs=True)  # as OpenVinoSession runs it
        if self._profiled:
            for info in self._request.get_profiling_info():
                if str(info.status).endswith("EXECUTED"):
                    self._times.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1e6)
                    self._kinds[info.node_name] = (info.node_type, info.exec_type)
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self._compiled.outputs))]

    def node_times(self) -> list[NodeTime]:
        fused = {op.get_friendly_name(): op.get_rt_info()["originalLayersNames"].astype(str)
                 for op in self._compiled.get_runtime_model().get_ordered_ops()
                 if "originalLayersNames" in op.get_rt_info()}
        return [NodeTime(n, self._kinds[n][0], self._kinds[n][1], statistics.median(t) + COUNTER_TRUNCATION_US,
                         [f for f in fused.get(n, "").split(",") if f]) for n, t in self._times.items()]


# The CPU plugin truncates each node's time per inference to whole µs, then the integer average it reports
# (intel_cpu/src/perf_count.h): 0.5 µs lost twice on average.
COUNTER_TRUNCATION_US = 1.0

register(Backend(
    "openvino", "OpenVINO, CPU plugin", OpenVinoTarget, (OpenVinoSession,), tools=("openvino",),
    unavailable=needs("openvino", "pip install 'edgecnn[openvino]'"), quantizers=(NncfQuantizer,),
    early_exit_graph=("openvino", compose_openvino, "model.xml"), profiler=OpenVinoProfiledRun,
    counter_truncation_us=COUNTER_TRUNCATION_US))

register_deploy_target(DeployTarget(
    "openvino", "openvino", "openvino", "setup_cpu.sh",
    ("numpy>=1.21", "pillow>=8", "openvino>=2024.4"), "Intel CPUs: OpenVINO IR on the OpenVINO CPU plugin",
    module="openvino", distribution="openvino",
    cpu_flags=("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"),
    required_flags=(("bf16", "avx512_bf16"),)))

__all__ = ["NncfQuantizer", "OPENVINO_HINTS", "OPENVINO_PRECISIONS", "OpenVinoSession", "OpenVinoTarget"]
