"""BranchyNet early exit on the device: per-stage graphs, thresholds tuned on the artifact, the exit loop.

Export (the `early_exit` pass of the pipeline, for a `MultiExitNet`): the pipeline's own passes write the
trunk (the final-exit path as one graph, `model.onnx` / `model.xml`), and this pass writes one graph per
stage through the same target into `stageK/`: stage k < N takes the previous stage's features and returns
`logits`, `entropy` (softmax, natural log, computed in the graph in float32) and `features`; the last stage
returns `logits`. It then measures each stage's cost on the target's runtime at this precision, runs the
validation split (never the test split) through the exported stages, and picks the N-1 thresholds that
minimise expected latency within an accuracy budget (default 0.5 pt below the final exit alone).

    with runtime.load("artifacts/b_resnet", backend="early_exit") as s:   # runtime: the target's backend
        result = s.classify(batch)        # .logits of each sample's exit, .exits (0-based stage index)
    runtime.load("artifacts/b_resnet", backend="early_exit", form="stages")   # the other form

INT8: the quantize pass quantizes the trunk (choosing the calibrator), then each stage graph is quantized by
the same target's quantizer with that calibrator, on the same calibration images as the stage sees them (the
FP32 features of the stages before it); each exit's entropy stays float. Thresholds are then tuned on the INT8
stages themselves, as for every precision.

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
import itertools
import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn

from edgecnn.branchynet import EXIT_ENTROPY, EXIT_RULE, MultiExitNet, check_thresholds, softmax_entropy
from edgecnn.data import preprocess, train_val_split
from edgecnn.errors import UserError
from edgecnn.calibration import CalibrationData, CalibrationOptions
from edgecnn.export.fold import fold_batchnorm
from edgecnn.export.early_exit_graph import GRAPH_BATCH, THRESHOLDS_INPUT, graph_targets, write_graph
from edgecnn.export.manifest import artifact_file
from edgecnn.export.onnx_graph import BATCH_DIM, INPUT_NAME, OUTPUT_NAME
from edgecnn.export.quantize import GraphInput, ModelFiles, get_quantizer, quantize_model
from edgecnn.export.runtime import BACKENDS, InputSpec, Session, open_session, register_backend

if TYPE_CHECKING:
    from edgecnn.export.pipeline import ExportContext

STAGE_OUTPUTS = (OUTPUT_NAME, "entropy", "features")
DEFAULT_BUDGET_PT = 0.5
MARGIN_SE = 1.0               # standard errors of the validation loss kept back from the budget (see choose)
EARLY_EXIT_PRECISIONS = ("fp32", "fp16", "int8")
CANDIDATES_PER_EXIT = 40      # entropy quantiles tried per exit (plus "nobody leaves" and "everybody leaves")
COST_REPEATS = 200            # batch-1 calls timed per stage
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


# ---------------------------------------------------------------- thresholds

class Setting(NamedTuple):
    thresholds: tuple[float, ...]
    accuracy: float               # percent, on the validation split
    expected_ms: float            # mean per-sample latency at batch 1 from the measured stage costs
    exit_fractions: tuple[float, ...]
    loss_se_pt: float = 0.0       # standard error (points) of the accuracy lost vs the final exit, paired


def evaluate_setting(thresholds: Sequence[float], entropies: np.ndarray, predictions: np.ndarray,
                     labels: np.ndarray, stage_ms: Sequence[float]) -> Setting:
    """Accuracy, exit fractions and expected latency of one threshold setting on precomputed exit outputs:
    `entropies` (exits-1, S), `predictions` (exits, S); a sample pays every stage up to its exit."""
    n_exits, n = predictions.shape
    exit_at = exit_indices(thresholds, entropies)
    correct = predictions[exit_at, np.arange(n)] == labels
    fractions = np.bincount(exit_at, minlength=n_exits) / n
    final = predictions[-1] == labels
    lost, gained = int((final & ~correct).sum()), int((~final & correct).sum())
    se = 100 * math.sqrt(max(0.0, lost + gained - (lost - gained) ** 2 / n)) / n
    return Setting(tuple(float(t) for t in thresholds), float(100 * correct.mean()),
                   expected_ms(fractions, stage_ms), tuple(float(f) for f in fractions), se)


def expected_ms(exit_fractions: Sequence[float], stage_ms: Sequence[float]) -> float:
    """Mean latency per sample at batch 1 when these shares of the samples leave at each exit: a sample pays every
    stage up to its exit (the cost of stage k weighs by the share still in at k)."""
    reach = 1.0 - np.concatenate([[0.0], np.cumsum(exit_fractions)[:-1]])
    return float(np.dot(reach, stage_ms))


def exit_indices(thresholds: Sequence[float], entropies: np.ndarray) -> np.ndarray:
    """The exit rule on precomputed (exits-1, S) entropies: each sample's 0-based exit."""
    exit_at = np.full(entropies.shape[1], len(thresholds))
    for k in reversed(range(len(thresholds))):
        exit_at[entropies[k] < thresholds[k]] = k
    return exit_at


def candidate_thresholds(entropy: np.ndarray, count: int = CANDIDATES_PER_EXIT) -> list[float]:
    """0 (nobody leaves), entropy quantiles of the split (as midpoints, so each is a real cut), ln C + 1."""
    qs = np.quantile(entropy, np.linspace(0, 1, count + 1)[1:-1])
    return sorted({0.0, *(round(float(q), 6) for q in qs), round(float(entropy.max()) + 1.0, 6)})


def sweep(entropies: np.ndarray, predictions: np.ndarray, labels: np.ndarray,
          stage_ms: Sequence[float]) -> list[Setting]:
    """Every combination of candidate thresholds, evaluated."""
    grids = [candidate_thresholds(e) for e in entropies]
    return [evaluate_setting(t, entropies, predictions, labels, stage_ms) for t in itertools.product(*grids)]


def pareto(settings: Sequence[Setting]) -> list[Setting]:
    """The settings no other beats on both accuracy and expected latency, fastest first."""
    front: list[Setting] = []
    for s in sorted(settings, key=lambda s: (s.expected_ms, -s.accuracy)):
        if not front or s.accuracy > front[-1].accuracy:
            front.append(s)
    return front


def choose(settings: Sequence[Setting], final_accuracy: float, budget_pt: float,
           margin_se: float = MARGIN_SE) -> Setting:
    """The fastest setting whose loss against the final exit, plus `margin_se` standard errors of that paired
    loss, is at most `budget_pt` (ties: the more accurate). The margin is there because the thresholds are
    tuned on the validation split and judged on images they never saw: a setting that spends the whole budget
    on validation overshoots it on new images about half the time."""
    allowed = [s for s in settings if final_accuracy - s.accuracy + margin_se * s.loss_se_pt <= budget_pt + 1e-9]
    return min(allowed, key=lambda s: (s.expected_ms, -s.accuracy))


def tune(entropies: np.ndarray, predictions: np.ndarray, labels: np.ndarray, stage_ms: Sequence[float],
         budget_pt: float = DEFAULT_BUDGET_PT) -> tuple[Setting, list[Setting], float]:
    """(chosen setting, Pareto sweep, final exit's accuracy) on one split's exit outputs."""
    if not (math.isfinite(budget_pt) and budget_pt >= 0):
        raise UserError(f"the accuracy budget is {budget_pt} points; give a finite number ≥ 0")
    final = float(100 * (predictions[-1] == labels).mean())
    settings = sweep(entropies, predictions, labels, stage_ms)
    return choose(settings, final, budget_pt), pareto(settings), final


# ---------------------------------------------------------------- the session

class EarlyExitResult(NamedTuple):
    logits: np.ndarray   # N×classes, float32: each sample's logits at the exit it took
    exits: np.ndarray    # N, int: the 0-based stage each sample left at


def _stage_manifest(manifest: dict[str, Any], stage: dict[str, Any], fmt: str) -> dict[str, Any]:
    """A plain manifest for one stage graph, so any registered backend opens it."""
    body = {k: v for k, v in manifest.items() if k != "early_exit"}
    return {**body, "input": stage["input"], "model_files": {fmt: stage["model_files"][fmt]}}


@register_backend
class EarlyExitSession(Session):
    """Runs an early-exit artifact in one of its two forms (`form`, default the manifest's):

    - "stages": stage 1 runs on the batch; samples whose exit entropy is at or above the threshold go on, the rest
      leave with that exit's logits; the next stage runs on the shrunken batch only, and so on (one call per stage).
    - "graph": one call of the single graph (early_exit_graph.py) runs exactly the stages the sample needs. It takes
      batch 1; a larger batch, whose samples may leave at different stages, runs through the stages.

    Options: `runtime` (the backend the graphs run on; default the artifact's), `form`, `thresholds` (override the
    tuned ones), `threads` (the single graph's; stages get one each where the runtime's sessions own their pools),
    `check_finite`.
    """

    name = "early_exit"
    formats = ("early_exit",)
    runs_early_exit = True

    def __init__(self, directory: Path, manifest: dict[str, Any], model_format: str, threads: int | None = None,
                 runtime: str | None = None, thresholds: Sequence[float] | None = None, form: str | None = None,
                 **common: Any) -> None:
        super().__init__(directory, manifest, model_format, **common)
        section = manifest["early_exit"]
        self.runtime = runtime or manifest["default_backend"]
        inner = BACKENDS.get(self.runtime)
        if inner is None or inner.runs_early_exit:
            runtimes = sorted(n for n, c in BACKENDS.items() if not c.runs_early_exit)
            raise UserError(f"runtime={self.runtime!r} cannot run early-exit stages; choose one of {', '.join(runtimes)}")
        self.form = _check_form(form, section)
        self.stage_records = section["stages"]
        # Stage 1 takes the images at any batch size (the loop shrinks batches), whatever the trunk was exported for.
        self.input_spec = InputSpec.from_manifest({"input": {**self.stage_records[0]["input"], "layout": "NCHW"}})
        self.thresholds = section["thresholds"] if thresholds is None else thresholds
        if thresholds is None and self.form != section.get("form", "stages"):
            self.thresholds = form_thresholds(manifest, self.form) or self.thresholds
        self.threads = threads
        # Separate pools spinning on the same cores cost more than a stage gains from a second thread (b_resnet on
        # ONNX Runtime, 2 cores, 2 threads: 0.29 ms per sample with a 2-thread pool per stage, 0.16 ms with one).
        self.stage_threads = threads if inner.shares_threads else 1
        self._stages: list[Session] = []
        self._graph: Session | None = None
        try:
            for k, stage in enumerate(self.stage_records):
                fmt = _graph_format(inner, stage, f"stage {k + 1}", manifest, self.runtime)
                _check_graph_file(directory, manifest, stage, fmt, f"stage {k + 1}'s graph")
                self._stages.append(open_session(directory, _stage_manifest(manifest, stage, fmt), self.runtime,
                                                 self.stage_threads, **common))
            self._check_chain()
            if self.form == "graph":
                graph = section["graph"]
                fmt = _graph_format(inner, graph, "the single graph", manifest, self.runtime)
                _check_graph_file(directory, manifest, graph, fmt, "the single graph")
                self._graph = open_session(directory, _stage_manifest(manifest, graph, fmt), self.runtime, threads,
                                           **common)
                self._check_graph()
        except BaseException:
            self.close()
            raise

    @property
    def thresholds(self) -> list[float]:
        return self._thresholds

    @thresholds.setter
    def thresholds(self, values: Sequence[float]) -> None:
        """Checked, and kept as the float32 array the single graph takes (the stages compare in float32 too)."""
        self._thresholds = check_thresholds(values, len(self.manifest["early_exit"]["stages"]))
        self._threshold_feed = np.asarray(self._thresholds, dtype=np.float32)

    @classmethod
    def pick_format(cls, manifest: dict[str, Any]) -> str | None:
        if "early_exit" not in manifest:
            raise UserError(f"this {manifest['target']} artifact of {manifest['model']['name']} has no early_exit "
                            "section (it is a plain network): load it with backend="
                            f"{manifest['default_backend']!r}, or export a multi-exit model (e.g. b_resnet_fmnist)")
        return "early_exit"

    @property
    def model_path(self) -> Path:
        section = self.manifest["early_exit"]
        record = section["graph"] if self.form == "graph" else section["stages"][0]
        return self.directory / record["file"]

    def _check_chain(self) -> None:
        """Feed zeros through the stages in order: each must take the previous one's features (a swapped or
        foreign stage file fails here, in one line, instead of inside the loop); warms the runtimes up."""
        x = np.zeros([1, *self.stage_records[0]["input"]["shape"][1:]], dtype=self.input_spec.dtype)
        classes = self.manifest["model"]["num_classes"]
        for k, (stage, record) in enumerate(zip(self._stages, self.stage_records)):
            expected = (1, *record["input"]["shape"][1:])
            what = f"stage {k + 1} ({record['file']})"
            if x.shape != expected:
                raise UserError(f"{what} takes {_dims(expected)} features but stage {k} gives {_dims(x.shape)}: the "
                                "stage files are swapped or come from another export; export again")
            try:
                outputs = stage._run_all(x)
            except Exception as e:  # runtimes raise their own types for a graph fed the wrong shape
                raise UserError(f"{what} rejects the features of stage {k} ({str(e).splitlines()[0][:120]}): the "
                                "stage files are swapped or come from another export; export again") from e
            last = k == len(self._stages) - 1
            if len(outputs) != (1 if last else len(STAGE_OUTPUTS)) or outputs[0].shape != (1, classes):
                raise UserError(f"{what} returns {len(outputs)} output(s) of shapes "
                                f"{[_dims(o.shape) for o in outputs]}, not what stage {k + 1} of {len(self._stages)} "
                                "returns: the stage files are swapped or come from another export; export again")
            x = outputs[-1] if not last else x

    def _check_graph(self) -> None:
        """Run the single graph once on zeros: it must return one sample's logits and its exit (warms it up too)."""
        x = np.zeros([GRAPH_BATCH, *self.stage_records[0]["input"]["shape"][1:]], dtype=self.input_spec.dtype)
        what = f"the single graph ({self.manifest['early_exit']['graph']['file']})"
        try:
            outputs = self._run_graph(x)
        except Exception as e:  # runtimes raise their own types for a graph fed what it does not take
            raise UserError(f"{what} does not run as an early-exit graph ({str(e).splitlines()[0][:120]}): it is "
                            "damaged or comes from another export; export again") from e
        classes = self.manifest["model"]["num_classes"]
        if [o.shape for o in outputs] != [(GRAPH_BATCH, classes), (GRAPH_BATCH,)]:
            raise UserError(f"{what} returns outputs of shapes {[_dims(o.shape) for o in outputs]}, not one sample's "
                            f"{classes} logits and its exit: it comes from another export; export again")

    def _run_graph(self, x: np.ndarray) -> list[np.ndarray]:
        return self._graph._run_feeds({INPUT_NAME: x, THRESHOLDS_INPUT: self._threshold_feed})

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._graph is not None and batch.shape[0] == GRAPH_BATCH:  # the logits, without the exit's bookkeeping
            return self._run_graph(batch)[0]
        return self._classify(batch).logits

    def classify(self, batch: Any) -> EarlyExitResult:
        """Each sample's logits at its exit, and the exit (0-based stage index)."""
        if self._closed:
            raise UserError(f"the {self.name} session of {self.directory} is closed")
        return self._classify(self.input_spec.validate(batch, self.check_finite))

    def _classify(self, x: np.ndarray) -> EarlyExitResult:
        if self._graph is not None and x.shape[0] == GRAPH_BATCH:
            logits, exits = self._run_graph(x)
            return EarlyExitResult(logits.astype(np.float32, copy=False), exits.astype(np.int64, copy=False))
        n = x.shape[0]
        last = len(self._stages) - 1
        logits = np.empty((n, self.manifest["model"]["num_classes"]), dtype=np.float32)
        exits = np.full(n, last)
        index = np.arange(n)
        for k, stage in enumerate(self._stages):
            if k == last:
                logits[index] = stage._run_all(x)[0]
                break
            exit_logits, entropy, features = stage._run_all(x)
            leave = entropy < self._threshold_feed[k]
            if leave.all():
                logits[index], exits[index] = exit_logits, k
                break
            if leave.any():
                logits[index[leave]], exits[index[leave]] = exit_logits[leave], k
                stay = ~leave
                index, features = index[stay], features[stay]
            x = features
        return EarlyExitResult(logits, exits)

    def exit_outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every exit for the whole batch, as the threshold search needs: (entropies (exits-1, N), logits
        (exits, N, classes)); no sample leaves."""
        x, entropies, logits = self.input_spec.validate(batch, self.check_finite), [], []
        for k, stage in enumerate(self._stages):
            outputs = stage._run_all(x)
            logits.append(outputs[0].astype(np.float32))
            if k < len(self._stages) - 1:
                entropies.append(outputs[1].astype(np.float32))
                x = outputs[2]
        return np.stack(entropies), np.stack(logits)

    def stage_costs(self, sample: np.ndarray, repeats: int = COST_REPEATS) -> list[float]:
        """Milliseconds each stage adds for one sample at batch 1 in this session's form, exit decision included:
        staged, the median of `repeats` calls of each stage after a warm-up; as one graph, the differences between
        the medians of the graph run with thresholds that send the sample out at each exit in turn."""
        x = self.input_spec.validate(sample[:1], self.check_finite)
        if self._graph is not None:
            paths = self.path_costs(x, repeats)
            return [max(0.0, b - a) for a, b in zip([0.0, *paths[:-1]], paths)]
        costs = []
        for k, stage in enumerate(self._stages):
            if k < len(self.thresholds):  # an exit stage: its call and the exit decision
                call = lambda: bool(stage._run_all(x)[1][0] < self._threshold_feed[k])  # noqa: B023 (called now)
            else:
                call = lambda: stage._run_all(x)  # noqa: B023
            costs.append(median_call_ms(call, repeats))
            x = stage._run_all(x)[-1]
        return costs

    def path_costs(self, sample: np.ndarray, repeats: int = COST_REPEATS) -> list[float]:
        """Milliseconds of one batch-1 call of this session (input check included) through the single graph for a
        sample that leaves at each exit in turn (median of `repeats` after a warm-up): thresholds 0 before that exit
        (nobody leaves) and above ln(classes) at it (everybody)."""
        kept = self.thresholds
        above = math.log(self.manifest["model"]["num_classes"]) + 1.0
        try:
            paths = []
            for k in range(len(self._stages)):
                self.thresholds = [0.0] * k + [above] * (len(self._stages) - 1 - k)
                paths.append(median_call_ms(lambda: self.classify(sample), repeats))
        finally:
            self.thresholds = kept
        return paths

    def info(self) -> dict[str, Any]:
        inner = (self._graph or (self._stages[0] if self._stages else None))
        inner_info = inner.info() if inner else {}
        return {**super().info(), "runtime": self.runtime, "form": self.form, "stages": len(self.stage_records),
                "thresholds": self.thresholds, "threads": self.threads or "default",
                "stage_threads": self.stage_threads or "default",
                "runtime_info": {k: v for k, v in inner_info.items() if k not in ("backend", "model_file")}}

    def _executed_precision(self) -> str:
        return self._stages[0].executed_precision

    def close(self) -> None:
        for session in (*self._stages, *([self._graph] if self._graph else [])):
            session.close()
        self._stages, self._graph = [], None
        super().close()


FORMS = ("graph", "stages")


def _check_form(form: str | None, section: dict[str, Any]) -> str:
    """The form to run: the one asked for, else the manifest's (artifacts from before the single graph: stages)."""
    chosen = section.get("form", "stages") if form is None else form
    if chosen not in FORMS:
        raise UserError(f"unknown early-exit form {form!r}; use 'graph' (one call per sample) or 'stages'")
    if chosen == "graph" and "graph" not in section:
        raise UserError("this early-exit artifact has no single graph (it was exported with --early-exit stages, "
                        "or for a target without one): load it with form='stages', or export again with "
                        "--early-exit graph")
    return chosen


def form_thresholds(manifest: dict[str, Any], form: str) -> list[float] | None:
    """The thresholds export tuned for `form` on the stage costs of that form, if it recorded them."""
    tuning = manifest["early_exit"].get("per_precision", {}).get(manifest["precision"], {})
    return (tuning.get("forms", {}).get(form) or {}).get("thresholds")


def _graph_format(inner: type[Session], record: dict[str, Any], what: str, manifest: dict[str, Any],
                  runtime: str) -> str:
    fmt = inner.pick_format({"model_files": record["model_files"]})
    if fmt is None:
        raise UserError(f"{what} has no {' or '.join(inner.formats)} file for runtime {runtime!r}; use "
                        f"runtime={manifest['default_backend']!r}")
    return fmt


def _dims(shape: Sequence[Any]) -> str:
    return "×".join(str(d) for d in shape)


def _check_graph_file(directory: Path, manifest: dict[str, Any], record: dict[str, Any], fmt: str, what: str) -> None:
    name = record["model_files"][fmt]
    if name not in manifest["files"]:
        raise UserError(f"{what} {name!r} is not among the artifact's files; the manifest is damaged: export again")
    if not artifact_file(Path(directory), name).is_file():
        raise UserError(f"{what} {Path(directory) / name} is missing; the artifact is incomplete: export again")


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


class EarlyExitStages:
    """The pipeline pass that makes a multi-exit model's artifact an early-exit one (see the module doc)."""

    name = "early_exit"

    def __init__(self, budget_pt: float = DEFAULT_BUDGET_PT, val_samples: int | None = None,
                 cost_repeats: int = COST_REPEATS) -> None:
        self.budget_pt, self.val_samples, self.cost_repeats = budget_pt, val_samples, cost_repeats

    def applies(self, ctx: ExportContext) -> bool:
        return isinstance(ctx.reference, MultiExitNet)

    @staticmethod
    def check(model: Any, precision: str, target: str = "onnx", form: str = "auto") -> None:
        """Refuse, before any export work (INT8 calibration takes minutes), a precision stages cannot take and a
        form the model or target cannot have."""
        if form not in EXPORT_FORMS:
            raise UserError(f"unknown early-exit form {form!r}; use {', '.join(EXPORT_FORMS)}")
        if not isinstance(model, MultiExitNet):
            if form != "auto":
                raise UserError(f"--early-exit {form} applies to multi-exit (BranchyNet) models, e.g. "
                                "b_resnet_fmnist; this model has one exit: leave the option out")
            return
        if precision not in EARLY_EXIT_PRECISIONS:
            raise UserError(f"early-exit stages export {', '.join(EARLY_EXIT_PRECISIONS)}; {precision} stage "
                            f"graphs are not supported yet: export the multi-exit model at "
                            f"{', '.join(EARLY_EXIT_PRECISIONS[:-1])} or {EARLY_EXIT_PRECISIONS[-1]}")
        if form == "graph" and target not in graph_targets():
            raise UserError(f"the single early-exit graph is written for targets {', '.join(graph_targets())}, not "
                            f"{target}: use --early-exit stages (or auto) for {target}")

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
        ctx.early_exit = section
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
        sub = dataclasses.replace(ctx, reference=graph, module=folded, staging=ctx.staging / directory,
                                  input_size=shape, dynamic_batch=True, batch=1, passes=[], parity=[], notes=[],
                                  output=None, early_exit=None,
                                  output_names=(OUTPUT_NAME,) if last else STAGE_OUTPUTS)
        out = ctx.target.write(sub)
        quantized = None
        if calibration:
            quantized = _quantize_stage(dataclasses.replace(sub, output=out), calibration, last)
            ctx.target.finish_int8(sub, out)
        ctx.output.files.extend(f"{directory}/{f}" for f in out.files)
        model_files = {fmt: f"{directory}/{f}" for fmt, f in out.model_files.items()}
        return {"file": model_files[_trunk_format(ctx)], **({"int8": quantized} if quantized else {}),
                "outputs": {"logits": OUTPUT_NAME, "entropy": None if last else "entropy",
                            "features": None if last else "features"},
                "input": {"name": INPUT_NAME, "shape": [BATCH_DIM, *shape], "dtype": ctx.io_dtype},
                "model_files": model_files}

    def _tune(self, ctx: ExportContext, net: MultiExitNet) -> dict[str, Any]:
        """Thresholds for each form the artifact has, on that form's stage costs measured here; the form measured
        faster per sample at its thresholds is the default (unless --early-exit named one)."""
        manifest = ctx.manifest(time.perf_counter(), hash_files=False)
        runtime = ctx.output.default_backend
        forms = ["stages", *(["graph"] if "graph" in ctx.early_exit else [])]
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


def _stage_calibration(ctx: ExportContext, net: MultiExitNet) -> list[CalibrationData]:
    """Each stage's calibration inputs: the trunk's calibration images (the quantize pass's samples) and, for
    stage k > 1, the FP32 features stage k-1 makes of them, as the stage sees them on the device."""
    data = ctx.calibration_data
    x, sets = torch.from_numpy(data.calibration.inputs), []
    with torch.no_grad():
        for stage in net.eval().stages:
            sets.append(CalibrationData(dataclasses.replace(data.calibration, inputs=x.numpy().astype(np.float32)),
                                        None))
            x = stage(x)
    return sets


def _quantize_stage(sub: ExportContext, data: CalibrationData, last: bool) -> dict[str, Any]:
    """Quantize one stage graph in place as the trunk was (`quantize_model`: the calibrator the trunk's quantize pass
    chose, and its --placement, so a stage's layers measured slower in INT8 here stay float as the trunk's do); the
    exit's entropy (computed from its logits) stays float, since thresholds are compared with it. A stage has no
    labels of its own: --max-drop is the trunk's, and the thresholds hold the accuracy of the whole."""
    quantizer = get_quantizer(sub.target.name)
    options = dataclasses.replace(sub.calibration or CalibrationOptions(),
                                  calibrator=sub.calibration_record["calibrator"], max_drop=None, fallback="sensitivity")
    files = ModelFiles.of(quantizer, sub.staging, sub.output.model_files[quantizer.model_format])
    kept = [] if last else quantizer.nodes_after(files.model, OUTPUT_NAME)
    record = quantize_model(quantizer, files, GraphInput.of_context(sub), data, options,
                            backend=sub.output.default_backend, exclude=kept, status=sub.status)
    placed = {k: record[k] for k in ("placement", "nodes_left_in_float_for_speed") if k in record}
    return {"tool": quantizer.tool, "calibrator": record["calibrator"], "calibration_samples": len(data.calibration),
            "float_nodes": record["float_nodes"], "entropy_nodes_kept_float": kept, **placed}


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


def median_call_ms(call: Any, repeats: int, warmup: int = 10) -> float:
    """Median milliseconds of `repeats` calls, after `warmup` untimed ones."""
    times = []
    for _ in range(repeats + warmup):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times[warmup:]))


def _trunk_format(ctx: ExportContext) -> str:
    """The model format the target's default backend reads (the file the manifest names for each graph)."""
    return BACKENDS[ctx.output.default_backend].pick_format({"model_files": ctx.output.model_files}) \
        or next(iter(ctx.output.model_files))


__all__ = ["EarlyExitResult", "EarlyExitSession", "EarlyExitStages", "FORMS", "Setting", "StageGraph",
           "candidate_thresholds", "choose", "evaluate_setting", "exit_indices", "expected_ms", "form_thresholds",
           "interleaved_per_sample_ms", "pareto", "stage_graphs", "sweep", "tune", "validation_inputs"]
