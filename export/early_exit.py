"""BranchyNet early exit on the device: per-stage graphs, thresholds tuned on the artifact, the exit loop.

Export (the `early_exit` pass of the pipeline, for a `MultiExitNet`): the pipeline's own passes write the
trunk (the final-exit path as one graph, `model.onnx` / `model.xml`), and this pass writes one graph per
stage through the same target into `stageK/`: stage k < N takes the previous stage's features and returns
`logits`, `entropy` (softmax, natural log, computed in the graph in float32) and `features`; the last stage
returns `logits`. It then measures each stage's cost on the target's runtime at this precision, runs the
validation split (never the test split) through the exported stages, and picks the N-1 thresholds that
minimise expected latency within an accuracy budget (default 0.5 pt below the final exit alone).

The loop on the device is the `early_exit` session (`early_exit_session.py`), the threshold search
`early_exit_thresholds.py`; this module is the export pass, which needs torch.

Each stage is an export of its own: an `ExportContext` (`stage_context`) run through a `Pipeline` of the real
passes (`stage_pipeline`: WriteTarget, then Quantize) inside the parent's staging directory, without a staging
directory or manifest of its own. INT8: the quantize pass quantizes the trunk (choosing the calibrator), then each
stage's quantize pass uses that calibrator on the same calibration images as the stage sees them (the FP32
features of the stages before it, from the trunk's record); each exit's entropy stays float. Thresholds are then
tuned on the INT8 stages themselves, as for every precision.

The single graph (early_exit_graph.py): where the target has one (ONNX, OpenVINO), the pass also composes the
stages, their entropy and the exit decision into one graph, later stages inside `If` branches, so one call runs
exactly the stages a sample needs. Each form's thresholds are tuned on that form's own stage costs; the form that
measures faster per sample here is the default (`form` in the manifest), unless `--early-exit graph|stages` says.
Every session export times runs on one thread (`COST_THREADS`).

The manifest's `early_exit` section is enough to run the loop without edgecnn: stage files in order, their
output names, the trunk file, the thresholds, the entropy definition and the rule; and the single graph's file, its
inputs (the image, the thresholds) and outputs (the exit's logits, the exit).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecnn.branchynet import EXIT_ENTROPY, EXIT_RULE, MultiExitNet, softmax_entropy
from edgecnn.data import preprocess, train_val_split
from edgecnn.errors import UserError
from edgecnn.calibration import CalibrationData
from edgecnn.export.fold import fold_batchnorm
from edgecnn.export.early_exit_graph import graph_targets, write_graph
from edgecnn.export.early_exit_session import COST_REPEATS, STAGE_OUTPUTS, EarlyExitSession, median_call_ms
from edgecnn.export.early_exit_thresholds import DEFAULT_BUDGET_PT, MARGIN_SE, exit_indices, tune
from edgecnn.export.graph_io import BATCH_DIM, INPUT_NAME, OUTPUT_NAME
from edgecnn.export.passes import EARLY_EXIT_PASS, QUANTIZE_PASS, ExportContext, Pass, Pipeline, WriteTarget
from edgecnn.export.quantize import Calibrated, Quantize
from edgecnn.export.runtime import BACKENDS, open_session

EARLY_EXIT_PRECISIONS = ("fp32", "fp16", "int8")
REFERENCE_SAMPLES = 256       # validation images each exit is compared with PyTorch on
COST_THREADS = 1              # threads of every session export times (stages, single graph, trunk)
FORM_TIMING_SAMPLES = 200     # validation images each form is timed on, one at a time, to choose the default
EXPORT_FORMS = ("auto", "graph", "stages")  # `export --early-exit`: auto keeps the form measured faster


class StageGraph(nn.Module):
    """What one stage's graph computes: features → (exit logits, their entropy, features), or the final logits."""

    def __init__(self, stage: nn.Module, head: nn.Module | None) -> None:
        super().__init__()
        self.stage, self.head = stage, head

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.stage(x)
        if self.head is None:
            return features
        logits = self.head(features)
        return logits, softmax_entropy(logits).to(logits.dtype), features


def stage_graphs(net: MultiExitNet, input_size: tuple[int, int, int]) -> list[StageGraph]:
    """One graph per stage, each exit head's adaptive pooling made fixed where that is exact at these sizes."""
    heads: list[nn.Module | None] = [*net.exits, None]
    graphs = [StageGraph(stage, head).eval() for stage, head in zip(net.stages, heads)]
    return [_fixed_pooling(g, shape) for g, shape in zip(graphs, _feature_shapes(net, input_size))]


def _fixed_pooling(graph: StageGraph, shape: tuple[int, ...]) -> StageGraph:
    """`graph` (a copy, if anything changes) with each AdaptiveAvgPool2d whose windows at this input size are all
    alike and evenly spaced replaced by the AvgPool2d computing the same. Exporters write adaptive pooling with
    windows that overlap (7 → 2: rows 0-3 and 3-6) as GatherND and a 6-D ReduceMean, which OpenVINO's CPU plugin
    runs on its reference kernel: 30 µs of b_resnet_fmnist's first exit, whose whole stage costs 150 µs."""
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Any:
        return lambda _, args: sizes.update({name: tuple(args[0].shape[-2:])})  # None: the input unchanged

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in graph.named_modules()
             if isinstance(m, nn.AdaptiveAvgPool2d)]
    with torch.no_grad():
        graph(torch.zeros(1, *shape))
    for hook in hooks:
        hook.remove()
    fixed = {name: pool for name, size in sizes.items()
             if (pool := _equivalent_avg_pool(graph.get_submodule(name).output_size, size)) is not None}
    if not fixed:
        return graph
    graph = copy.deepcopy(graph)
    for name, pool in fixed.items():
        parent, _, child = name.rpartition(".")
        setattr(graph.get_submodule(parent), child, pool)
    return graph


def _equivalent_avg_pool(output_size: Any, input_size: tuple[int, int]) -> nn.Module | None:
    """The AvgPool2d (Identity, for 1×1 windows) equal to adaptive average pooling from `input_size` to
    `output_size`, or None if none is (PyTorch's window i along a side of n → m: [floor(i·n/m), ceil((i+1)·n/m)))."""
    outputs = output_size if isinstance(output_size, tuple) else (output_size, output_size)
    kernel, stride = [], []
    for n, m in zip(input_size, outputs):
        m = n if m is None else m
        starts = [i * n // m for i in range(m)]
        lengths = {-((-(i + 1) * n) // m) - start for i, start in enumerate(starts)}
        step = starts[1] - starts[0] if m > 1 else 1
        if len(lengths) != 1 or starts != [i * step for i in range(m)]:
            return None
        kernel.append(lengths.pop())
        stride.append(step)
    return nn.Identity() if kernel == [1, 1] else nn.AvgPool2d(tuple(kernel), tuple(stride))


def _feature_shapes(net: MultiExitNet, input_size: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """The input shape (C, H, W) of each stage."""
    shapes, x = [], torch.zeros(1, *input_size)
    with torch.no_grad():
        for stage in net.stages:
            shapes.append(tuple(x.shape[1:]))
            x = stage(x)
    return shapes


# ---------------------------------------------------------------- the export pass

def validation_inputs(ctx: ExportContext, limit: int | None = None) -> tuple[torch.Tensor, np.ndarray] | None:
    """The validation split of the weights' dataset (`ctx.data`, carved from train as training did), preprocessed;
    None when no dataset is known for the weights, one line asking for --data when it is not readable here."""
    if ctx.data is None:
        return None
    _, val = train_val_split(ctx.data.load("train"))
    n = min(limit or len(val), len(val))
    images, labels = val.get_batch(range(n), size=ctx.input_size[1:])
    return preprocess(images, dataclasses.replace(ctx.config, input_size=ctx.input_size)), labels.numpy()


def check_early_exit_form(model: nn.Module, form: str) -> None:
    """Refuse an `--early-exit` form that does not exist, or one asked of a model with a single exit (where the
    early-exit pass does not apply, so its `check` never runs)."""
    if form not in EXPORT_FORMS:
        raise UserError(f"unknown early-exit form {form!r}; use {', '.join(EXPORT_FORMS)}")
    if form != "auto" and not isinstance(model, MultiExitNet):
        raise UserError(f"--early-exit {form} applies to multi-exit (BranchyNet) models, e.g. b_resnet_fmnist; "
                        "this model has one exit: leave the option out")


class EarlyExitStages(Pass):
    """The pipeline pass that makes a multi-exit model's artifact an early-exit one (see the module doc)."""

    name = EARLY_EXIT_PASS

    def __init__(self, budget_pt: float = DEFAULT_BUDGET_PT, val_samples: int | None = None,
                 cost_repeats: int = COST_REPEATS) -> None:
        self.budget_pt, self.val_samples, self.cost_repeats = budget_pt, val_samples, cost_repeats

    def applies(self, ctx: ExportContext) -> bool:
        return isinstance(ctx.reference, MultiExitNet)

    def check(self, ctx: ExportContext) -> None:
        """A precision stages cannot take, a single graph the target cannot have."""
        if ctx.precision not in EARLY_EXIT_PRECISIONS:
            raise UserError(f"early-exit stages export {', '.join(EARLY_EXIT_PRECISIONS)}; {ctx.precision} stage "
                            f"graphs are not supported yet: export the multi-exit model at "
                            f"{', '.join(EARLY_EXIT_PRECISIONS[:-1])} or {EARLY_EXIT_PRECISIONS[-1]}")
        if ctx.early_exit_form == "graph" and ctx.target.name not in graph_targets():
            raise UserError(f"the single early-exit graph is written for targets {', '.join(graph_targets())}, not "
                            f"{ctx.target.name}: use --early-exit stages (or auto) for {ctx.target.name}")

    def run(self, ctx: ExportContext) -> dict[str, Any]:
        net: MultiExitNet = ctx.reference
        shapes = _feature_shapes(net, ctx.input_size)
        calibration = _stage_calibration(ctx, net) if ctx.precision == "int8" else [None] * net.num_exits
        stages, folds = [], []
        for k, (graph, shape, data) in enumerate(zip(stage_graphs(net, ctx.input_size), shapes, calibration)):
            stages.append(self._write_stage(ctx, graph, shape, k, folds, data))
        section = {"stages": stages, "trunk": {"file": ctx.output.model_files[_trunk_format(ctx)]},
                   "thresholds": [0.0] * (len(stages) - 1), "exit_entropy": EXIT_ENTROPY, "exit_rule": EXIT_RULE,
                   "per_precision": {}}
        if ctx.early_exit_form != "stages" and ctx.target.name in graph_targets():
            section["graph"], files = write_graph(ctx.target.name, stages, ctx.staging, shapes[0], ctx.io_dtype)
            ctx.output.files.extend(files)
        ctx.records[self.name] = section   # the manifest's `early_exit`; _tune opens the staging directory by it
        tuning = self._tune(ctx, net)
        section["thresholds"], section["form"] = list(tuning["thresholds"]), tuning["form"]
        section["per_precision"] = {ctx.precision: tuning}
        return {"stages": len(stages), "bn_folded": folds, "thresholds": section["thresholds"],
                "form": section["form"], "exit_fractions_val": tuning.get("exit_fractions"),
                "runtime": tuning.get("runtime")}

    def _write_stage(self, ctx: ExportContext, graph: StageGraph, shape: tuple[int, ...], k: int,
                     folds: list[int], calibration: CalibrationData | None) -> dict[str, Any]:
        folded, report = fold_batchnorm(graph)
        folds.append(report.folded)
        last = graph.head is None
        directory = f"stage{k + 1}"
        (ctx.staging / directory).mkdir()
        stage = stage_context(ctx, graph, folded, shape, ctx.staging / directory)
        stage_pipeline(graph, calibration).run_passes(stage)
        calibrated = stage.records.get(QUANTIZE_PASS)
        ctx.output.files.extend(f"{directory}/{f}" for f in stage.output.files)
        model_files = {fmt: f"{directory}/{f}" for fmt, f in stage.output.model_files.items()}
        return {"file": model_files[_trunk_format(ctx)], **({"int8": _stage_int8(calibrated)} if calibrated else {}),
                "outputs": {"logits": OUTPUT_NAME, "entropy": None if last else "entropy",
                            "features": None if last else "features"},
                "input": {"name": INPUT_NAME, "shape": [BATCH_DIM, *shape], "dtype": ctx.io_dtype},
                "model_files": model_files}

    def _tune(self, ctx: ExportContext, net: MultiExitNet) -> dict[str, Any]:
        """Thresholds for each form the artifact has, on that form's stage costs measured here; the form measured
        faster per sample at its thresholds is the default (unless --early-exit named one)."""
        manifest = ctx.manifest(time.perf_counter(), hash_files=False)
        runtime = ctx.output.default_backend
        forms = ["stages", *(["graph"] if "graph" in ctx.records[self.name] else [])]
        asked = ctx.early_exit_form if ctx.early_exit_form in forms else None
        data = validation_inputs(ctx, self.val_samples)
        if data is None:
            ctx.notes.append("early exit: no validation split for these weights' dataset, so no sample exits "
                             "early (thresholds 0); pass thresholds= to the early_exit session")
            return {"thresholds": [0.0] * (net.num_exits - 1), "runtime": runtime, "form": asked or "stages",
                    "tuned_on": "nothing (no validation split readable here)"}
        inputs, labels = data
        feed = inputs.numpy().astype(ctx.io_dtype)
        budget = self.budget_pt if ctx.exit_budget_pt is None else ctx.exit_budget_pt
        with contextlib.ExitStack() as stack:
            sessions = {f: stack.enter_context(open_session(ctx.staging, manifest, "early_exit", COST_THREADS,
                                                            runtime=runtime, form=f)) for f in forms}
            chunks = [sessions["stages"].exit_outputs(feed[i:i + 256]) for i in range(0, len(feed), 256)]
            entropies = np.concatenate([c[0] for c in chunks], axis=1)
            logits = np.concatenate([c[1] for c in chunks], axis=1)
            predictions = logits.argmax(2)
            stage_ms = {f: s.stage_costs(feed[:1], self.cost_repeats) for f, s in sessions.items()}
            tuned = {f: tune(entropies, predictions, labels, ms, budget) for f, ms in stage_ms.items()}
            graph_check = _graph_agreement(sessions["graph"], feed[:REFERENCE_SAMPLES], entropies, logits) \
                if "graph" in sessions else {}
            for f, session in sessions.items():
                session.thresholds = tuned[f][0].thresholds
            timed = feed[:FORM_TIMING_SAMPLES]
            measured = {f: statistics.mean(ms) for f, ms in
                        interleaved_per_sample_ms({f: s.run for f, s in sessions.items()}, timed, 3).items()}
            executed = sessions["stages"].executed_precision
        with open_session(ctx.staging, manifest, runtime, COST_THREADS, trunk=True) as trunk:
            trunk_ms = median_call_ms(lambda: trunk.run(feed[:1]), self.cost_repeats)
        with torch.no_grad():  # parity of every exit against PyTorch, on the first REFERENCE_SAMPLES images
            reference = [e.numpy() for e in net.eval().forward_exits(inputs[:REFERENCE_SAMPLES])]
        form = asked or min(measured, key=measured.get)
        chosen, front, final = tuned[form]
        forms_record = {f: {"stage_ms": [round(c, 5) for c in stage_ms[f]], "thresholds": list(s.thresholds),
                            "expected_ms": round(s.expected_ms, 5), "accuracy": round(s.accuracy, 3),
                            "exit_fractions": [round(x, 4) for x in s.exit_fractions],
                            "measured_ms": round(measured[f], 5)} for f, (s, _, _) in tuned.items()}
        return {
            "thresholds": list(chosen.thresholds), "runtime": runtime, "executed_precision": executed,
            "form": form, "form_chosen_by": f"asked (--early-exit {asked})" if asked else
            f"the lower mean latency per sample of the forms ({', '.join(forms)}) measured here at batch 1, each at "
            f"its thresholds, over {len(timed)} validation images in 3 interleaved rounds",
            "cost_threads": COST_THREADS, "forms": forms_record,
            **graph_check,
            "tuned_on": f"validation split ({len(labels)} images, carved from train; never the test split)",
            "accuracy_budget_pt": budget, "final_exit_accuracy": round(final, 3),
            "rule": f"fastest setting whose validation loss vs the final exit plus {MARGIN_SE:g} standard error "
                    "of that paired loss is within the budget",
            "accuracy": round(chosen.accuracy, 3), "exit_fractions": [round(f, 4) for f in chosen.exit_fractions],
            "stage_ms": [round(c, 5) for c in stage_ms[form]], "expected_ms": round(chosen.expected_ms, 5),
            "trunk_ms": round(trunk_ms, 5), "expected_speedup_vs_trunk": round(trunk_ms / chosen.expected_ms, 3),
            "exit_accuracy": [round(float(100 * (p == labels).mean()), 3) for p in predictions],
            "exit_agreement_vs_torch": [round(float((p[:len(r)] == r.argmax(1)).mean()), 5)
                                        for p, r in zip(predictions, reference)],
            "exit_logits_max_abs_diff_vs_torch": [float(np.abs(l[:len(r)] - r).max())
                                                  for l, r in zip(logits, reference)],
            "exit_parity_samples": len(reference[0]),
            "sweep": [s._asdict() for s in front],
        }


def _graph_agreement(session: EarlyExitSession, feed: np.ndarray, entropies: np.ndarray,
                     logits: np.ndarray) -> dict[str, Any]:
    """The single graph against the stages, one image at a time, at thresholds where images leave at every exit
    (each exit's median entropy): the share leaving at the exit the rule gives, the largest logit difference."""
    kept = session.thresholds
    session.thresholds = [float(np.median(e)) for e in entropies]
    try:
        results = [session.classify(feed[i:i + 1]) for i in range(len(feed))]
        rule = exit_indices(session.thresholds, entropies[:, :len(feed)])
    finally:
        session.thresholds = kept
    exits = np.concatenate([r.exits for r in results])
    same = exits == rule
    diff = np.concatenate([r.logits for r in results]) - logits[rule, np.arange(len(feed))]
    return {"graph_vs_stages": {"samples": len(feed), "same_exit": round(float(same.mean()), 5),
                                "logits_max_abs_diff": float(np.abs(diff[same]).max()) if same.any() else None}}


def stage_context(parent: ExportContext, graph: StageGraph, module: nn.Module, shape: tuple[int, ...],
                  directory: Path) -> ExportContext:
    """One stage's export, in `directory` inside the parent's staging directory: the stage graph (`module`, folded)
    takes the previous stage's features on a dynamic batch axis, written by the parent's target at its precision.
    INT8 is calibrated as the trunk was (the calibrator the trunk's quantize pass chose, its --placement), without
    --max-drop: a stage has no labels of its own, and the thresholds hold the accuracy of the whole."""
    calibration = None
    if parent.precision == "int8":
        calibration = dataclasses.replace(parent.calibration, max_drop=None, fallback="sensitivity",
                                          calibrator=parent.records[QUANTIZE_PASS].record["calibrator"])
    return ExportContext(reference=graph, module=module, config=parent.config, target=parent.target,
                         precision=parent.precision, staging=directory, input_size=shape, dynamic_batch=True,
                         opset=parent.opset, exporter=parent.exporter, keep_io_types=parent.keep_io_types,
                         calibration=calibration, status=parent.status,
                         output_names=(OUTPUT_NAME,) if graph.head is None else STAGE_OUTPUTS)


def stage_pipeline(graph: StageGraph, calibration: CalibrationData | None) -> Pipeline:
    """The passes that write one stage: the target's files, then (INT8) the quantize pass on `calibration`, with the
    exit's entropy (computed from its logits) kept float, since thresholds are compared with it, and without the
    target's INT8 extras (the trunk carries the artifact's)."""
    keep_float_after = None if graph.head is None else OUTPUT_NAME
    return Pipeline([WriteTarget(), Quantize(data=calibration, keep_float_after=keep_float_after, extras=False)])


def _stage_calibration(ctx: ExportContext, net: MultiExitNet) -> list[CalibrationData]:
    """Each stage's calibration inputs: the trunk's calibration images (the quantize pass's samples) and, for
    stage k > 1, the FP32 features stage k-1 makes of them, as the stage sees them on the device."""
    data = ctx.records[QUANTIZE_PASS].data
    x, sets = torch.from_numpy(data.calibration.inputs), []
    with torch.no_grad():
        for stage in net.eval().stages:
            sets.append(CalibrationData(dataclasses.replace(data.calibration, inputs=x.numpy().astype(np.float32)),
                                        None))
            x = stage(x)
    return sets


def _stage_int8(calibrated: Calibrated) -> dict[str, Any]:
    """A stage's `int8` entry in the manifest: what its quantize pass recorded, in brief."""
    record = calibrated.record
    placed = {k: record[k] for k in ("placement", "nodes_left_in_float_for_speed") if k in record}
    return {"tool": record["tool"], "calibrator": record["calibrator"],
            "calibration_samples": len(calibrated.data.calibration), "float_nodes": record["float_nodes"],
            "entropy_nodes_kept_float": record.get("nodes_kept_float", []), **placed}


def interleaved_per_sample_ms(runs: dict[str, Any], images: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """Each callable's mean ms per image over `rounds` passes over `images` one at a time, the callables taking
    turns in alternating order (after a warm-up), so load on the machine hits all alike: the per-round means."""
    def per_sample(run: Any, batch: np.ndarray) -> float:
        t0 = time.perf_counter()
        for i in range(len(batch)):
            run(batch[i:i + 1])
        return 1000 * (time.perf_counter() - t0) / len(batch)

    for run in runs.values():
        per_sample(run, images[:20])
    means: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
            means[name].append(per_sample(runs[name], images))
    return means


def _trunk_format(ctx: ExportContext) -> str:
    """The model format the target's default backend reads (the file the manifest names for each graph)."""
    return BACKENDS[ctx.output.default_backend].pick_format({"model_files": ctx.output.model_files}) \
        or next(iter(ctx.output.model_files))


__all__ = ["EarlyExitStages", "StageGraph", "check_early_exit_form", "interleaved_per_sample_ms", "stage_context",
           "stage_graphs", "stage_pipeline", "validation_inputs"]
