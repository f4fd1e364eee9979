"""The INT8 pass of the export pipeline: the FP32 files the target wrote become INT8, by each runtime's own tool.

    export_registered("resnet18_fmnist", target="openvino", precision="int8", out="artifacts/r18-int8",
                      calibration=CalibrationOptions(calibrator="auto", samples=512, max_drop=0.5))

Quantizers are registered by name in one place (`QUANTIZERS`), each by its target's backend module and naming the
target it quantizes (`edgecnn.export.backends`: ONNX Runtime's `quantize_static` for onnx, NNCF for openvino, NVIDIA
ModelOpt for tensorrt); a target's first is its default and `--quantizer` names another. Each names its calibrators;
"library" is the library's own defaults. `auto` tries them in order (`auto_candidates`) and keeps the first unless
another is significantly more accurate on the validation split; for NNCF the first is its default. The `Quantizer`
base and the registry are `edgecnn.export.quantizers` (light, so a backend module loads for its session without
quantization libraries). This module holds the pre-flight `check_int8`, `quantize_model` (a model file quantized in
place: the calibrator choice, the float fallback, the provenance record) and the `Quantize` pass, whose `check` runs
`check_int8` and `check_calibration_source` before any pass works. The pass and `edgecnn.quantize` (`quantize_api`,
on a bare model file) both run `quantize_model`; a quantizer reads of the graph only its `GraphInput`. The pass
records `Calibrated` (the manifest's `calibration` and the samples); an early-exit stage runs it too, on the trunk's
samples (`early_exit.stage_pipeline`).

Samples, the calibrator choice, the float fallback search and the provenance record are
`edgecnn.calibration`'s; the backends' quantizers run the libraries, and this pass scores candidates with the
runtime sessions.
"""
from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from edgecnn.calibration import (CalibrationData, CalibrationOptions, accuracy_of, check_calibration_source,
                                 choose_calibrator, correct, fallback_to_float, measurable_drop, prepare_calibration,
                                 resolution_record)
from edgecnn.errors import UserError
from edgecnn.export import parity
from edgecnn.export.manifest import sha256_file
from edgecnn.export.passes import QUANTIZE_PASS, Pass
from edgecnn.export.placement import Trial, cheapest_fallback, place_for_speed
from edgecnn.export.profile import ModelRun, graph_layers, profiled_targets
from edgecnn.export.quantizers import Quantizer, get_quantizer
from edgecnn.export.runtime import open_model

if TYPE_CHECKING:
    from edgecnn.export.passes import ExportContext

FP32_DIR = ".fp32"           # inside the staging directory; removed before the artifact is renamed into place
SENSITIVITY_SAMPLES = 64     # images ONNX Runtime's QDQ debugger compares float and INT8 activations on
SCORE_CHUNK = 64
CALIBRATION_CHUNK = 16


@dataclass(frozen=True)
class GraphInput:
    """What a quantizer reads of the graph it quantizes, besides its files: the input's name and the batch the
    graph takes (None: a dynamic batch axis). The export pass builds it from its context (`of_context`),
    `edgecnn.quantize` from the model file (`of_model`)."""
    name: str
    batch: int | None = None

    @property
    def feed_batch(self) -> int:
        """The batch calibration feeds: the graph's static one, or CALIBRATION_CHUNK for a dynamic batch axis."""
        return CALIBRATION_CHUNK if self.batch is None else self.batch

    @property
    def score_batch(self) -> int:
        """The batch validation images are scored in: the graph's static one, or SCORE_CHUNK."""
        return SCORE_CHUNK if self.batch is None else self.batch

    @classmethod
    def of_context(cls, ctx: ExportContext) -> GraphInput:
        return cls(ctx.input_name, None if ctx.dynamic_batch else ctx.batch)

    @classmethod
    def of_model(cls, model: Path) -> GraphInput:
        """The first input of an ONNX graph (.onnx) or an OpenVINO IR (.xml)."""
        if model.suffix == ".xml":
            import openvino as ov

            port = ov.Core().read_model(str(model)).inputs[0]
            first = port.get_partial_shape()[0]
            return cls(port.get_any_name(), None if first.is_dynamic else first.get_length())
        import onnx

        graph = onnx.load(str(model), load_external_data=False).graph
        weights = {t.name for t in graph.initializer}
        tensor = next(i for i in graph.input if i.name not in weights)
        first = tensor.type.tensor_type.shape.dim[0]
        return cls(tensor.name, first.dim_value if first.HasField("dim_value") else None)




def check_int8(target: str, options: CalibrationOptions) -> None:
    """Refuse, before any export work, a target or calibrator the quantizer cannot honour."""
    quantizer = get_quantizer(target, options.quantizer)
    if options.calibrator != "auto" and options.calibrator not in quantizer.calibrators:
        raise UserError(f"calibrator {options.calibrator!r} does not exist for the {target} target "
                        f"({quantizer.tool}); choose auto or {', '.join(quantizer.calibrators)}")
    if options.max_drop is not None and quantizer.max_drop_by is None:
        raise UserError(f"--max-drop is not supported for the {target} target ({quantizer.tool} has no accuracy "
                        "control here); drop --max-drop, or bound the drop on the onnx or openvino target")
    if options.measures_latency and target not in profiled_targets():
        raise UserError(f"--placement fast and --fallback cost time each layer with the runtime's own profiler, and "
                        f"the {target} target's runtime has none edgecnn can run here (TensorRT's needs the engine, "
                        "built on the device): drop them, or use the onnx or openvino target")
    missing = quantizer.available()
    if missing:
        raise UserError(f"INT8 for the {target} target needs {quantizer.tool}, which is not installed: {missing}")


@dataclass(frozen=True)
class ModelFiles:
    """A model being quantized in place: its `directory`, the model file's name in it, and every file the model
    consists of (`Quantizer.files`: an IR's .bin beside its .xml)."""
    directory: Path
    model_file: str
    files: tuple[str, ...]

    @classmethod
    def of(cls, quantizer: Quantizer, directory: Path, model_file: str) -> ModelFiles:
        return cls(Path(directory), model_file, tuple(quantizer.files(model_file)))

    @property
    def model(self) -> Path:
        return self.directory / self.model_file

    def copy(self, directory: Path, back: bool = False) -> None:
        """The model's files into `directory`, or with `back` from it into place."""
        for name in self.files:
            here, aside = self.directory / name, directory / Path(name).name
            shutil.copy2(*((aside, here) if back else (here, aside)))


@contextmanager
def float_copy(model: ModelFiles) -> Iterator[tuple[Path, Path]]:
    """(FP32 model, model file to overwrite): the model's files copied aside (FP32_DIR, inside its directory) for
    the quantizer to read while it writes the INT8 model in their place; the copy is removed afterwards."""
    fp32_dir = model.directory / FP32_DIR
    fp32_dir.mkdir()
    try:
        model.copy(fp32_dir)
        yield fp32_dir / Path(model.files[0]).name, model.model
    finally:
        shutil.rmtree(fp32_dir, ignore_errors=True)


def _trial(files: ModelFiles, graph: GraphInput, backend: str, fp32: Path, data: CalibrationData,
           options: CalibrationOptions, quantize_and_score: Callable[[list[str]], float]) -> Trial:
    """The float-placement searches' view of this quantization: quantize into the model file, keep copies of it in
    float_copy's directory, time models on the runtime (calibration images, the graph's batch)."""
    from edgecnn.export.profile import profile_models

    def keep(name: str) -> Path:
        (fp32.parent / name).mkdir(exist_ok=True)
        files.copy(fp32.parent / name)
        return fp32.parent / name / files.model.name

    batch = data.calibration.inputs[:1 if graph.batch is None else graph.batch]
    return Trial(fp32, quantize_and_score, keep, lambda path: files.copy(path.parent, back=True),
                 lambda paths: profile_models([ModelRun(p, backend, "fp32" if p == fp32 else "int8") for p in paths],
                                              batch, options.profile_threads))


# ---------------------------------------------------------------- quantizing a model file in place

def quantize_model(quantizer: Quantizer, files: ModelFiles, graph: GraphInput, data: CalibrationData,
                   options: CalibrationOptions, *, backend: str, exclude: list[str] | tuple[str, ...] = (),
                   status: Callable[[str], None] | None = None,
                   finish: Callable[[Path, str], None] | None = None) -> dict[str, Any]:
    """Quantize the FP32 model `files` in place with `quantizer`: the calibrator choice (`auto`), the float
    fallback of `max_drop` and the float placement, scored on `data.validation` (if any) with the `backend`
    session. `exclude` stays float in every candidate. `finish(fp32, calibrator)` runs while the FP32 copy still
    exists (the export's TensorRT engine and cache). Returns the provenance record (the manifest's calibration).

    What `edgecnn.quantize` and the export's Quantize pass both run."""
    status = status or (lambda message: None)
    with float_copy(files) as (fp32, model):
        fp32_hash = sha256_file(fp32)
        record = _choose_and_quantize(quantizer, files, graph, backend, options, data, fp32, model, list(exclude),
                                      status)
        quantizer.compact(model, fp32)
        if finish is not None:
            finish(fp32, record["calibrator"])
    record.update({"quantizer": quantizer.name, "tool": quantizer.tool,
                   "scheme": quantizer.scheme_of(record["calibrator"]), "target": quantizer.target,
                   "fp32_model_sha256": fp32_hash,
                   "calibration_samples": data.calibration.record(),
                   "validation_samples": data.validation.record() if data.validation else None,
                   "float_nodes": quantizer.float_nodes(model)})
    return record


def _choose_and_quantize(quantizer: Quantizer, files: ModelFiles, graph: GraphInput, backend: str,
                         options: CalibrationOptions, data: CalibrationData, fp32: Path, model: Path,
                         kept: list[str], status: Callable[[str], None]) -> dict[str, Any]:
    labelled = data.validation is not None

    def hits() -> np.ndarray:
        return _hits(files, graph, backend, quantizer.model_format, data)

    fp32_accuracy = accuracy_of(hits()) if labelled else None
    candidates = quantizer.auto_candidates() if options.calibrator == "auto" else [options.calibrator]

    def quantize_and_hits(calibrator: str, exclude: list[str] = ()) -> np.ndarray:
        quantizer.quantize(graph, fp32, model, calibrator, data, kept + [n for n in exclude if n not in kept])
        return hits() if labelled else np.zeros(0, dtype=bool)

    def quantize_and_score(calibrator: str, exclude: list[str] = ()) -> float:
        found = quantize_and_hits(calibrator, exclude)
        return accuracy_of(found) if labelled else float("nan")

    started = time.perf_counter()
    versus_first = None
    if len(candidates) > 1:
        tried = fp32.parent / "candidates"   # inside float_copy's directory, removed with it

        def quantize_keep_and_hits(calibrator: str) -> np.ndarray:
            found = quantize_and_hits(calibrator)
            (tried / calibrator).mkdir(parents=True)
            files.copy(tried / calibrator)
            return found

        choice = choose_calibrator(candidates, quantize_keep_and_hits, progress=lambda name: status(
            f"--calibrator auto: {name} ({candidates.index(name) + 1} of {len(candidates)})"))
        best, scores, versus_first = choice.best, choice.scores, choice.versus_first
        files.copy(tried / best, back=True)  # the chosen one's, not quantized again
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
    if kept:
        record["nodes_kept_float"] = list(kept)
    # --max-drop as the validation split measures it: never acting on less than one image
    max_drop = measurable_drop(options.max_drop, len(data.validation)) \
        if labelled and options.max_drop is not None else options.max_drop
    accuracy_now, placed = scores[best] if labelled else None, []
    trial = _trial(files, graph, backend, fp32, data, options,
                   lambda exclude: quantize_and_score(best, exclude)) if options.measures_latency else None
    if options.placement == "fast":
        placed, accuracy_now, record["placement"] = place_for_speed(trial, graph_layers(fp32), [], accuracy_now,
                                                                    fp32_accuracy)
        record.update(nodes_left_in_float_for_speed=placed, int8_validation_accuracy=accuracy_now)
    if max_drop is not None and fp32_accuracy - accuracy_now > max_drop:
        controlled = None if placed or kept or options.fallback == "cost" else \
            quantizer.accuracy_control(graph, fp32, model, best, data, fp32_accuracy, max_drop)
        if controlled is not None:
            accuracy_now = accuracy_of(hits())
            if fp32_accuracy - accuracy_now > max_drop:
                raise UserError(f"{quantizer.tool} could not bring the INT8 drop within --max-drop "
                                f"{options.max_drop:g} pt (best {fp32_accuracy - accuracy_now:.2f} pt): every "
                                "node is too sensitive. Nothing was written; raise --max-drop or export fp32")
            record.update(fallback=controlled, int8_validation_accuracy=accuracy_now)
        else:
            ranked = [n for n in quantizer.sensitivity(graph, fp32, data) if n not in kept]
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


def _hits(files: ModelFiles, graph: GraphInput, backend: str, model_format: str, data: CalibrationData) -> np.ndarray:
    """Per validation image, whether whatever the model file holds now gets it right."""
    shape = ["N" if graph.batch is None else graph.batch, *data.validation.inputs.shape[1:]]
    with open_model(files.model, backend, precision="int8", model_format=model_format,
                    input={"name": graph.name, "shape": shape, "dtype": "float32"}) as session:
        logits = parity.run_in_batches(session.run, data.validation.inputs, graph.score_batch)
    return correct(logits, data.validation.labels)


# ---------------------------------------------------------------- the pass

@dataclass(frozen=True)
class Calibrated:
    """What the quantize pass records (`ctx.records["quantize_int8"]`): the manifest's `calibration` record, and the
    samples calibrated on, on which the early-exit pass calibrates its stages too."""
    record: dict[str, Any]
    data: CalibrationData


class Quantize(Pass):
    """Pipeline pass: calibrate, quantize the target's FP32 files with its quantizer (`quantize_model`, as
    `edgecnn.quantize` does), record the provenance."""
    name = QUANTIZE_PASS

    def __init__(self, data: CalibrationData | None = None, keep_float_after: str | None = None,
                 extras: bool = True) -> None:
        """`data`: calibrate on these samples instead of drawing them from the weights' dataset; `keep_float_after`:
        a graph output whose consumers stay float in every candidate; `extras`: write what the target's INT8
        artifact carries besides the model (`Quantizer.finish`: TensorRT's calibration cache). An early-exit stage
        gives its own samples, keeps its entropy float and carries no extras (`early_exit.stage_pipeline`)."""
        self.data, self.keep_float_after, self.extras = data, keep_float_after, extras

    def applies(self, ctx: ExportContext) -> bool:
        return ctx.precision == "int8"

    def check(self, ctx: ExportContext) -> None:
        check_int8(ctx.target.name, ctx.calibration)
        if self.data is None:
            check_calibration_source(ctx.config, ctx.calibration, ctx.data)

    def run(self, ctx: ExportContext) -> dict[str, Any]:
        quantizer = get_quantizer(ctx.target.name, ctx.calibration.quantizer)
        data = self.data or prepare_calibration(ctx.config, ctx.input_size, ctx.calibration, ctx.data)
        files = ModelFiles.of(quantizer, ctx.staging, ctx.output.model_files[quantizer.model_format])
        kept = quantizer.nodes_after(files.model, self.keep_float_after) if self.keep_float_after else []
        extra: list[str] = []

        def finish(fp32: Path, calibrator: str) -> None:
            ctx.target.finish_int8(ctx, ctx.output)   # TensorRT: the engine, built from the Q/DQ graph
            if self.extras:
                extra.extend(quantizer.finish(ctx, fp32, calibrator))

        record = quantize_model(quantizer, files, GraphInput.of_context(ctx), data, ctx.calibration,
                                backend=ctx.output.default_backend, exclude=kept, status=ctx.status, finish=finish)
        ctx.output.files.extend(extra)
        record.update(target=ctx.target.name, extra_files=extra)
        ctx.records[self.name] = Calibrated(record, data)
        return {"calibrator": record["calibrator"], "samples": len(data.calibration),
                "validation_drop": record.get("validation_drop")}


from edgecnn.export import backends  # noqa: E402,F401  (each backend module registers its quantizers)

__all__ = ["Calibrated", "GraphInput", "ModelFiles", "Quantize", "check_int8", "float_copy", "quantize_model"]
