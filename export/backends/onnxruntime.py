"""ONNX Runtime: the `onnx` target (an ONNX graph), its CPU session, and INT8 by `onnxruntime.quantization`.

- target `onnx`: the ONNX graph itself (FP16: half weights and compute, float32 inputs and outputs unless asked).
- session `onnxruntime`: CPU execution provider, all graph optimisations, intra-op threads.
- quantizer: `quant_pre_process` then `quantize_static`, QDQ, U8 activations, S8 per-channel weights, full range
  (the fast static flow on x86 and ARM CPUs); calibrators MinMax, Entropy, Percentile. Ops with no INT8 kernel
  there (DeformConv) keep float compute but store their weights S8 per channel behind a DequantizeLinear
  (`weights_only_ops`; the manifest lists them as float nodes). quantize_static's own defaults (S8 activations,
  per-tensor) stay available as `library` but `auto` skips them: on ONNX Runtime's CPU EP that graph runs slower
  than FP32 (resnet18_fmnist, batch 1, 2 threads: 1.61 ms against 0.52 ms FP32 and 0.37 ms U8S8). With `max_drop`
  the most sensitive nodes (ranked by ONNX Runtime's QDQ debugger, lowest SQNR first) go back to float through
  `nodes_to_exclude` until the validation drop fits.
"""
from __future__ import annotations

import functools
import itertools
import json
import statistics
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from edgecnn.export.backends import Backend, needs, register
from edgecnn.export.deploy import DeployTarget, register_deploy_target
from edgecnn.export.early_exit_graph import compose_onnx
from edgecnn.export.profile import NodeTime, ProfiledRun
from edgecnn.export.quantizers import WEIGHTS_ONLY_OPS, Quantizer, onnx_nodes_after, register_quantizer
from edgecnn.export.runtime import (PRECISION_NAMES, ModelSpec, Session, load_error, register_backend,
                                    summarise_precisions)
from edgecnn.export.targets import ONNX_FILE, Target, TargetOutput, register_target
from edgecnn.quiet import silenced

if TYPE_CHECKING:  # the INT8 machinery (onnxruntime.quantization, edgecnn.calibration) loads when a quantizer runs
    from edgecnn.calibration import CalibrationData, OnnxRuntimeFeed
    from edgecnn.export.passes import ExportContext
    from edgecnn.export.quantize import GraphInput


# ---------------------------------------------------------------- the target

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


# ---------------------------------------------------------------- the session

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
            found[PRECISION_NAMES.get(types[node.input[1]], types[node.input[1]])] += 1
    return summarise_precisions(found, fallback)


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
    suffixes = {".onnx": "onnx"}
    shares_threads = False  # each InferenceSession owns an intra-op pool whose workers spin after a run

    def __init__(self, model: ModelSpec, threads: int | None = None, **common: Any) -> None:
        super().__init__(model, **common)
        self.threads = threads
        try:
            self._session = self._inference_session()
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise load_error(self, e) from e
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
        return onnxruntime_compute_precision(self.model_path, self.precision, self.threads)

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {**super().info(), "version": ort.__version__, "provider": "CPUExecutionProvider",
                "intra_op_threads": self.threads or "default", "graph_optimization": "all"}

    def close(self) -> None:
        self._session = None
        super().close()


# ---------------------------------------------------------------- INT8

# TensorRT's EntropyCalibration2 histogram, for ONNX Runtime's EntropyCalibrater (see _entropy_ranges).
ENTROPY_HISTOGRAM = {"num_bins": 2048, "num_quantized_bins": 128}


@functools.lru_cache(maxsize=None)
def _weights_only_qdq() -> type:
    """The QDQ operator that quantizes only the weight (input 1, S8 per output channel): a DequantizeLinear feeds
    the float op. Made on first use, so importing this module does not import onnxruntime.quantization."""
    from onnxruntime.quantization.operators.qdq_base_operator import QDQOperatorBase

    class _WeightsOnlyQDQ(QDQOperatorBase):
        def quantize(self) -> None:
            self.quantizer.quantize_weight_tensor_per_channel(self.node.input[1], 0)

    return _WeightsOnlyQDQ


@contextmanager
def weights_only_ops() -> Iterator[None]:
    """WEIGHTS_ONLY_OPS in quantize_static's op registry for the duration (its default op list is read from
    there), so edgecnn's flows store those weights in INT8 while a plain quantize_static call stays as it is."""
    from onnxruntime.quantization.registry import QDQRegistry

    added = [op for op in WEIGHTS_ONLY_OPS if op not in QDQRegistry]
    QDQRegistry.update(dict.fromkeys(added, _weights_only_qdq()))
    try:
        yield
    finally:
        for op in added:
            del QDQRegistry[op]


@register_quantizer
class OnnxRuntimeQuantizer(Quantizer):
    name = "onnxruntime.quantization"
    target = "onnx"
    tool = "onnxruntime.quantization"
    calibrators = {"minmax": "CalibrationMethod.MinMax",
                   "entropy": "CalibrationMethod.Entropy (2048-bin histogram, 128-bin window, as TensorRT's)",
                   "percentile": "CalibrationMethod.Percentile (99.999)",
                   "library": "quantize_static defaults (CalibrationMethod.MinMax, S8S8 per-tensor, "
                              "no quant_pre_process)"}
    auto_skips = {"library": "S8 activations per-tensor run slower than FP32 on ONNX Runtime's CPU EP (resnet18_fmnist "
                             "batch 1: 1.61 ms, FP32 0.52 ms, U8S8 per-channel 0.37 ms)"}
    max_drop_by = "edgecnn: most sensitive nodes back to float (nodes_to_exclude)"
    ranked_by = "ONNX Runtime QDQ debugger SQNR"
    scheme = "QDQ; U8 asymmetric activations; S8 symmetric per-channel weights, full range"
    library_scheme = "QDQ; S8 activations, S8 per-tensor weights, full range (quantize_static's defaults)"
    model_format = "onnx"
    scored_on = "onnxruntime"

    @staticmethod
    def _preprocessed_path(fp32: Path) -> Path:
        return fp32.with_name(fp32.stem + ".pre.onnx")

    def _preprocessed(self, fp32: Path) -> Path:
        """`quant_pre_process` (shape inference + graph optimisation) once per FP32 model."""
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = self._preprocessed_path(fp32)
        if not pre.exists():
            quant_pre_process(str(fp32), str(pre))
        return pre

    @property
    def methods(self) -> dict[str, Any]:
        """edgecnn's calibrator → onnxruntime.quantization's CalibrationMethod (imported when asked)."""
        from onnxruntime.quantization import CalibrationMethod

        return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile}

    def _entropy_ranges(self, pre: Path, feed: OnnxRuntimeFeed) -> Path:
        """ONNX Runtime's EntropyCalibrater with TensorRT's histogram (2048 bins searched for the best 128-bin
        window), saved where `quantize_static(calibration_cache_path=...)` reads ranges from. Through
        quantize_static alone its histogram is 128 bins for a 128-bin window: a search of one candidate, the
        full range, which is MinMax (measured: identical scales on every tensor)."""
        from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

        ranges = pre.with_name(pre.stem + ".entropy-ranges.json")
        if not ranges.exists():  # one FP32 model, one calibration set: the ranges hold for every call
            calibrator = create_calibrator(pre, augmented_model_path=str(pre.with_name("entropy.aug.onnx")),
                                           calibrate_method=CalibrationMethod.Entropy, extra_options=ENTROPY_HISTOGRAM)
            calibrator.collect_data(feed)
            save_tensors_data(calibrator.compute_data(), ranges)
            feed.rewind()
        return ranges

    def quantize(self, graph: GraphInput, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                 exclude: list[str], **library_options: Any) -> None:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        from edgecnn.calibration import OnnxRuntimeFeed, canonical_calibrator

        calibrator = canonical_calibrator(calibrator)  # a record made before the rename says "default"
        feed = OnnxRuntimeFeed(data.calibration, graph.name, graph.feed_batch)
        with silenced("", stdout=True):
            if calibrator == "library":  # exactly what a user calling quantize_static alone gets
                quantize_static(str(fp32), str(out), feed, nodes_to_exclude=exclude or None, **library_options)
                return
            if calibrator == "entropy":
                library_options["calibration_cache_path"] = str(self._entropy_ranges(self._preprocessed(fp32), feed))
            with weights_only_ops():
                quantize_static(str(self._preprocessed(fp32)), str(out), feed,
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=self.methods[calibrator], nodes_to_exclude=exclude or None,
                                **library_options)

    def sensitivity(self, graph: GraphInput, fp32: Path, data: CalibrationData) -> list[str]:
        """Nodes whose quantized inputs lose the most (lowest SQNR of activation or weight), ONNX Runtime's QDQ debugger."""
        import onnx
        from onnxruntime.quantization import qdq_loss_debug as dbg

        from edgecnn.calibration import OnnxRuntimeFeed
        from edgecnn.export.quantize import SENSITIVITY_SAMPLES

        quantized = fp32.with_name("sensitivity.qdq.onnx")
        self.quantize(graph, fp32, quantized, "minmax", data, [], extra_options={"DedicatedQDQPair": True})
        subset = data.calibration.inputs[:SENSITIVITY_SAMPLES]
        activations = {}
        for name, model in (("float", self._preprocessed(fp32)), ("qdq", quantized)):
            augmented = fp32.with_name(f"sensitivity.{name}.aug.onnx")
            dbg.modify_model_output_intermediate_tensors(str(model), str(augmented))
            activations[name] = dbg.collect_activations(str(augmented),
                                                        OnnxRuntimeFeed(subset, graph.name, graph.feed_batch))
        errors = dbg.compute_activation_error(dbg.create_activation_matching(activations["qdq"], activations["float"]))
        weights = dbg.compute_weight_error(dbg.create_weight_matching(str(self._preprocessed(fp32)), str(quantized)))
        graph = onnx.load(str(self._preprocessed(fp32)), load_external_data=False).graph
        scores = {}
        for node in graph.node:
            sqnr = [errors[i]["qdq_err"] for i in node.input if i in errors]
            sqnr += [weights[i] for i in node.input if i in weights]
            if sqnr and node.name:
                scores[node.name] = min(sqnr)
        return sorted(scores, key=scores.get)

    def nodes_after(self, model: Path, output: str) -> list[str]:
        """In the graph as given and as `quant_pre_process` leaves it (which the U8S8 flow quantizes)."""
        names = onnx_nodes_after(model, output)
        return names + [n for n in onnx_nodes_after(self._preprocessed(model), output) if n not in names]

    def compact(self, model: Path, fp32: Path) -> None:
        """Rename what quantize_static added (`…_DequantizeLinear_Output`, `…_quantized_scale`, …; 15 % of a
        small graph's file) to short ids and drop the shape annotations; names the FP32 graph has, and every
        compute node's, stay."""
        import onnx

        kept = {name for source in (fp32, self._preprocessed_path(fp32)) if source.exists()  # as quantized
                for node in onnx.load(str(source), load_external_data=False).graph.node
                for name in (*node.input, *node.output)}
        quantized = onnx.load(str(model))
        graph = quantized.graph
        # Shape annotations: runtimes infer shapes themselves (densenet121_fmnist: 13 KB, 2 % of the INT8 file);
        # onnx.shape_inference.infer_shapes puts them back for a viewer.
        del graph.value_info[:]
        kept |= {v.name for v in (*graph.input, *graph.output)} | {""}
        ids = (f"q{i}" for i in itertools.count() if f"q{i}" not in kept)
        short: dict[str, str] = {}

        def rename(name: str) -> str:
            if name in kept:
                return name
            if name not in short:
                short[name] = next(ids)
            return short[name]

        for tensor in graph.initializer:
            tensor.name = rename(tensor.name)
        for node in graph.node:
            node.input[:] = [rename(i) for i in node.input]
            node.output[:] = [rename(o) for o in node.output]
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                node.name = rename(node.name)
        onnx.save(quantized, str(model))


# ---------------------------------------------------------------- the backend

class OnnxRuntimeProfiledRun(ProfiledRun):
    """A model on ONNX Runtime as OnnxRuntimeSession runs it, with session profiling when `trace` is a folder: one
    `<node>_kernel_time` event per node and run, in whole µs (export/profile.py reads it)."""

    def __init__(self, path: Path, precision: str, threads: int | None, trace: Path | None) -> None:
        import onnxruntime as ort

        options = onnxruntime_options(threads)
        if trace is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(trace / f"ort-{path.stem}")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self._input: batch})

    def node_times(self) -> list[NodeTime]:
        trace = self._session.end_profiling()
        kinds: dict[str, str] = {}
        times: dict[str, list[float]] = {}
        with open(trace, encoding="utf-8") as f:  # written by onnxruntime just now, not user input
            for event in json.load(f):
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    name = event["name"].removesuffix("_kernel_time")
                    times.setdefault(name, []).append(float(event["dur"]))
                    kinds[name] = event.get("args", {}).get("op_name", "?")
        Path(trace).unlink(missing_ok=True)
        return [NodeTime(n, kinds[n], kinds[n], statistics.median(t) + COUNTER_TRUNCATION_US) for n, t in times.items()]


# ONNX Runtime's profiler truncates each node's duration per run to whole µs: half a µs lost on average.
COUNTER_TRUNCATION_US = 0.5

register(Backend(
    "onnxruntime", "ONNX Runtime, CPU execution provider", OnnxTarget, (OnnxRuntimeSession,), tools=("onnxruntime",),
    unavailable=needs("onnxruntime", "pip install onnxruntime"), quantizers=(OnnxRuntimeQuantizer,),
    early_exit_graph=("onnx", compose_onnx, ONNX_FILE), profiler=OnnxRuntimeProfiledRun,
    counter_truncation_us=COUNTER_TRUNCATION_US))

register_deploy_target(DeployTarget(
    "onnxruntime", "onnxruntime", "onnxruntime", "setup_cpu.sh",
    ("numpy>=1.21", "pillow>=8", "onnxruntime>=1.16"), "any CPU (x86-64, ARM): ONNX on ONNX Runtime's CPU provider",
    module="onnxruntime", distribution="onnxruntime",
    cpu_flags=("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp", "fphp")))

__all__ = ["OnnxRuntimeQuantizer", "OnnxRuntimeSession", "OnnxTarget", "onnx_compute_precision",
           "onnxruntime_compute_precision", "onnxruntime_options", "weights_only_ops"]
