"""The INT8 pass of the export pipeline: the FP32 files the target wrote become INT8, by each runtime's own tool.

    export_registered("resnet18_fmnist", target="openvino", precision="int8", out="artifacts/r18-int8",
                      calibration=CalibrationOptions(calibrator="auto", samples=512, max_drop=0.5))

One quantizer per target, registered in one place (`QUANTIZERS`). Each names its calibrators; "default"
is the library's own defaults. `auto` tries them in order (`auto_candidates`) and keeps the first unless
another is significantly more accurate on the validation split; for NNCF the first is its default:

- onnx: ONNX Runtime `quant_pre_process` then `quantize_static`, QDQ, U8 activations, S8 per-channel
  weights, full range (the fast static flow on x86 and ARM CPUs); calibrators MinMax, Entropy, Percentile.
  Ops with no INT8 kernel there (DeformConv) keep float compute but store their weights S8 per channel
  behind a DequantizeLinear (`weights_only_ops`; the manifest lists them as float nodes).
  quantize_static's own defaults (S8 activations, per-tensor) stay available as `default` but `auto` skips
  them: on ONNX Runtime's CPU EP that graph runs slower than FP32 (resnet18_fmnist, batch 1, 2 threads:
  1.61 ms against 0.52 ms FP32 and 0.37 ms U8S8). With `max_drop`
  the most sensitive nodes (ranked by ONNX Runtime's QDQ debugger, lowest SQNR first) go back to float
  through `nodes_to_exclude` until the validation drop fits.
- openvino: NNCF `nncf.quantize` on the OpenVINO model (`quantize_with_accuracy_control` with `max_drop`);
  calibrators are NNCF range estimators (MINMAX, MEAN_QUANTILE, HISTOGRAM, the MSE-optimal one).
- tensorrt: NVIDIA ModelOpt `modelopt.onnx.quantization.quantize` (S8 symmetric, per-channel, explicit
  Q/DQ placed for TensorRT), plus a TensorRT calibration cache stamped with the FP32 model's hash.

Samples, the calibrator choice, the float fallback search and the provenance record are
`edgecnn.calibration`'s; this module runs the libraries and scores candidates with the runtime sessions.
"""
from __future__ import annotations

import functools
import itertools
import math
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import numpy as np
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.operators.qdq_base_operator import QDQOperatorBase

from edgecnn.calibration import (CalibrationData, CalibrationOptions, OnnxRuntimeFeed, accuracy_of, as_modelopt_data,
                                 as_nncf_dataset, batches, choose_calibrator, correct, fallback_to_float,
                                 measurable_drop, prepare_calibration, resolution_record, write_cache)
from edgecnn.errors import UserError
from edgecnn.export import parity
from edgecnn.export.manifest import sha256_file
from edgecnn.export.placement import Trial, cheapest_fallback, place_for_speed
from edgecnn.export.profile import PROFILED_TARGETS, ModelRun, graph_layers, layer_sqnr
from edgecnn.export.runtime import open_session
from edgecnn.quiet import silenced
from edgecnn.registries import Registry

if TYPE_CHECKING:
    from edgecnn.export.pipeline import ExportContext

FP32_DIR = ".fp32"           # inside the staging directory; removed before the artifact is renamed into place
# TensorRT's EntropyCalibration2 histogram, for ONNX Runtime's EntropyCalibrater (see _entropy_ranges).
ENTROPY_HISTOGRAM = {"num_bins": 2048, "num_quantized_bins": 128}
SENSITIVITY_SAMPLES = 64     # images ONNX Runtime's QDQ debugger compares float and INT8 activations on
TRT_CACHE = "calibration.cache"
SCORE_CHUNK = 64
CALIBRATION_CHUNK = 16
MODELOPT_HINT = ("pip install 'edgecnn[tensorrt-int8]' (NVIDIA ModelOpt without its CUDA extras: "
                 "nvidia-modelopt, onnx-graphsurgeon, onnxslim, polygraphy, pulp, omegaconf, pydantic, nvidia-ml-py)")


class Quantizer:
    """Turns the target's FP32 model files into INT8 ones in place; each calibrator maps to a library setting."""
    target: ClassVar[str]
    tool: ClassVar[str]
    calibrators: ClassVar[dict[str, str]]    # edgecnn's name → what the library calls it (for the manifest)
    model_format: ClassVar[str]              # the key of model_files this quantizer rewrites
    max_drop_by: ClassVar[str | None] = None  # how --max-drop is honoured; None: it is not
    ranked_by: ClassVar[str] = ""             # what `sensitivity` ranks nodes by, for the manifest
    scheme: ClassVar[str]                     # what the INT8 model is, for the manifest
    default_scheme: ClassVar[str | None] = None  # what the "default" calibrator's INT8 model is, where it differs

    def scheme_of(self, calibrator: str) -> str:
        return self.default_scheme if calibrator == "default" and self.default_scheme else self.scheme

    # calibrator → why `--calibrator auto` does not try it (it stays available by name)
    auto_skips: ClassVar[dict[str, str]] = {}

    def auto_candidates(self) -> list[str]:
        """What `--calibrator auto` tries, in order: the first is kept unless another is significantly better."""
        return [c for c in self.calibrators if c not in self.auto_skips]

    def available(self) -> str | None:
        """None when the quantizer's library imports, else what to install."""
        return None

    def quantize(self, ctx: ExportContext, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                 exclude: list[str]) -> None:
        raise NotImplementedError

    def files(self, ctx: ExportContext) -> list[str]:
        """The staging files the FP32 model consists of (the model file plus any weights file beside it)."""
        return [ctx.output.model_files[self.model_format]]

    def sensitivity(self, ctx: ExportContext, fp32: Path, data: CalibrationData) -> list[str]:
        """Quantized nodes, most sensitive first, for edgecnn's float fallback (quantizers with max_drop_by)."""
        raise NotImplementedError

    def accuracy_control(self, ctx: ExportContext, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                         fp32_accuracy: float, max_drop: float) -> dict[str, Any] | None:
        """Quantize within `max_drop` with the library's own accuracy control; None if edgecnn's fallback applies."""
        return None

    def float_nodes(self, model: Path) -> list[str]:
        """Compute nodes the quantized model still runs in float (for the manifest); here, of a Q/DQ ONNX graph,
        whichever quantizer placed them (ONNX Runtime's own choices, ModelOpt's GEMV and small-channel rules)."""
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        # Quantized compute reads both its activation and its weights through DequantizeLinear; a weights-only op
        # computes in float whatever it reads.
        return [n.name for n in graph.node if n.op_type in WEIGHTS_ONLY_OPS or (
                n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")
                and not all(i in dequantized for i in n.input[:2]))]

    def nodes_after(self, model: Path, output: str) -> list[str]:
        """The names of the nodes that compute from the graph output `output` onward (what a quantizer's
        `exclude` takes), e.g. an early-exit stage's in-graph entropy of its logits, which stays float."""
        return _onnx_nodes_after(model, output)

    def compact(self, model: Path, fp32: Path) -> None:
        """Last rewrite of the chosen INT8 model file that leaves its numbers alone (shorter names)."""

    def finish(self, ctx: ExportContext, fp32: Path, calibrator: str) -> list[str]:
        """Write what the target's INT8 artifact carries besides the model (a TensorRT cache); returns the files."""
        return []


QUANTIZERS: Registry[Quantizer] = Registry("quantizer", key="target", instantiate=True,
                                           unknown="the {name} target has no INT8 quantizer; INT8 exports to {choices}")
register_quantizer = QUANTIZERS.register   # @register_quantizer on a Quantizer subclass files an instance by target
get_quantizer = QUANTIZERS.lookup


def check_int8(target: str, options: CalibrationOptions) -> None:
    """Refuse, before any export work, a target or calibrator the quantizer cannot honour."""
    quantizer = get_quantizer(target)
    if options.calibrator != "auto" and options.calibrator not in quantizer.calibrators:
        raise UserError(f"calibrator {options.calibrator!r} does not exist for the {target} target "
                        f"({quantizer.tool}); choose auto or {', '.join(quantizer.calibrators)}")
    if options.max_drop is not None and quantizer.max_drop_by is None:
        raise UserError(f"--max-drop is not supported for the {target} target ({quantizer.tool} has no accuracy "
                        "control here); drop --max-drop, or bound the drop on the onnx or openvino target")
    if options.measures_latency and target not in PROFILED_TARGETS:
        raise UserError(f"--placement fast and --fallback cost time each layer with the runtime's own profiler, and "
                        f"the {target} target's runtime has none edgecnn can run here (TensorRT's needs the engine, "
                        "built on the device): drop them, or use the onnx or openvino target")
    missing = quantizer.available()
    if missing:
        raise UserError(f"INT8 for the {target} target needs {quantizer.tool}, which is not installed: {missing}")


def _onnx_nodes_after(model: Path, output: str) -> list[str]:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    reached, names = {output}, []
    for node in graph.node:  # ONNX nodes are stored in topological order
        if any(i in reached for i in node.input):
            reached.update(node.output)
            names.append(node.name)
    return names


def _copy_model_files(ctx: ExportContext, quantizer: Quantizer, directory: Path, back: bool = False) -> None:
    """The staging model's files (`quantizer.files`) into `directory`, or with `back` from it into staging."""
    for name in quantizer.files(ctx):
        staged, aside = ctx.staging / name, directory / Path(name).name
        shutil.copy2(*((aside, staged) if back else (staged, aside)))


@contextmanager
def float_copy(ctx: ExportContext, quantizer: Quantizer) -> Iterator[tuple[Path, Path]]:
    """(FP32 model, model file to overwrite): the staging model's files copied aside for the quantizer to read
    while it writes the INT8 model in their place; the copy is removed afterwards."""
    files = quantizer.files(ctx)
    fp32_dir = ctx.staging / FP32_DIR
    fp32_dir.mkdir()
    try:
        _copy_model_files(ctx, quantizer, fp32_dir)
        yield fp32_dir / Path(files[0]).name, ctx.staging / files[0]
    finally:
        shutil.rmtree(fp32_dir, ignore_errors=True)


def _trial(ctx: ExportContext, quantizer: Quantizer, fp32: Path, model: Path, data: CalibrationData,
           options: CalibrationOptions, quantize_and_score: Callable[[list[str]], float]) -> Trial:
    """The float-placement searches' view of this export: quantize into the staging model, keep copies of it in
    float_copy's directory, time models on the target's runtime (calibration images, the graph's batch)."""
    from edgecnn.export.profile import profile_models

    def keep(name: str) -> Path:
        (fp32.parent / name).mkdir(exist_ok=True)
        _copy_model_files(ctx, quantizer, fp32.parent / name)
        return fp32.parent / name / model.name

    batch = data.calibration.inputs[:1 if ctx.dynamic_batch else ctx.batch]
    backend = ctx.output.default_backend
    return Trial(fp32, quantize_and_score, keep,
                 lambda path: _copy_model_files(ctx, quantizer, path.parent, back=True),
                 lambda paths: profile_models([ModelRun(p, backend, "fp32" if p == fp32 else "int8") for p in paths],
                                              batch, options.profile_threads))


# ---------------------------------------------------------------- ONNX Runtime

def _feed_batch(ctx: ExportContext) -> int:
    """The batch calibration feeds: the graph's static one, or CALIBRATION_CHUNK for a dynamic batch axis."""
    return CALIBRATION_CHUNK if ctx.dynamic_batch else ctx.batch


# Ops ONNX Runtime runs only in float, whose weights edgecnn still stores in INT8 (deform_resnet_fmnist: the
# DeformConv weights are half the model; the file is 62 % of FP32 without this).
WEIGHTS_ONLY_OPS = ("DeformConv",)


class _WeightsOnlyQDQ(QDQOperatorBase):
    """Quantize only the weight (input 1, S8 per output channel): a DequantizeLinear feeds the float op."""

    def quantize(self) -> None:
        self.quantizer.quantize_weight_tensor_per_channel(self.node.input[1], 0)


@contextmanager
def weights_only_ops() -> Iterator[None]:
    """WEIGHTS_ONLY_OPS in quantize_static's op registry for the duration (its default op list is read from
    there), so edgecnn's flows store those weights in INT8 while a plain quantize_static call stays as it is."""
    from onnxruntime.quantization.registry import QDQRegistry

    added = [op for op in WEIGHTS_ONLY_OPS if op not in QDQRegistry]
    QDQRegistry.update(dict.fromkeys(added, _WeightsOnlyQDQ))
    try:
        yield
    finally:
        for op in added:
            del QDQRegistry[op]


@register_quantizer
class OnnxRuntimeQuantizer(Quantizer):
    target = "onnx"
    tool = "onnxruntime.quantization"
    calibrators = {"minmax": "CalibrationMethod.MinMax",
                   "entropy": "CalibrationMethod.Entropy (2048-bin histogram, 128-bin window, as TensorRT's)",
                   "percentile": "CalibrationMethod.Percentile (99.999)",
                   "default": "quantize_static defaults (CalibrationMethod.MinMax, S8S8 per-tensor, "
                              "no quant_pre_process)"}
    auto_skips = {"default": "S8 activations per-tensor run slower than FP32 on ONNX Runtime's CPU EP (resnet18_fmnist "
                             "batch 1: 1.61 ms, FP32 0.52 ms, U8S8 per-channel 0.37 ms)"}
    max_drop_by = "edgecnn: most sensitive nodes back to float (nodes_to_exclude)"
    ranked_by = "ONNX Runtime QDQ debugger SQNR"
    scheme = "QDQ; U8 asymmetric activations; S8 symmetric per-channel weights, full range"
    default_scheme = "QDQ; S8 activations, S8 per-tensor weights, full range (quantize_static's defaults)"
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    model_format = "onnx"

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

    def _entropy_ranges(self, pre: Path, feed: OnnxRuntimeFeed) -> Path:
        """ONNX Runtime's EntropyCalibrater with TensorRT's histogram (2048 bins searched for the best 128-bin
        window), saved where `quantize_static(calibration_cache_path=...)` reads ranges from. Through
        quantize_static alone its histogram is 128 bins for a 128-bin window: a search of one candidate, the
        full range, which is MinMax (measured: identical scales on every tensor)."""
        from onnxruntime.quantization import create_calibrator, save_tensors_data

        ranges = pre.with_name(pre.stem + ".entropy-ranges.json")
        if not ranges.exists():  # one FP32 model, one calibration set: the ranges hold for every call
            calibrator = create_calibrator(pre, augmented_model_path=str(pre.with_name("entropy.aug.onnx")),
                                           calibrate_method=CalibrationMethod.Entropy, extra_options=ENTROPY_HISTOGRAM)
            calibrator.collect_data(feed)
            save_tensors_data(calibrator.compute_data(), ranges)
            feed.rewind()
        return ranges

    def quantize(self, ctx: ExportContext, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                 exclude: list[str], **library_options: Any) -> None:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        feed = OnnxRuntimeFeed(data.calibration, ctx.input_name, _feed_batch(ctx))
        with silenced("", stdout=True):
            if calibrator == "default":  # exactly what a user calling quantize_static alone gets
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

    def sensitivity(self, ctx: ExportContext, fp32: Path, data: CalibrationData) -> list[str]:
        """Nodes whose quantized inputs lose the most (lowest SQNR of activation or weight), ONNX Runtime's QDQ debugger."""
        import onnx
        from onnxruntime.quantization import qdq_loss_debug as dbg

        quantized = fp32.with_name("sensitivity.qdq.onnx")
        self.quantize(ctx, fp32, quantized, "minmax", data, [], extra_options={"DedicatedQDQPair": True})
        subset = data.calibration.inputs[:SENSITIVITY_SAMPLES]
        activations = {}
        for name, model in (("float", self._preprocessed(fp32)), ("qdq", quantized)):
            augmented = fp32.with_name(f"sensitivity.{name}.aug.onnx")
            dbg.modify_model_output_intermediate_tensors(str(model), str(augmented))
            activations[name] = dbg.collect_activations(str(augmented),
                                                        OnnxRuntimeFeed(subset, ctx.input_name,
                                                                        _feed_batch(ctx)))
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
        names = _onnx_nodes_after(model, output)
        return names + [n for n in _onnx_nodes_after(self._preprocessed(model), output) if n not in names]

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


# ---------------------------------------------------------------- OpenVINO + NNCF

@register_quantizer
class NncfQuantizer(Quantizer):
    target = "openvino"
    tool = "nncf"
    calibrators = {"default": "nncf.quantize defaults (RangeEstimatorParametersSet.MEAN_MINMAX activations)",
                   "minmax": "RangeEstimatorParametersSet.MINMAX",
                   "percentile": "RangeEstimatorParametersSet.MEAN_QUANTILE",
                   "mse": "RangeEstimatorParametersSet.HISTOGRAM (minimises the quantization error)"}
    model_format = "openvino"
    max_drop_by = "nncf.quantize_with_accuracy_control (--fallback cost or --placement fast: edgecnn's search)"
    ranked_by = "SQNR of each layer's output against FP32, nncf.quantize defaults"
    scheme = "OpenVINO IR with FakeQuantize, NNCF PERFORMANCE preset (symmetric), S8 per-channel weights"

    def available(self) -> str | None:
        try:
            import nncf  # noqa: F401
        except ImportError:
            return "pip install 'edgecnn[openvino]'"
        return None

    def files(self, ctx: ExportContext) -> list[str]:
        xml = ctx.output.model_files[self.model_format]
        return [xml, str(Path(xml).with_suffix(".bin"))]

    def _parameters(self, calibrator: str, data: CalibrationData, batch: int | None) -> dict[str, Any]:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        calibration = as_nncf_dataset(data.calibration, batch)
        params = {"calibration_dataset": calibration, "subset_size": len(batches(data.calibration.inputs, batch))}
        if calibrator == "default":  # exactly what a user calling nncf.quantize alone gets
            return params
        estimator = getattr(RangeEstimatorParametersSet, self.calibrators[calibrator].split(".")[1].split()[0])
        return {**params, "preset": nncf.QuantizationPreset.PERFORMANCE,
                "advanced_parameters": AdvancedQuantizationParameters(activations_range_estimator_params=estimator)}

    def quantize(self, ctx: ExportContext, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                 exclude: list[str]) -> None:
        import nncf
        import openvino as ov

        params = self._parameters(calibrator, data, _feed_batch(ctx))
        ignored = nncf.IgnoredScope(names=exclude) if exclude else None
        with silenced("nncf"):
            quantized = nncf.quantize(ov.Core().read_model(str(fp32)), params.pop("calibration_dataset"),
                                      ignored_scope=ignored, **params)
        ov.save_model(quantized, str(out), compress_to_fp16=False)

    def sensitivity(self, ctx: ExportContext, fp32: Path, data: CalibrationData) -> list[str]:
        """Graph nodes, those of the layer whose output strays furthest from FP32 (lowest SQNR) first."""
        quantized = fp32.with_name("sensitivity.xml")
        self.quantize(ctx, fp32, quantized, "default", data, [])
        layers = graph_layers(fp32)
        sqnr = layer_sqnr(ModelRun(fp32, "openvino"), ModelRun(quantized, "openvino", "int8"), layers,
                          graph_layers(fp32, quantized), data.calibration.inputs[:SENSITIVITY_SAMPLES],
                          _feed_batch(ctx))
        ranked = sorted(sqnr, key=lambda layer: math.inf if sqnr[layer] is None else sqnr[layer])
        return [node for layer in ranked for node in layers.nodes[layer]]

    def accuracy_control(self, ctx: ExportContext, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                         fp32_accuracy: float, max_drop: float) -> dict[str, Any]:
        import nncf
        import openvino as ov

        batch = _feed_batch(ctx)
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

        with silenced("nncf"):
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


# ---------------------------------------------------------------- TensorRT (ModelOpt)

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
    target = "tensorrt"
    tool = "NVIDIA ModelOpt (modelopt.onnx.quantization)"
    calibrators = {"entropy": "calibration_method='entropy'", "minmax": "calibration_method='max'"}
    scheme = "explicit Q/DQ for TensorRT 10: S8 symmetric activations, S8 per-channel weights (DQ only)"
    model_format = "onnx"

    def available(self) -> str | None:
        try:
            import modelopt.onnx.quantization  # noqa: F401
        except Exception:  # ImportError, or a missing optional dependency it imports eagerly
            return MODELOPT_HINT
        return None

    def quantize(self, ctx: ExportContext, fp32: Path, out: Path, calibrator: str, data: CalibrationData,
                 exclude: list[str]) -> None:
        from modelopt.onnx.quantization import quantize

        method = "max" if calibrator == "minmax" else calibrator
        with silenced("", stdout=True), _onnxruntime_quantization_restored(), _modelopt_bars_silenced():
            quantize(str(fp32), quantize_mode="int8", calibration_data=as_modelopt_data(data.calibration, ctx.input_name),
                     calibration_method=method, calibration_eps=["cpu"], output_path=str(out), log_level="WARNING",
                     nodes_to_exclude=exclude or None, high_precision_dtype="fp32", dq_only=True)

    def finish(self, ctx: ExportContext, fp32: Path, calibrator: str) -> list[str]:
        """A TensorRT EntropyCalibration2-format cache for implicit INT8 / DLA users: the explicit model's own scales.

        Each activation QuantizeLinear ModelOpt placed carries a symmetric S8 scale (zero point 0), which is
        exactly the dynamic range TensorRT's implicit quantization wants for that tensor.
        """
        import onnx
        from onnx import numpy_helper

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


# ---------------------------------------------------------------- the pass

class Quantize:
    """Pipeline pass: calibrate, quantize the target's FP32 files with its quantizer, record the provenance."""
    name = "quantize_int8"

    def applies(self, ctx: ExportContext) -> bool:
        return ctx.precision == "int8"

    def run(self, ctx: ExportContext) -> dict[str, Any]:
        options = ctx.calibration or CalibrationOptions()
        quantizer = get_quantizer(ctx.target.name)
        check_int8(ctx.target.name, options)
        data = prepare_calibration(ctx.config, ctx.input_size, options, ctx.data)
        with float_copy(ctx, quantizer) as (fp32, model):
            fp32_hash = sha256_file(fp32)
            record = self._quantize(ctx, quantizer, options, data, fp32, model)
            quantizer.compact(model, fp32)
            ctx.target.finish_int8(ctx, ctx.output)   # TensorRT: the engine, built from the Q/DQ graph
            extra = quantizer.finish(ctx, fp32, record["calibrator"])
        ctx.output.files.extend(extra)
        record.update({"tool": quantizer.tool, "scheme": quantizer.scheme_of(record["calibrator"]),
                       "target": ctx.target.name,
                       "fp32_model_sha256": fp32_hash,
                       "calibration_samples": data.calibration.record(),
                       "validation_samples": data.validation.record() if data.validation else None,
                       "float_nodes": quantizer.float_nodes(model), "extra_files": extra})
        ctx.calibration_record, ctx.calibration_data = record, data
        return {"calibrator": record["calibrator"], "samples": len(data.calibration),
                "validation_drop": record.get("validation_drop")}

    def _quantize(self, ctx: ExportContext, quantizer: Quantizer, options: CalibrationOptions,
                  data: CalibrationData, fp32: Path, model: Path) -> dict[str, Any]:
        labelled = data.validation is not None
        fp32_accuracy = accuracy_of(self._hits(ctx, data)) if labelled else None
        candidates = quantizer.auto_candidates() if options.calibrator == "auto" else [options.calibrator]

        def quantize_and_hits(calibrator: str, exclude: list[str] = ()) -> np.ndarray:
            quantizer.quantize(ctx, fp32, model, calibrator, data, list(exclude))
            return self._hits(ctx, data) if labelled else np.zeros(0, dtype=bool)

        def quantize_and_score(calibrator: str, exclude: list[str] = ()) -> float:
            hits = quantize_and_hits(calibrator, exclude)
            return accuracy_of(hits) if labelled else float("nan")

        started = time.perf_counter()
        versus_first = None
        if len(candidates) > 1:
            tried = fp32.parent / "candidates"   # inside float_copy's directory, removed with it

            def quantize_keep_and_hits(calibrator: str) -> np.ndarray:
                hits = quantize_and_hits(calibrator)
                (tried / calibrator).mkdir(parents=True)
                _copy_model_files(ctx, quantizer, tried / calibrator)
                return hits

            choice = choose_calibrator(candidates, quantize_keep_and_hits, progress=lambda name: ctx.status(
                f"--calibrator auto: {name} ({candidates.index(name) + 1} of {len(candidates)})"))
            best, scores, versus_first = choice.best, choice.scores, choice.versus_first
            _copy_model_files(ctx, quantizer, tried / best, back=True)  # the chosen one's, not quantized again
        else:
            best = candidates[0]
            scores = {best: quantize_and_score(best)}
        record: dict[str, Any] = {
            "calibrator": best, "library_calibrator": quantizer.calibrators[best], "requested": options.calibrator,
            "seed": options.seed, "scores_validation_accuracy": scores if labelled else None,
            "choice": None if versus_first is None else {
                "rule": f"keep {candidates[0]!r} unless another calibrator is significantly more accurate on the "
                        "same validation images (McNemar, 5 %)", "versus_first": versus_first,
                "not_tried": quantizer.auto_skips},
            "fp32_validation_accuracy": fp32_accuracy, "int8_validation_accuracy": scores[best] if labelled else None,
            "max_drop": options.max_drop, "nodes_to_exclude": [], "fallback": None,
            "resolution": resolution_record(len(data.validation), options.max_drop) if labelled else None}
        # --max-drop as the validation split measures it: never acting on less than one image
        max_drop = measurable_drop(options.max_drop, len(data.validation)) \
            if labelled and options.max_drop is not None else options.max_drop
        accuracy_now, placed = scores[best] if labelled else None, []
        trial = _trial(ctx, quantizer, fp32, model, data, options,
                       lambda exclude: quantize_and_score(best, exclude)) if options.measures_latency else None
        if options.placement == "fast":
            placed, accuracy_now, record["placement"] = place_for_speed(trial, graph_layers(fp32), [], accuracy_now,
                                                                        fp32_accuracy)
            record.update(nodes_left_in_float_for_speed=placed, int8_validation_accuracy=accuracy_now)
        if max_drop is not None and fp32_accuracy - accuracy_now > max_drop:
            controlled = None if placed or options.fallback == "cost" else \
                quantizer.accuracy_control(ctx, fp32, model, best, data, fp32_accuracy, max_drop)
            if controlled is not None:
                accuracy_now = accuracy_of(self._hits(ctx, data))
                if fp32_accuracy - accuracy_now > max_drop:
                    raise UserError(f"{quantizer.tool} could not bring the INT8 drop within --max-drop "
                                    f"{options.max_drop:g} pt (best {fp32_accuracy - accuracy_now:.2f} pt): every "
                                    "node is too sensitive. Nothing was written; raise --max-drop or export fp32")
                record.update(fallback=controlled, int8_validation_accuracy=accuracy_now)
            else:
                ranked = quantizer.sensitivity(ctx, fp32, data)
                if options.fallback == "cost":
                    nodes, accuracy, cost = cheapest_fallback(trial, graph_layers(fp32), ranked, placed,
                                                              fp32_accuracy, accuracy_now, options.max_drop)
                    record.update(nodes_to_exclude=nodes, int8_validation_accuracy=accuracy, fallback=cost)
                else:
                    result = fallback_to_float(ranked, lambda exclude: quantize_and_score(best, placed + exclude),
                                               fp32_accuracy, accuracy_now, options.max_drop)
                    quantize_and_score(best, placed + result.excluded)
                    record.update(nodes_to_exclude=result.excluded, int8_validation_accuracy=result.accuracy,
                                  fallback={"method": f"edgecnn: most sensitive first ({quantizer.ranked_by}), "
                                                      "doubling, then bisection", "ranked_nodes": len(ranked),
                                            "steps": result.steps})
        if labelled:
            record["validation_drop"] = round(fp32_accuracy - record["int8_validation_accuracy"], 2)
        record["seconds"] = round(time.perf_counter() - started, 2)
        return record

    @staticmethod
    def _hits(ctx: ExportContext, data: CalibrationData) -> np.ndarray:
        """Per validation image, whether whatever the staging directory's model file holds now gets it right."""
        manifest = ctx.manifest(time.perf_counter(), hash_files=False)
        with open_session(ctx.staging, manifest, ctx.output.default_backend) as session:
            logits = parity.run_in_batches(session.run, data.validation.inputs,
                                           SCORE_CHUNK if ctx.dynamic_batch else ctx.batch)
        return correct(logits, data.validation.labels)


__all__ = ["QUANTIZERS", "Quantize", "Quantizer", "check_int8", "float_copy", "get_quantizer", "register_quantizer"]
