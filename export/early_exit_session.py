"""The early-exit session: a BranchyNet artifact's exit loop on the device, on any runtime edgecnn runs.

    with runtime.load("artifacts/b_resnet", backend="early_exit") as s:   # runtime: the target's backend
        result = s.classify(batch)        # .logits of each sample's exit, .exits (0-based stage index)
    runtime.load("artifacts/b_resnet", backend="early_exit", form="stages")   # the other form

It reads the manifest's `early_exit` section (written by the export pass, `edgecnn.export.early_exit`): the stage
files in order, their output names, the thresholds, and the single graph (`early_exit_graph.py`) where the target has
one; it opens each graph as a model file (`runtime.open_model`) on the chosen runtime. This module imports no torch
and no export pass, so the runtime registers it (`backend="early_exit"`) when it loads.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from edgecnn.errors import UserError
from edgecnn.export.early_exit_graph import GRAPH_BATCH, THRESHOLDS_INPUT
from edgecnn.export.graph_io import INPUT_NAME, OUTPUT_NAME
from edgecnn.export.manifest import artifact_file
from edgecnn.export.runtime import BACKENDS, InputSpec, ModelSpec, Session, open_model, register_backend
from edgecnn.validation import check_thresholds

STAGE_OUTPUTS = (OUTPUT_NAME, "entropy", "features")   # an early exit's stage graph; the last returns the logits
COST_REPEATS = 200            # batch-1 calls timed per stage


class EarlyExitResult(NamedTuple):
    logits: np.ndarray   # N×classes, float32: each sample's logits at the exit it took
    exits: np.ndarray    # N, int: the 0-based stage each sample left at


def _open_graph(directory: Path, manifest: dict[str, Any], record: dict[str, Any], fmt: str, runtime: str,
                threads: int | None, common: dict[str, Any]) -> Session:
    """A session on one of the artifact's graphs (a stage, or the single graph): its `fmt` file opened as a model
    file (`runtime.open_model`) at the artifact's precision, taking the input its record names."""
    return open_model(artifact_file(directory, record["model_files"][fmt]), runtime, precision=manifest["precision"],
                      input=record["input"], model_format=fmt, threads=threads, **common)


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
    opens_model_files = False  # it runs an artifact's stage files, named by its manifest

    def __init__(self, model: ModelSpec, threads: int | None = None, runtime: str | None = None,
                 thresholds: Sequence[float] | None = None, form: str | None = None, **common: Any) -> None:
        super().__init__(model, **common)
        directory, manifest = self.directory, self.manifest
        section = manifest["early_exit"]
        self.runtime = runtime or manifest["default_backend"]
        inner = BACKENDS.get(self.runtime)
        if inner is None or inner.runs_early_exit:
            runtimes = sorted(n for n, c in BACKENDS.items() if not c.runs_early_exit)
            raise UserError(f"runtime={self.runtime!r} cannot run early-exit stages; choose one of {', '.join(runtimes)}")
        self.form = _check_form(form, section)
        self.stage_records = section["stages"]
        # Stage 1 takes the images at any batch size (the loop shrinks batches), whatever the trunk was exported for.
        self.input_spec = InputSpec.from_record({**self.stage_records[0]["input"], "layout": "NCHW"})
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
                self._stages.append(_open_graph(directory, manifest, stage, fmt, self.runtime, self.stage_threads,
                                                common))
            self._check_chain()
            if self.form == "graph":
                graph = section["graph"]
                fmt = _graph_format(inner, graph, "the single graph", manifest, self.runtime)
                _check_graph_file(directory, manifest, graph, fmt, "the single graph")
                self._graph = _open_graph(directory, manifest, graph, fmt, self.runtime, threads, common)
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


def median_call_ms(call: Any, repeats: int, warmup: int = 10) -> float:
    """Median milliseconds of `repeats` calls, after `warmup` untimed ones."""
    times = []
    for _ in range(repeats + warmup):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times[warmup:]))


__all__ = ["COST_REPEATS", "EarlyExitResult", "EarlyExitSession", "FORMS", "STAGE_OUTPUTS", "form_thresholds",
           "median_call_ms"]
