"""The export pipeline: a model goes through a list of passes into one artifact directory.

    from edgecnn.export import export_model, export_registered
    result = export_registered("resnet18_fmnist", target="openvino", precision="fp16", out="artifacts/r18")
    result = export_model(my_model, target="onnx", precision="fp32", out="artifacts/mine")

Default passes: prepare the model for the target (`prepare_export(target_name)` on every module
that has it, e.g. deformable layers picking their lowering) → fold BatchNorm → write the target's
files → quantize them (INT8) → check parity of each of the target's backends against the PyTorch model → for a
multi-exit (BranchyNet) model, write one graph per stage and tune its exit thresholds (`early_exit`). Every pass is
checked before any runs; each records what it did in the manifest, which is written last into a staging directory
that then becomes the artifact in one rename. The context, the `Pass` base and the `Pipeline` are
`edgecnn.export.passes` (re-exported here), which the passes' own modules import.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from edgecnn.calibration import CalibrationOptions
from edgecnn.errors import UserError
from edgecnn.export import parity
from edgecnn.export.early_exit import EarlyExitStages, check_early_exit_form
from edgecnn.export.fold import count_batchnorms, fold_batchnorm
from edgecnn.export.graph_io import INPUT_NAME, OUTPUT_NAME, ExportError
from edgecnn.export.manifest import read_manifest
from edgecnn.export.onnx_graph import DEFAULT_OPSET
from edgecnn.export.onnx_source import OnnxModel
from edgecnn.export.passes import (LATENCY_ONLY, PARITY_PASS, ExportContext, Pass, Pipeline, WriteTarget,
                                   host_info)
from edgecnn.export.quantize import Quantize
from edgecnn.export.runtime import BACKENDS as SESSIONS, Session, open_model
from edgecnn.export.source import DEFAULT_SEED, check_input_size, load_source_model
from edgecnn.export.staging import check_destination
from edgecnn.export.targets import get_target
from edgecnn.model_ref import WeightsData, weights_data, with_data
from edgecnn.registry import ModelConfig, get_config
from edgecnn.validation import non_negative_float, non_negative_int, positive_int

PARITY_CHUNK = 16


class PrepareForTarget(Pass):
    name = "prepare_for_target"

    def run(self, ctx: ExportContext) -> dict[str, Any]:
        prepared = [m for m in ctx.module.modules() if hasattr(m, "prepare_export")]
        for m in prepared:
            m.prepare_export(ctx.target.name)
        return {"modules_prepared": len(prepared)}


def _logits_only(output: object) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise ExportError(f"the model's eval-mode forward returns a {type(output).__name__}; an edgecnn model "
                          "returns logits only in eval mode (aux heads and extra outputs stay out of the graph)")
    return output


class FoldBatchNorm(Pass):
    """Conv-BN folding: edgecnn's torch.fx transform, or ONNX Runtime's optimizer for an ONNX source."""
    name = "fold_batchnorm"

    def run(self, ctx: ExportContext) -> dict[str, Any]:
        if isinstance(ctx.module, OnnxModel):
            folded, record = ctx.module.fold()
        else:
            folded, report = fold_batchnorm(ctx.module)
            record = report.to_dict()
        left = count_batchnorms(folded.modules())
        if left:
            raise ExportError(f"{left} BatchNorm layer(s) survived folding; report this as a bug with the model")
        x = ctx.example
        with torch.no_grad():
            before, after = _logits_only(ctx.module(x)), _logits_only(folded(x))
        ctx.module = folded
        return {**record, "max_abs_diff_vs_unfolded": float((before - after).abs().max())}


class CheckParity(Pass):
    """Each of the target's parity backends against the PyTorch model: records the manifest's `parity` checks."""
    name = PARITY_PASS

    def run(self, ctx: ExportContext) -> dict[str, Any]:
        samples = ctx.parity_samples or parity.default_samples(ctx.precision)
        inputs, description = parity.parity_inputs(ctx.config, ctx.input_size, samples, ctx.data)
        reference = parity.torch_logits(ctx.reference, inputs)
        chaotic = ctx.precision == "fp32" and ctx.weights.get("source") == "random_init"
        noise = parity.fp32_noise(ctx.reference, inputs) if chaotic else 0.0
        feed = inputs.numpy().astype(ctx.io_dtype)
        chunk = PARITY_CHUNK if ctx.dynamic_batch else ctx.batch
        checks = []
        for backend in ctx.output.parity_backends:
            with self._open(ctx, backend) as session:
                logits = parity.run_in_batches(session.run, feed, chunk)
                accuracy = parity.test_split_accuracy(ctx.reference, session.run, ctx.config, ctx.input_size,
                                                      chunk, ctx.precision, ctx.data)
            checks.append({"backend": backend, "inputs": description,
                           "reference": getattr(ctx.reference, "reference_label", "torch (eager, unfolded)"),
                           "samples": len(inputs), "measures": ctx.output.parity_measures.get(backend, ""),
                           **parity.compare(reference, logits, ctx.precision, noise, ctx.latency_only),
                           **accuracy})
        ctx.records[self.name] = checks
        return {"backends": list(ctx.output.parity_backends), "passed": all(c["passed"] for c in checks)}

    @staticmethod
    def _open(ctx: ExportContext, backend: str) -> Session:
        """The model file the target wrote for `backend`, opened where it lies in the staging directory, as the
        artifact will run it (its precision and input); no manifest is written yet."""
        model_format = SESSIONS.lookup(backend).format_of(ctx.output.model_files)
        if model_format is None:
            raise ExportError(f"the {ctx.target.name} target checks parity on {backend}, which reads none of its "
                              f"model files ({', '.join(ctx.output.model_files)})")
        return open_model(ctx.staging / ctx.output.model_files[model_format], backend, precision=ctx.precision,
                          input={"name": INPUT_NAME, "shape": ctx.input_shape, "dtype": ctx.io_dtype},
                          output=OUTPUT_NAME, model_format=model_format)


DEFAULT_PASSES: tuple[type[Pass], ...] = (PrepareForTarget, FoldBatchNorm, WriteTarget, Quantize, CheckParity,
                                          EarlyExitStages)


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]

    @property
    def parity_passed(self) -> bool:
        return all(p["passed"] for p in self.manifest["parity"])


class ParityError(UserError):
    """The artifact was written but does not compute what its reference computes: `result` holds it, for
    inspection. The Python API raises it (`fail_on_parity=False` returns the result instead)."""

    def __init__(self, result: ExportResult) -> None:
        failed = [p["backend"] for p in result.manifest["parity"] if not p["passed"]]
        super().__init__(f"parity FAILED on {', '.join(failed)}: {result.path} was written but does not match its "
                         "reference within tolerance (`edgecnn inspect` shows the checks); do not deploy it")
        self.result = result


def export_model(model: nn.Module, target: str = "onnx", precision: str = "fp32", out: Path | str = "artifact", *,
                 batch: int = 1, dynamic_batch: bool = False, opset: int = DEFAULT_OPSET,
                 exporter: str = "auto", input_size: tuple[int, int] | None = None,
                 keep_io_types: bool = True, parity_samples: int | None = None,
                 weights: dict[str, Any] | None = None, overwrite: bool = False, progress: bool = False,
                 pipeline: Pipeline | None = None, calibration: CalibrationOptions | None = None,
                 exit_budget_pt: float | None = None, early_exit_form: str = "auto",
                 data: str | Path | WeightsData | None = None, fail_on_parity: bool = True) -> ExportResult:
    """Export `model` (which carries `.config`, as `edgecnn.create_model` gives it) to one artifact directory.

    `input_size` (H, W) overrides the config's spatial size (e.g. its `min_input_size` for fast checks);
    `weights` is the record `load_source_model` returns, so the torch backend can rebuild the model;
    `calibration` (INT8 only) says how to calibrate (default: auto, 512 samples, no accuracy bound);
    `exit_budget_pt` (multi-exit models only) is the validation accuracy the exit thresholds may give up
    against the final exit alone (default 0.5 points); `early_exit_form` (multi-exit models only) is "graph" (also
    write the single graph, and run it by default), "stages" (stage graphs only) or "auto" (write the single graph
    where the target has one, and make the form measured faster here the default). `data` is a dataset to score and
    calibrate on instead of the weights' own (said in the output and recorded); by default the weights' own is used
    (`weights["dataset"]`, or Fashion-MNIST for a zoo configuration made for it), never another one silently.
    The arguments are checked here, then every pass's `check` (INT8, early exit) before any pass works. A failed
    parity check raises ParityError after the artifact is written, unless `fail_on_parity` is False.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise UserError("the model has no ModelConfig in .config; build it with edgecnn.create_model "
                        "(or attach one) so the export knows its input and preprocessing")
    target_obj = get_target(target)
    if precision not in target_obj.precisions:
        raise UserError(f"target {target!r} exports precisions {', '.join(target_obj.precisions)}, not {precision!r}")
    target_obj.check_precision(precision)
    check_early_exit_form(model, early_exit_form)
    if precision != "int8" and calibration is not None:
        raise UserError(f"calibration options (--calibrator, --calib-samples, --calib-data, --max-drop) apply to "
                        f"--precision int8, not {precision}")
    if not keep_io_types and not (precision == "fp16" and target_obj.half_io):
        raise UserError("float16 inputs and outputs (--half-io, keep_io_types=False) apply to FP16 ONNX only")
    _check_numbers(batch, opset, parity_samples, input_size)
    if exit_budget_pt is not None:
        non_negative_float("exit_budget_pt", exit_budget_pt)
    weights = weights or {"source": "in_memory"}
    chosen = with_data(weights_data(config, weights), data)
    weights = {**weights, "dataset": chosen.record() if chosen else None}  # what every number was measured on
    out = check_destination(out, overwrite)
    if input_size:
        check_input_size(config, input_size, batch, model)
    size = (config.input_size[0], *input_size) if input_size else tuple(config.input_size)
    ctx = ExportContext(reference=model.eval(), config=config, target=target_obj, precision=precision,
                        staging=Path(), input_size=size, batch=batch, dynamic_batch=dynamic_batch, opset=opset,
                        exporter=exporter, keep_io_types=keep_io_types, parity_samples=parity_samples,
                        weights=weights, calibration=calibration, exit_budget_pt=exit_budget_pt,
                        early_exit_form=early_exit_form, data=chosen)
    ctx.notes.extend(getattr(model, "export_notes", ()))
    if chosen is not None and chosen.instead_of:
        ctx.notes.append(f"scored and calibrated on {chosen.label} (--data), not on the weights' own dataset "
                         f"{chosen.instead_of}")
    if ctx.latency_only:
        ctx.notes.append(LATENCY_ONLY["reason"])
    if ctx.weights["source"] == "random_init":
        ctx.notes.append("exported with random initial weights (no checkpoint given and none committed), "
                         "BatchNorm statistics re-estimated on seeded standard-normal inputs: fine for latency, "
                         "meaningless for accuracy")
    pipeline = pipeline or Pipeline([p() for p in DEFAULT_PASSES])   # checks every pass before any runs
    path = pipeline.run(ctx, Path(out), overwrite=overwrite, progress=progress)
    result = ExportResult(path, read_manifest(path, verify=False))
    if fail_on_parity and not result.parity_passed:
        raise ParityError(result)
    return result


def export_registered(name: str, target: str = "onnx", precision: str = "fp32", out: Path | str = "artifact", *,
                      checkpoint: Path | str | None = None, seed: int = DEFAULT_SEED, **kwargs: Any) -> ExportResult:
    """Export a registered model with its checkpoint, its committed weights, or its seeded random init.

    The destination, the numbers and the input size are checked before the model is built.
    """
    non_negative_int("seed", seed)
    _check_numbers(kwargs.get("batch", 1), kwargs.get("opset", DEFAULT_OPSET), kwargs.get("parity_samples"),
                   kwargs.get("input_size"))
    check_destination(out, kwargs.get("overwrite", False))
    if kwargs.get("input_size"):
        check_input_size(get_config(name), kwargs["input_size"], kwargs.get("batch", 1))
    model, weights = load_source_model(name, checkpoint, seed, kwargs.get("input_size"))
    return export_model(model, target, precision, out, weights=weights, **kwargs)


def _check_numbers(batch: int, opset: int, parity_samples: int | None, input_size: tuple[int, int] | None) -> None:
    """The numeric options, with the CLI's wording (edgecnn.validation)."""
    positive_int("batch", batch)
    positive_int("opset", opset)
    if parity_samples is not None:
        positive_int("parity_samples", parity_samples)
    if input_size is not None:
        if not (isinstance(input_size, (tuple, list)) and len(input_size) == 2):
            raise UserError(f"input_size must be (height, width), got {input_size!r}")
        for side in input_size:
            positive_int("input_size", side)


__all__ = ["CheckParity", "DEFAULT_PASSES", "ExportContext", "ExportResult", "FoldBatchNorm", "ParityError", "Pass",
           "Pipeline", "PrepareForTarget", "WriteTarget", "export_model", "export_registered", "host_info"]
