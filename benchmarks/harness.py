"""The benchmark harness, the sweep itself: export (or reuse) artifacts, time them in interleaved rounds, measure
accuracy, write the records.

    from edgecnn.benchmarks import SweepSettings, run_sweep
    results = run_sweep(SweepSettings(models=["resnet18_fmnist"], runtimes=["onnxruntime", "openvino"],
                                      precisions=["fp32", "fp16"], batches=[1, 8], iters=200), out="r18.json")

A configuration is model × runtime × precision × batch × threads (× peer). What a sweep covers is its
`SweepSettings` (`settings`: the runtimes, `RUNTIMES`, each running one export target's artifacts; a combination a
target lacks is listed as skipped with the reason); its artifacts come from the artifact cache (`cache`), its
accuracy from the test images and the FP32 reference of `accuracy`, and `--resume` keeps what `resume` verifies.
The configurations of one model and batch are opened together and timed in rounds (A B C A B C …) so drift on a
shared machine hits all alike; threads are pinned through each runtime's own option. Results are written after
every (model, batch), atomically, so Ctrl-C keeps what finished. An artifact that is more than one graph (early
exit) is handled by the extension registered for its manifest section (`RECORD_EXTENSIONS`), never by
special cases here.

A MODEL is any form `edgecnn.model_ref` resolves (a zoo name or pattern, a checkpoint, an ONNX file, an artifact
folder, side by side in one run); `models.BenchModel` knows its weights, the dataset its accuracy is measured on
(the weights' own unless --data names another, said in every record with the weights' SHA-256), its artifacts
and its FP32 reference.
"""
from __future__ import annotations

import datetime as dt
import itertools
import os
import resource
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from edgecnn.benchmarks import peers as peer_builders
from edgecnn.benchmarks.accuracy import AccuracyData, reference_predictions
from edgecnn.benchmarks.cache import ensure_artifact
from edgecnn.benchmarks.machine import all_tool_versions, machine_info
from edgecnn.benchmarks.models import BenchModel, bench_model
from edgecnn.benchmarks.resume import resumable, verify_kept
from edgecnn.benchmarks.schema import (RESULTS_KIND, SCHEMA_VERSION, ResultsWriteError, check_output, probe_writable,
                                       write_results)
from edgecnn.benchmarks.settings import CALIBRATED_PRECISION, REFERENCE_TARGET, RUNTIMES, SweepSettings
from edgecnn.benchmarks.stats import latency_stats, round_spread
from edgecnn.errors import UserError
from edgecnn.registries import Registry


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
        verify_kept(self.out, self.results["records"])
        created = earlier.get("created_utc", self.results["created_utc"])
        self.results["resumed"] = [*earlier.get("resumed", []), {"command": earlier["command"], "created_utc": created}]
        self.results["created_utc"] = created
        for entry in earlier["skipped"]:
            batches = [b for b in entry["batch"] if (entry["model"], b) in self.done]
            if batches:
                self._add_skip({**entry, "batch": batches})

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
                reference_predictions(module, self.model_config(model), data, max(self.s.threads))
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


__all__ = ["Config", "RECORD_EXTENSIONS", "RecordExtension", "Sweep", "bench", "register_record_extension",
           "run_sweep"]
