"""The benchmark harness: export (or reuse) artifacts, time them in interleaved rounds, measure accuracy.

    from edgecnn.benchmarks import SweepSettings, run_sweep
    results = run_sweep(SweepSettings(models=["resnet18_fmnist"], runtimes=["onnxruntime", "openvino"],
                                      precisions=["fp32", "fp16"], batches=[1, 8], iters=200), out="r18.json")

A configuration is model × runtime × precision × batch × threads (× peer). Runtimes run the
artifacts of one export target each (`RUNTIMES`); which precisions a runtime can do comes from its
target's registry entry, so a precision a target gains is benchmarked without touching this file,
and a combination it lacks is listed as skipped with the reason. The configurations of one model
and batch are opened together and timed in rounds (A B C A B C …) so drift on a shared machine hits
all alike; threads are pinned through each runtime's own option. Results are written after every
(model, batch), atomically, so Ctrl-C keeps what finished. An artifact that is more than one graph (early
exit) is handled by the extension registered for its manifest section (`RECORD_EXTENSIONS`), never by
special cases here.

A MODEL is any form `edgecnn.model_ref` resolves (a zoo name or pattern, a checkpoint, an ONNX file, an artifact
folder, side by side in one run); `models.BenchModel` knows its weights, the dataset its accuracy is measured on
(the weights' own unless --data names another, said in every record with the weights' SHA-256), its artifacts
and its FP32 reference.
"""
from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
import os
import resource
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from edgecnn.benchmarks import peers as peer_builders
from edgecnn.benchmarks.machine import all_tool_versions, describe, machine_info, same_machine
from edgecnn.benchmarks.models import BenchModel, bench_model
from edgecnn.benchmarks.schema import (RESULTS_KIND, SCHEMA_VERSION, ResultsWriteError, check_output, config_name,
                                       probe_writable, read_results, write_results)
from edgecnn.benchmarks.stats import latency_stats, round_spread
from edgecnn.errors import UserError
from edgecnn.export.backends import BACKENDS
from edgecnn.registries import Registry
from edgecnn.validation import non_negative_float, positive_float, positive_int

if TYPE_CHECKING:
    from edgecnn.calibration import CalibrationOptions
    from edgecnn.model_ref import Description, WeightsData

DEFAULT_CACHE = Path("artifacts/bench")
DEFAULT_ROUNDS = 5
REFERENCE_BATCH = 256   # batch of the eager PyTorch FP32 pass that gives the reference predictions
PREPROCESSED_CACHE_MB = 1024  # test inputs kept preprocessed per model input (Fashion-MNIST: 31 MB)
CALIBRATED_PRECISION = "int8"  # the precision whose exports calibrate on data (edgecnn.export's quantize pass)


@dataclass(frozen=True)
class Runtime:
    """A runtime backend and the export target whose artifacts it runs (None: the PyTorch reference)."""
    name: str
    target: str | None
    unavailable: Callable[[], str | None]

    @property
    def precisions(self) -> tuple[str, ...]:
        from edgecnn.export.targets import TARGETS

        return TARGETS[self.target].precisions if self.target else ("fp32",)

    def precision_missing(self, precision: str) -> str | None:
        if precision in self.precisions:
            return None
        if self.target is None:
            return "torch is the eager FP32 reference; it runs fp32 only"
        return f"the {self.target} target exports {', '.join(self.precisions)}, not {precision}"

    def calibration_missing(self, precision: str, calibration: CalibrationOptions) -> str | None:
        """Why this runtime's target cannot calibrate `precision` as asked (a calibrator its quantizer lacks)."""
        if precision != CALIBRATED_PRECISION or self.target is None:
            return None
        from edgecnn.export.quantize import check_int8

        try:
            check_int8(self.target, calibration)
        except UserError as e:
            return str(e)
        return None


# One per backend (`edgecnn.export.backends`), the eager reference first.
RUNTIMES: dict[str, Runtime] = {b.name: Runtime(b.name, b.target_name, b.unavailable) for b in BACKENDS.values()}
# The torch reference rebuilds the model from the weight record of this target's FP32 artifact.
REFERENCE_TARGET = "onnx"

class RecordExtension:
    """How the harness times an artifact that is more than one graph, registered for the manifest section that
    marks it (`register_record_extension`), so the harness itself has no case per kind of artifact."""

    def prepare(self, config: Config) -> list[Config]:
        """Set how `config` opens and is fed (backend, options, variant, varied_inputs); return the configurations
        to time beside it in the same interleaved rounds (a baseline), whose records `extend` receives."""
        return []

    def extend(self, config: Config, record: dict[str, Any], companions: list[dict[str, Any] | None],
               sweep: Sweep) -> dict[str, Any]:
        """Fields merged into `config`'s record; `companions` are the records of what `prepare` returned
        (None where one could not be measured)."""
        return {}

    def table(self, records: list[dict[str, Any]], with_machine: bool = False) -> tuple[list[str], list[list[Any]]]:
        """(headers, rows) summarising the records this extension made, for `edgecnn bench`'s output."""
        return [], []


# Filled by the modules that know such artifacts (edgecnn.benchmarks.early_exit_record registers "early_exit").
RECORD_EXTENSIONS: Registry[RecordExtension] = Registry("record extension", instantiate=True)


def register_record_extension(section: str) -> Callable[[type[RecordExtension]], type[RecordExtension]]:
    """Class decorator: artifacts whose manifest has `section` are prepared and recorded by this extension."""
    return RECORD_EXTENSIONS.register(name=section)


def all_precisions() -> list[str]:
    """Every precision some runtime can run, fp32 first (the reference every other is compared with)."""
    found = {p for r in RUNTIMES.values() for p in r.precisions}
    return ["fp32"] + sorted(found - {"fp32"})


@dataclass
class SweepSettings:
    models: Sequence[str]                      # names or shell patterns ('*_fmnist')
    runtimes: Sequence[str] = tuple(RUNTIMES)
    precisions: Sequence[str] | None = None    # None: every precision some target exports
    batches: Sequence[int] = (1,)
    threads: Sequence[int] | None = None       # None: one setting, all logical cores
    warmup_s: float = 2.0
    duration_s: float | None = 10.0            # timed seconds per configuration, split over the rounds
    iters: int | None = None                   # or timed calls per configuration (replaces duration_s)
    rounds: int = DEFAULT_ROUNDS
    peers: bool = False
    data: str | None = None                    # accuracy dataset; default: the weights' own (model_ref.WeightsData)
    data_root: str | None = None
    mean: str | None = None                    # ONNX files without metadata_props: as `edgecnn export --mean`
    std: str | None = None
    classes: str | None = None
    accuracy_samples: int | None = None        # None: the whole test split
    calibration_samples: int = peer_builders.DEFAULT_CALIBRATION_SAMPLES
    calibrator: str = "auto"                   # INT8 exports' calibrator (edgecnn.calibration.CALIBRATOR_NAMES)
    calib_samples: int | None = None           # INT8 exports' calibration images (None: `edgecnn export`'s default)
    calib_data: str | None = None              # INT8 exports: as `edgecnn export --calib-data` (a folder or synthetic)
    max_drop: float | None = None              # ... --max-drop, --placement, --fallback
    placement: str | None = None
    fallback: str | None = None
    cache_dir: Path = DEFAULT_CACHE

    def validated(self) -> SweepSettings:
        """The settings with patterns expanded and every name and number checked (one UserError each)."""
        from edgecnn.model_ref import expand_models

        models = [ref.label for ref in expand_models(self.models)]
        self.description()  # --mean, --std, --classes that do not parse: one line
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown or not self.runtimes:
            raise UserError(f"unknown runtime {', '.join(map(repr, unknown)) or '(none given)'} in --runtimes; "
                            f"choose from {', '.join(RUNTIMES)}")
        precisions = list(self.precisions) if self.precisions else all_precisions()
        bad = [p for p in precisions if p not in all_precisions()]
        if bad:
            raise UserError(f"unknown precision {', '.join(map(repr, bad))}; the targets here export "
                            f"{', '.join(all_precisions())}")
        if self.iters is not None and self.duration_s is not None:
            raise UserError("give --duration-s or --iters, not both")
        if self.iters is None and self.duration_s is None:
            raise UserError("give --duration-s or --iters: how long to time each configuration")
        self.calibration_options()  # an unknown calibrator: one line naming the known ones
        return replace(
            self, models=models, runtimes=list(dict.fromkeys(self.runtimes)),
            precisions=list(dict.fromkeys(precisions)),
            batches=sorted({positive_int("--batch", b) for b in self.batches}, reverse=True),
            threads=sorted({positive_int("--threads", t) for t in (self.threads or [os.cpu_count() or 1])}),
            warmup_s=non_negative_float("--warmup-s", self.warmup_s),
            duration_s=None if self.duration_s is None else positive_float("--duration-s", self.duration_s),
            iters=None if self.iters is None else positive_int("--iters", self.iters),
            rounds=positive_int("--rounds", self.rounds),
            accuracy_samples=None if self.accuracy_samples is None
            else positive_int("--accuracy-samples", self.accuracy_samples),
            calibration_samples=positive_int("--calibration-samples", self.calibration_samples),
            cache_dir=Path(self.cache_dir))

    def calibration_options(self) -> CalibrationOptions:
        """What INT8 exports calibrate with: the same options object `edgecnn export --calibrator` builds."""
        from edgecnn.calibration import CalibrationOptions

        from edgecnn.calibration import SYNTHETIC

        given = {k: v for k, v in (("samples", self.calib_samples), ("max_drop", self.max_drop),
                                   ("placement", self.placement), ("fallback", self.fallback)) if v is not None}
        if self.calib_data == SYNTHETIC:
            given["synthetic"] = True
        elif self.calib_data is not None:
            given["data"] = self.calib_data
        return CalibrationOptions(calibrator=self.calibrator, **given)

    def description(self) -> Description:
        """What ONNX files without metadata_props are said to take (--mean, --std, --classes)."""
        from edgecnn.model_ref import Description

        return Description(mean=self.mean, std=self.std, classes=self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class Config:
    """One timed configuration and what was measured on it."""
    model: str
    runtime: str
    precision: str
    batch: int
    threads: int
    artifact: Path
    flow: str = "edgecnn"
    peer: dict[str, Any] | None = None
    backend: str | None = None                                # runtime.load backend; None: the runtime's own
    options: dict[str, Any] = field(default_factory=dict)   # extra runtime.load options (peers, extensions)
    variant: str | None = None                                # what an extension made of it ("early-exit", "trunk")
    varied_inputs: bool = False   # latency depends on the image: time a cycle over the accuracy images
    extension: RecordExtension | None = None
    companions: list[Config] = field(default_factory=list)   # timed beside it; their records go to its extension
    reused: bool = False
    session: Any = None
    rss_delta_mb: float = 0.0
    load_s: float = 0.0
    rounds: list[list[float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = self.peer["name"] if self.peer else " ".join(filter(None, (self.runtime, self.precision, self.variant)))
        return f"{self.model} {name} b{self.batch} t{self.threads}"

    @property
    def accuracy_key(self) -> tuple[Any, ...]:
        """Accuracy depends on the artifact, runtime and flow, not on batch or threads: measured once per key."""
        return self.model, self.runtime, self.precision, self.flow, self.peer["name"] if self.peer else None


def _skip(model: str, runtime: str, precision: str, batches: Sequence[int], threads: Sequence[int], reason: str,
          flow: str = "edgecnn") -> dict[str, Any]:
    return {"model": model, "runtime": runtime, "precision": precision, "batch": sorted(batches),
            "threads": list(threads), "flow": flow, "reason": reason}


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _timed_calls(run: Callable[[np.ndarray], Any], feed: Iterator[np.ndarray], seconds: float | None = None,
                 iters: int | None = None) -> list[float]:
    """Seconds per call, each on the next input of `feed`, for `iters` calls or until `seconds` have passed
    (at least one call); the input is drawn outside the timed span."""
    clock = time.perf_counter
    times: list[float] = []
    deadline = clock() + seconds if seconds is not None else None
    while True:
        x = next(feed)
        t0 = clock()
        run(x)
        t1 = clock()
        times.append(t1 - t0)
        if (iters is not None and len(times) >= iters) or (deadline is not None and t1 >= deadline):
            return times


class AccuracyData:
    """Test images of one dataset, preprocessed per model in chunks, and the PyTorch FP32 reference."""

    def __init__(self, source: WeightsData, samples: int | None) -> None:
        self.source = source
        self.test = source.load("test")
        self.data, self.root = source.source, None   # what load_dataset takes (peers read the train split)
        self.count = min(samples or len(self.test), len(self.test))
        self.labels = self.test.labels[:self.count].numpy()
        self._inputs: dict[tuple[Any, ...], np.ndarray] = {}

    def aligned(self, config: Any) -> AccuracyData | None:
        """This data with its labels as `config`'s class indices (its class names may order them otherwise); None
        when it is not labelled with the model's classes."""
        from edgecnn.model_ref import aligned_labels

        if len(self.test.class_names) != config.num_classes:
            return None
        order = aligned_labels(self.test.class_names, config)
        if order is None:
            return self
        view = copy.copy(self)
        view.labels = np.asarray(order)[self.labels]
        return view

    def _preprocessed(self, config: Any, start: int, stop: int) -> np.ndarray:
        from edgecnn.data import preprocess

        images, _ = self.test.get_batch(range(start, stop), size=tuple(config.input_size[1:]))
        return preprocess(images, config).numpy()

    def inputs(self, config: Any) -> np.ndarray | None:
        """All test inputs preprocessed for `config`, kept while they fit in PREPROCESSED_CACHE_MB."""
        key = (tuple(config.input_size), tuple(config.mean), tuple(config.std))
        if key not in self._inputs:
            if self.count * int(np.prod(config.input_size)) * 4 > PREPROCESSED_CACHE_MB * 2**20:
                return None
            chunk = 1000
            self._inputs[key] = np.concatenate([self._preprocessed(config, i, min(i + chunk, self.count))
                                                for i in range(0, self.count, chunk)])
        return self._inputs[key]

    def batches(self, config: Any, batch: int) -> Iterator[tuple[np.ndarray, int]]:
        """(input, real rows): static-batch artifacts get the last chunk padded with zeros."""
        cached = self.inputs(config)
        for start in range(0, self.count, batch):
            stop = min(start + batch, self.count)
            x = cached[start:stop] if cached is not None else self._preprocessed(config, start, stop)
            if len(x) < batch:
                x = np.concatenate([x, np.zeros((batch - len(x), *x.shape[1:]), x.dtype)])
            yield np.ascontiguousarray(x), stop - start

    def predictions(self, run: Callable[[np.ndarray], np.ndarray], config: Any, batch: int) -> np.ndarray:
        out = [np.asarray(run(x))[:rows].argmax(axis=1) for x, rows in self.batches(config, batch)]
        return np.concatenate(out)

    def top1(self, predictions: np.ndarray) -> float:
        return round(float((predictions == self.labels).mean() * 100), 3)


class Sweep:
    """The state of one run: settings, artifacts built so far, reference predictions, accuracies, results."""

    def __init__(self, settings: SweepSettings, out: Path, command: str, progress: bool,
                 earlier: dict[str, Any] | None = None) -> None:
        self.s, self.out = settings, out
        self.progress = progress
        self.models: dict[str, BenchModel] = {}   # by label, resolved when first planned
        self.artifacts: dict[tuple[Any, ...], tuple[Path, bool] | UserError] = {}
        self.datasets: dict[tuple[Any, ...], AccuracyData] = {}
        self.references: dict[str, tuple[np.ndarray, float] | None] = {}
        self.accuracy: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.calibration = settings.calibration_options()
        self.results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "kind": RESULTS_KIND, "command": command,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "complete": False,
            "machine": machine_info(), "tools": all_tool_versions(), "settings": settings.to_dict(),
            "timing": {"clock": "time.perf_counter around Session.run (input validation included)",
                       "latency": "milliseconds per call (one batch); throughput = batch / mean",
                       "order": "configurations of one model and batch interleaved in rounds",
                       "memory": "rss_delta_mb: process RSS after the session's load and first run minus "
                                 "before; process_peak_rss_mb: the process's high-water mark so far"},
            "records": [], "skipped": []}
        self.done: set[tuple[str, int]] = set()
        if earlier is not None:
            self.resume_from(earlier)
        self.saved = False                                     # whether this run has written `out` yet
        self.unsaved_from = len(self.results["records"])       # records from here on are not in `out` yet

    def resume_from(self, earlier: dict[str, Any]) -> None:
        """Keep an interrupted run's finished (model, batch) groups: their records and the skips met while
        measuring them; the plan's own skips are worked out again."""
        self.done = {(r["model"], r["batch"]) for r in earlier["records"]} & \
            {(m, b) for m in self.s.models for b in self.s.batches}
        self.results["records"] = [r for r in earlier["records"] if (r["model"], r["batch"]) in self.done]
        self.verify_kept(self.results["records"])
        created = earlier.get("created_utc", self.results["created_utc"])
        self.results["resumed"] = [*earlier.get("resumed", []), {"command": earlier["command"], "created_utc": created}]
        self.results["created_utc"] = created
        for entry in earlier["skipped"]:
            batches = [b for b in entry["batch"] if (entry["model"], b) in self.done]
            if batches:
                self._add_skip({**entry, "batch": batches})

    def verify_kept(self, records: list[dict[str, Any]]) -> None:
        """Each kept record's artifact must still be there, intact (its files' hashes), and the very export it
        timed (its manifest_sha256): a record is kept as measured only while it describes what is on disk."""
        from edgecnn.export.manifest import DIGEST_FIELD, ArtifactError, read_manifest

        again = "drop --resume and pass --force to measure again"
        digests: dict[str, str] = {}
        for r in records:
            path, label = r["artifact"]["path"], f"{r['model']} {config_name(r)} b{r['batch']} t{r['threads']}"
            if path not in digests:
                try:
                    digests[path] = read_manifest(path)[DIGEST_FIELD]
                except ArtifactError as e:
                    raise UserError(f"{self.out}: the artifact {label} was timed on no longer verifies ({e}); "
                                    f"its record cannot be kept: {again}") from e
            if digests[path] != r["artifact"].get("manifest_sha256"):
                raise UserError(f"{self.out}: {path} is not the export {label} was timed on (exported again "
                                f"since); its record cannot be kept: {again}")

    # ------------------------------------------------------------------ planning

    def model(self, label: str) -> BenchModel:
        """The MODEL argument `label` names, resolved once (weights, data, artifacts, reference)."""
        if label not in self.models:
            from edgecnn.model_ref import resolve_model

            self.models[label] = bench_model(resolve_model(label), self.s.data, self.s.data_root,
                                             self.s.description())
        return self.models[label]

    def model_config(self, label: str) -> Any:
        """The ModelConfig (classes, preprocessing) of the model `label` names."""
        return self.model(label).config

    def plan(self) -> list[tuple[str, int, list[tuple[str, str, int]]]]:
        """(model, batch, [(runtime, precision, threads)]) groups; impossible combinations become skips."""
        s = self.s
        runnable: list[tuple[str, str]] = []
        for name in s.runtimes:
            rt = RUNTIMES[name]
            reason = rt.unavailable()
            for precision in s.precisions:
                why = reason or rt.precision_missing(precision) or rt.calibration_missing(precision, self.calibration)
                if why:
                    for m in s.models:
                        self._add_skip(_skip(m, name, precision, s.batches, s.threads, why))
                else:
                    runnable.append((name, precision))
        groups = []
        for m in s.models:
            for b in s.batches:
                entries = []
                for r, p in runnable:
                    why = self.model(m).why_not(r, RUNTIMES[r].target, p, b)
                    if why:
                        self._add_skip(_skip(m, r, p, [b], s.threads, why))
                    else:
                        entries += [(r, p, t) for t in s.threads]
                if (m, b) not in self.done:
                    groups.append((m, b, entries))
        return groups

    # ------------------------------------------------------------------ artifacts

    def artifact(self, model: str, target: str, precision: str, batch: int) -> tuple[Path, bool]:
        """The cached artifact (reused when its manifest matches) or a fresh export; failures are remembered."""
        key = (model, target, precision, batch)
        if key not in self.artifacts:
            calibration = self.calibration if precision == CALIBRATED_PRECISION else None
            try:
                self.artifacts[key] = ensure_artifact(self.model(model), target, precision, batch, self.s.cache_dir,
                                                      calibration, self.s.data)
            except UserError as e:
                self.artifacts[key] = e
        found = self.artifacts[key]
        if isinstance(found, UserError):
            raise found
        return found

    def configs(self, model: str, batch: int, entries: list[tuple[str, str, int]], bar: tqdm) -> list[Config]:
        configs: list[Config] = []
        for runtime, precision, threads in entries:
            target = RUNTIMES[runtime].target or REFERENCE_TARGET
            bar.set_postfix_str(f"export {model} {target} {precision} b{batch}")
            try:
                path, reused = self.artifact(model, target, precision, batch)
            except UserError as e:
                self._skip_once(model, runtime, precision, batch, threads, str(e))
                bar.update(self.s.rounds + 1)
                continue
            # INT8 records are named by their float placement, so runs with and without it report side by side
            variant = " ".join(f"{k}-{v}" for k, v in self.calibration.float_choices.items()) or None \
                if precision == CALIBRATED_PRECISION else None
            config = Config(model, runtime, precision, batch, threads, path, reused=reused, variant=variant)
            configs += [config, *self.attach_extension(config, bar)]
        if self.s.peers:
            configs += self.peer_configs(model, batch, bar)
        return configs

    def attach_extension(self, config: Config, bar: tqdm) -> list[Config]:
        """Hand `config` to the extension of its artifact's kind, if any; returns the companions it times beside it."""
        from edgecnn.export.manifest import read_manifest

        manifest = read_manifest(config.artifact, verify=False)  # verified when the session loads it
        extension = next((e for section, e in RECORD_EXTENSIONS.items() if manifest.get(section)), None)
        if extension is None:
            return []
        config.extension = extension
        config.companions = extension.prepare(config)
        if config.companions:
            bar.total += len(config.companions) * (self.s.rounds + 1)
            bar.refresh()
        return config.companions

    def _skip_once(self, model: str, runtime: str, precision: str, batch: int, threads: int, reason: str,
                   flow: str = "edgecnn") -> None:
        self._add_skip(_skip(model, runtime, precision, [batch], [threads], reason, flow))

    def _add_skip(self, skip: dict[str, Any]) -> None:
        """One skip entry per (model, runtime, precision, reason, flow), listing every batch and thread count."""
        def key(entry: dict[str, Any]) -> tuple[Any, ...]:
            return entry["model"], entry["runtime"], entry["precision"], entry["reason"], entry["flow"]

        for entry in self.results["skipped"]:
            if key(entry) == key(skip):
                entry["batch"] = sorted(set(entry["batch"]) | set(skip["batch"]))
                entry["threads"] = sorted(set(entry["threads"]) | set(skip["threads"]))
                return
        self.results["skipped"].append(skip)

    def peer_configs(self, model: str, batch: int, bar: tqdm) -> list[Config]:
        """What a user would pick instead, built by the libraries alone from the same FP32 ONNX."""
        configs: list[Config] = []
        data = self.dataset(model)
        for peer in peer_builders.PEERS:
            if peer.runtime not in self.s.runtimes:
                continue
            reason = RUNTIMES[peer.runtime].unavailable()
            try:
                if reason:
                    raise UserError(reason)
                source, _ = self.artifact(model, REFERENCE_TARGET, "fp32", batch)
                bar.set_postfix_str(f"peer {model} {peer.name} b{batch}")
                path, reused = peer_builders.peer_artifact(peer, source, self.s.cache_dir, data,
                                                           self.s.calibration_samples)
            except UserError as e:
                for threads in self.s.threads:
                    self._skip_once(model, peer.runtime, peer.precision, batch, threads, str(e), flow="peer")
                bar.update((self.s.rounds + 1) * len(self.s.threads))
                continue
            configs += [Config(model, peer.runtime, peer.precision, batch, threads, path, flow="peer",
                               peer=peer.describe(self.s.calibration_samples), options=peer.load_options(),
                               reused=reused) for threads in self.s.threads]
        return configs

    # ------------------------------------------------------------------ accuracy

    def dataset(self, model: str) -> AccuracyData | None:
        """The accuracy data of `model`: the weights' own test split (or --data's), labelled with its classes;
        None when no dataset is known for its weights (latency only) or it is a latency-only artifact."""
        bench = self.model(model)
        if bench.data is None or bench.latency_only:
            return None
        key = (bench.data.source,)
        if key not in self.datasets:
            self.datasets[key] = AccuracyData(bench.data, self.s.accuracy_samples)
        return self.datasets[key].aligned(bench.config)

    def reference(self, model: str) -> tuple[np.ndarray, float] | None:
        """Predictions and top-1 of the FP32 reference (the artifacts' own weights), once per model; None without
        accuracy data, or for an artifact whose source cannot be rebuilt here."""
        if model not in self.references:
            data, module = self.dataset(model), None
            if data is not None:
                module = self.model(model).reference_module()
            self.references[model] = None if module is None else \
                _reference_predictions(module, self.model_config(model), data, max(self.s.threads))
        return self.references[model]

    def measure_accuracy(self, config: Config) -> dict[str, Any] | None:
        if config.accuracy_key not in self.accuracy:
            data = self.dataset(config.model)
            if data is None:
                return None
            preds = data.predictions(config.session.run, self.model_config(config.model), config.batch)
            top1, reference = data.top1(preds), self.reference(config.model)
            ref_preds, ref_top1 = reference if reference is not None else (None, None)
            self.accuracy[config.accuracy_key] = {
                "dataset": data.test.name, "split": "test", "samples": data.count, "top1": top1,
                "classes": self.model_config(config.model).num_classes,
                "reference_top1": ref_top1, "drop": None if ref_top1 is None else round(ref_top1 - top1, 3),
                "agreement_vs_torch_fp32": None if ref_preds is None
                else round(float((preds == ref_preds).mean() * 100), 3),
                "measured_at_batch": config.batch}
        return self.accuracy[config.accuracy_key]

    # ------------------------------------------------------------------ timing

    def open(self, config: Config) -> None:
        from edgecnn.export import runtime

        before = _rss_mb()
        t0 = time.perf_counter()
        config.session = runtime.load(config.artifact, backend=config.backend or config.runtime,
                                      threads=config.threads, **config.options)
        config.session.run(self.input_for(config))
        config.load_s = time.perf_counter() - t0
        config.rss_delta_mb = max(0.0, _rss_mb() - before)

    def input_for(self, config: Config) -> np.ndarray:
        """Real test images where the model has a dataset (timing does not depend on them), else seeded noise."""
        spec = config.session.input_spec
        data = self.dataset(config.model)
        if data is not None:
            x, _ = next(data.batches(self.model_config(config.model), config.batch))
        else:
            x = np.random.default_rng(0).standard_normal((config.batch, *spec.shape[1:]), dtype=np.float32)
        return x.astype(spec.dtype)

    def timing_inputs(self, config: Config) -> list[np.ndarray]:
        """What the timed calls cycle through: one batch, or, where the latency depends on the image (early exit),
        every full batch of the accuracy images, so the work timed is the data's."""
        data = self.dataset(config.model)
        if not config.varied_inputs or data is None:
            return [self.input_for(config)]
        dtype = config.session.input_spec.dtype
        full = [x.astype(dtype, copy=False) for x, rows in data.batches(self.model_config(config.model), config.batch)
                if rows == config.batch]
        return full or [self.input_for(config)]

    def measure_group(self, model: str, batch: int, entries: list[tuple[str, str, int]], bar: tqdm) -> None:
        s = self.s
        configs = self.configs(model, batch, entries, bar)
        opened: list[Config] = []
        try:
            for c in configs:
                bar.set_postfix_str(f"load {c.label}")
                try:
                    self.open(c)
                    opened.append(c)
                except Exception as e:  # noqa: BLE001 (a runtime refusing one artifact must not end the sweep)
                    self._skip_once(model, c.runtime, c.precision, batch, c.threads, _first_line(e), c.flow)
                    bar.update(s.rounds + 1)
            feeds = {id(c): itertools.cycle(self.timing_inputs(c)) for c in opened}
            for c in opened:
                bar.set_postfix_str(f"warm-up {c.label}")
                _timed_calls(c.session.run, feeds[id(c)], seconds=s.warmup_s)
                bar.update(1)
            per_round_s = s.duration_s / s.rounds if s.duration_s else None
            per_round_iters = -(-s.iters // s.rounds) if s.iters else None
            for r in range(s.rounds):
                for c in opened:  # A B C A B C …: drift on a shared machine hits every configuration alike
                    bar.set_postfix_str(f"round {r + 1}/{s.rounds} {c.label}")
                    c.rounds.append(_timed_calls(c.session.run, feeds[id(c)], per_round_s, per_round_iters))
                    bar.update(1)
            records: dict[int, dict[str, Any]] = {}
            for c in opened:
                bar.set_postfix_str(f"accuracy {c.label}")
                records[id(c)] = self.record(c)
            for c in opened:
                if c.extension is not None:
                    bar.set_postfix_str(f"{c.variant or 'extension'} {c.label}")
                    records[id(c)].update(c.extension.extend(c, records[id(c)],
                                                             [records.get(id(m)) for m in c.companions], self))
            self.results["records"] += records.values()
        finally:
            for c in opened:
                c.session.close()

    def record(self, c: Config) -> dict[str, Any]:
        times = [t for r in c.rounds for t in r]
        info = c.session.info()
        manifest = c.session.manifest
        stats = latency_stats(times, c.batch)
        accuracy = self.measure_accuracy(c)
        return {
            "model": c.model, "family": manifest["model"]["family"], "runtime": c.runtime,
            "target": manifest["target"] if RUNTIMES[c.runtime].target else None, "precision": c.precision,
            "executed_precision": info.get("executed_precision") or getattr(c.session, "executed_precision", None),
            "batch": c.batch, "threads": c.threads, "flow": c.flow, "peer": c.peer, "variant": c.variant,
            "input_shape": manifest["input"]["shape"],
            "latency_ms": {k: v for k, v in stats.items() if k not in ("throughput", "iterations")},
            "throughput": stats["throughput"], "iterations": stats["iterations"], "rounds": len(c.rounds),
            **round_spread(c.rounds),
            "memory": {"rss_delta_mb": round(c.rss_delta_mb, 1), "process_peak_rss_mb": round(_peak_rss_mb(), 1)},
            "load_seconds": round(c.load_s, 3),
            "oversubscribed": c.threads > self.results["machine"]["logical_cores"],
            "artifact": {"path": str(c.artifact), "reused": c.reused, "bytes": _artifact_bytes(c.runtime, manifest),
                         "manifest_sha256": manifest["manifest_sha256"],
                         "parity_passed": all(p.get("passed", False) for p in manifest["parity"])
                         if manifest["parity"] else None},
            "weights": manifest["model"]["weights"].get("source"),
            **self.model(c.model).record_fields(measured=accuracy is not None),
            "accuracy": accuracy, "session": _jsonable(info)}

    # ------------------------------------------------------------------ the run

    def save(self) -> None:
        """Write the results so far; when that fails, one line saying what is lost and what `out` still holds."""
        try:
            write_results(self.out, self.results)
        except ResultsWriteError as e:
            lost = len(self.results["records"]) - self.unsaved_from
            said = [str(e)] + ([f"{lost} configuration(s) measured since its last write are lost"] if lost else [])
            said.append(f"{self.out} keeps its last write: rerun with --resume to measure the rest" if self.saved
                        else f"{self.out} is left as it was")
            raise ResultsWriteError("; ".join(said)) from e
        self.saved, self.unsaved_from = True, len(self.results["records"])

    def run(self) -> dict[str, Any]:
        groups = self.plan()
        probe_writable(self.out)
        cores = self.results["machine"]["logical_cores"]
        if max(self.s.threads) > cores:
            print(f"edgecnn: warning: --threads {max(self.s.threads)} is more than the {cores} logical cores here: the "
                  "threads compete for cores and distort the timings; such records are marked oversubscribed",
                  file=sys.stderr)
        peers_per_group = sum(p.runtime in self.s.runtimes for p in peer_builders.PEERS) * len(self.s.threads) \
            if self.s.peers else 0
        total = sum((len(entries) + peers_per_group) * (self.s.rounds + 1) for _, _, entries in groups)
        bar = tqdm(total=total, desc="bench", unit="step", disable=not self.progress, file=sys.stderr,
                   dynamic_ncols=True)
        try:
            for model, batch, entries in groups:
                self.measure_group(model, batch, entries, bar)
                self.save()
            self.results["complete"] = True
        except KeyboardInterrupt:
            if self.saved:  # before the first group finishes there is nothing to keep: `out` stays as it was
                self.results["interrupted"] = ("stopped with Ctrl-C; the records of every finished (model, batch) "
                                               "are kept")
                self.save()
            raise
        finally:
            bar.close()
        self.save()
        return self.results


def bench(models: Sequence[str], out: Path | str, *, force: bool = False, resume: bool = False,
          progress: bool = False, **settings: Any) -> dict[str, Any]:
    """`edgecnn bench` in Python (`edgecnn.bench`): MODEL arguments as the command takes them, the other keywords
    SweepSettings' fields (runtimes, precisions, batches, threads, iters, calibrator, max_drop, ...)."""
    return run_sweep(SweepSettings(models=list(models), **settings), out, force=force, resume=resume,
                     progress=progress)


def run_sweep(settings: SweepSettings, out: Path | str, *, command: str | None = None, force: bool = False,
              resume: bool = False, progress: bool = False) -> dict[str, Any]:
    """Run the sweep and write its results to `out` (JSON), rewritten after every (model, batch).
    `resume` continues an interrupted run in `out`: same settings and machine, finished groups kept."""
    settings = settings.validated()
    out = Path(out)
    earlier = resumable(out, settings) if resume and out.exists() else None
    if earlier is None:
        check_output(out, force)
    command = command or " ".join(shlex.quote(a) for a in sys.argv)
    return Sweep(settings, out, command, progress, earlier).run()


def resumable(out: Path, settings: SweepSettings) -> dict[str, Any]:
    """The earlier results in `out`, if this run may continue them: not edited since edgecnn wrote them (their
    digest), same settings (the model list may grow) and the same machine; otherwise one line saying what
    differs. The records kept are re-verified against their artifacts (`Sweep.verify_kept`)."""
    earlier = read_results(out, verify_digest=True)
    if not same_machine(earlier["machine"], machine_info()):
        raise UserError(f"{out} was measured on {describe(earlier['machine'])}, not this machine; --resume only "
                        "continues a run on the machine that started it (choose another --out)")
    now = settings.to_dict()
    differ = [k for k, v in earlier["settings"].items() if k != "models" and now.get(k) != v]
    if differ:
        listed = ", ".join(f"{k} {earlier['settings'][k]!r} → {now.get(k)!r}" for k in differ)
        raise UserError(f"{out} was measured with other settings ({listed}); --resume continues only the same "
                        "sweep: repeat its command (see the file's 'command') or choose another --out")
    return earlier


# ---------------------------------------------------------------------- artifacts on disk

def cached_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of an edgecnn artifact at `path` (None if it is corrupt, so it may be rebuilt);
    a UserError if something that is not edgecnn's sits there."""
    from edgecnn.export.manifest import ARTIFACT_KIND, MANIFEST_NAME, ArtifactError, read_manifest

    try:
        return read_manifest(path)
    except ArtifactError:
        try:
            ours = json.loads((path / MANIFEST_NAME).read_text()).get("kind") == ARTIFACT_KIND
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise UserError(f"{path} exists and is not an edgecnn artifact; move it or choose another --cache "
                            "(edgecnn never overwrites what it did not write)") from None
        return None


def ensure_artifact(model: str | BenchModel, target: str, precision: str, batch: int, cache_dir: Path,
                    calibration: CalibrationOptions | None = None, data: str | None = None) -> tuple[Path, bool]:
    """(path, reused): the artifact for this combination — an artifact folder itself, else exported unless a
    matching one is cached; `calibration` (INT8 only) is how the export calibrates, and part of the match; `data`
    (--data) replaces the weights' own dataset. `model` is a BenchModel or a MODEL argument."""
    from edgecnn.model_ref import resolve_model

    bench = model if isinstance(model, BenchModel) else bench_model(resolve_model(model), data)
    if bench.manifest is not None:
        return bench.own_artifact(target, precision, batch), True
    path = Path(cache_dir) / bench.cache_name(target, precision, batch, calibration)
    if path.exists():
        manifest = cached_manifest(path)
        if manifest is not None and bench.matches(manifest, target, precision, batch, calibration):
            return path, True
    bench.export(target, precision, batch, path, calibration, data)
    return path, False


def _reference_predictions(module: Any, config: Any, data: AccuracyData, threads: int) -> tuple[np.ndarray, float]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            preds = data.predictions(lambda x: module(torch.from_numpy(x)).numpy(), config, REFERENCE_BATCH)
    finally:
        torch.set_num_threads(previous)
    return preds, data.top1(preds)


def _artifact_bytes(runtime: str, manifest: dict[str, Any]) -> int:
    """What the runtime loads: the artifact's files, or the checkpoint for the eager reference."""
    if RUNTIMES[runtime].target is None:
        path = Path(manifest["model"]["weights"].get("path") or "")
        return path.stat().st_size if path.is_file() else 0
    return sum(f["bytes"] for f in manifest["files"].values())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in info.items()}


__all__ = ["Config", "RECORD_EXTENSIONS", "RUNTIMES", "RecordExtension", "Runtime", "SweepSettings", "all_precisions",
           "ensure_artifact", "register_record_extension", "run_sweep"]
