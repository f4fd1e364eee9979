"""The results file: one JSON per `edgecnn bench` run, versioned, rewritten atomically as it grows.

    {"schema_version": 1, "kind": "edgecnn-bench-results", "command": "...", "created_utc": "...",
     "complete": true, "machine": {...}, "tools": {...}, "settings": {...},
     "records": [one per model × runtime × precision × batch × threads (× peer)], "skipped": [...]}

A record holds `latency_ms` (mean, p50, p90, p99, min, max, std per call), `throughput` (samples/s),
`round_p50_ms` + `spread_pct` (drift across the interleaved rounds), `memory`, `artifact`,
`executed_precision`, `accuracy` (or null), `flow` ("edgecnn", "peer", or "trunk": the plain network timed
beside an early-exit one) and `variant` (what an extension made of the artifact: "early-exit", "trunk"; null
for a plain one), `weights_sha256` and `dataset` (which weights, and which data its accuracy was measured on:
the weights' own, or what --data named instead), `latency_only` (an artifact calibrated on synthetic inputs,
whose accuracy is unknown). An early-exit record adds its `early_exit` section and `latency_statistic` ("mean": the
statistic `pick` holds it to, since its latency depends on the exit taken). Deploy bundles' `bench.sh`
writes the same schema, so `edgecnn report` merges results from any machine.

`read_results` is the one door for report, pick and `bench --resume`: a file that is not JSON, too large or
too deep (`edgecnn.jsonfile`), of another kind or version, or with a field of the wrong type or an impossible
number (NaN, a latency of 0 or below, a top-1 outside [0, 100]) is one line naming the file and the record.
A record's `oversubscribed` says it was timed with more threads than its machine has logical cores.
"""
from __future__ import annotations

import errno
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from edgecnn.atomic import atomic_write, probe_directory
from edgecnn.errors import UserError
# The artifact manifest's JSON type checks, shared so both files are checked alike.
from edgecnn.export.manifest import _DICT, _STR, _Is, _List, _Map, _Object, _Optional, _Spec
from edgecnn.jsonfile import read_json
from edgecnn.text import printable

SCHEMA_VERSION = 1
RESULTS_KIND = "edgecnn-bench-results"
DIGEST_FIELD = "results_sha256"
STATISTICS = ("mean", "p50", "p90", "p99")
REQUIRED_FIELDS = ("schema_version", "kind", "machine", "tools", "command", "settings", "records", "skipped")


class ResultsError(UserError):
    """A results file that is not one this edgecnn reads."""


class _Number(_Spec):
    """A finite JSON number (never true/false) at or above `low` (above it when `above`), at most `high`."""

    def __init__(self, low: float | None = None, high: float | None = None, above: bool = False,
                 integer: bool = False) -> None:
        self.low, self.high, self.above, self.integer = low, high, above, integer
        kind = "an integer" if integer else "a finite number"
        bound = "" if low is None else f" above {low:g}" if above else \
            f" from {low:g} to {high:g}" if high is not None else f" of {low:g} or more"
        self.text = kind + bound

    def check(self, value: Any, where: str) -> str | None:
        fits = (isinstance(value, int if self.integer else (int, float)) and not isinstance(value, bool)
                and _finite(value) and (self.high is None or value <= self.high)
                and (self.low is None or value > self.low or (value == self.low and not self.above)))
        return None if fits else f"{where} must be {self.text} (got {_shown(value)})"


class _OneOf(_Spec):
    def __init__(self, *values: str) -> None:
        self.values, self.text = values, f"one of {', '.join(values)}"

    def check(self, value: Any, where: str) -> str | None:
        return None if value in self.values else f"{where} must be {self.text} (got {_shown(value)})"


class _Fields(_Object):
    """An object with required fields and optional ones, each checked when present (more are allowed)."""

    def __init__(self, optional: dict[str, _Spec] | None = None, **required: _Spec) -> None:
        super().__init__(**required)
        self.optional = optional or {}

    def check(self, value: Any, where: str) -> str | None:
        return super().check(value, where) or next(
            (e for f, spec in self.optional.items() if f in value and (e := spec.check(value[f], f"{where}.{f}"))),
            None)


def _finite(value: float) -> bool:
    """Not NaN nor infinite, and within a float's range (so every sum and ratio of it is one)."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer of hundreds of digits
        return False


def _short(text: str, width: int = 40) -> str:
    """`text` for a one-line message: control characters escaped, cut at `width`."""
    text = printable(text)
    return text if len(text) <= width else text[:width - 3] + "..."


def _shown(value: Any) -> str:
    """A value from the file as a message shows it: its repr (its type, for an object or list), short."""
    return _short(repr(value) if isinstance(value, (int, float, str, type(None))) else type(value).__name__)


_POSITIVE, _NON_NEGATIVE, _FINITE = _Number(0, above=True), _Number(0), _Number()
_PERCENT, _COUNT, _BYTES, _BOOL = _Number(0, 100), _Number(1, integer=True), _Number(0, integer=True), _Is(bool)


class _Hex(_Spec):
    """A lowercase hexadecimal digest of `length` digits (a SHA-256 is 64)."""

    def __init__(self, length: int) -> None:
        self.length, self.text = length, f"a {length}-digit hexadecimal digest"

    def check(self, value: Any, where: str) -> str | None:
        fits = isinstance(value, str) and len(value) == self.length and all(c in "0123456789abcdef" for c in value)
        return None if fits else f"{where} must be {self.text} (got {_shown(value)})"


_SHA256 = _Hex(64)
RECORD_SCHEMA = _Fields(
    model=_STR, runtime=_STR, precision=_STR, batch=_COUNT, threads=_COUNT, flow=_STR,
    latency_ms=_Object(**{s: _POSITIVE for s in ("mean", "p50", "p90", "p99", "min", "max")}, std=_NON_NEGATIVE),
    accuracy=_Optional(_Fields(top1=_PERCENT, optional={"reference_top1": _Optional(_PERCENT),
                                                        "agreement_vs_torch_fp32": _Optional(_PERCENT),
                                                        "samples": _COUNT, "classes": _COUNT})),
    executed_precision=_Optional(_STR), throughput=_POSITIVE, round_p50_ms=_List(_POSITIVE, non_empty=True),
    spread_pct=_NON_NEGATIVE, memory=_Object(rss_delta_mb=_FINITE), artifact=_Object(path=_STR, bytes=_BYTES),
    optional={"peer": _Optional(_Object(name=_STR)), "variant": _Optional(_STR),
              "latency_statistic": _Optional(_OneOf(*STATISTICS)), "oversubscribed": _BOOL,
              # which weights and which data every number belongs to (edgecnn.model_ref)
              "weights_sha256": _Optional(_SHA256), "architecture": _STR, "latency_only": _BOOL,
              "dataset": _Optional(_Fields(name=_STR, optional={"path": _Optional(_STR), "origin": _STR,
                                                                 "instead_of": _STR}))})
RECORD_FIELDS = tuple(RECORD_SCHEMA.fields)
SKIP_SCHEMA = _Object(model=_STR, runtime=_STR, precision=_STR, batch=_List(_COUNT), threads=_List(_COUNT),
                      flow=_STR, reason=_STR)
RESULTS_SCHEMA = _Fields(
    command=_STR, tools=_DICT, settings=_DICT, skipped=_List(SKIP_SCHEMA),
    machine=_Fields(name=_STR, optional={"cpu_flags": _Optional(_Map(_BOOL, "an object of true/false flags")),
                                         "logical_cores": _COUNT, "os": _STR}),
    optional={"complete": _BOOL, "created_utc": _STR, "interrupted": _STR, "resumed": _List(_DICT),
              DIGEST_FIELD: _STR})


def config_name(record: dict[str, Any]) -> str:
    """How a record's configuration is named: the peer's name, else runtime, precision and variant."""
    if record.get("peer"):
        return record["peer"]["name"]
    return " ".join(filter(None, (record["runtime"], record["precision"], record.get("variant"))))


def flow_name(record: dict[str, Any]) -> str:
    """How a record's flow is shown: the peer's name, else the flow with its variant ("edgecnn early-exit")."""
    if record.get("peer"):
        return record["peer"]["name"]
    variant = record.get("variant")
    return record["flow"] if variant in (None, record["flow"]) else f"{record['flow']} {variant}"


def read_results(path: Path | str, verify_digest: bool = False) -> dict[str, Any]:
    """A validated results file, or one line saying what is wrong with it (the first thing found).

    Every record's numbers are checked (finite, latencies above 0, top-1 in [0, 100]) and its accuracy drop is
    recomputed from its reference top-1, never taken from the file. `verify_digest` (for `--resume`, which writes
    the records it keeps back as measured) also refuses a file edited since edgecnn wrote it (`results_digest`).
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        raise ResultsError(f"results file {path} does not exist; write one with `edgecnn bench MODELS --out {path}`")
    results = read_json(path, "results file")
    if not isinstance(results, dict) or results.get("kind") != RESULTS_KIND:
        raise ResultsError(f"{path} is not an edgecnn benchmark results file (kind is not {RESULTS_KIND!r})")
    version = results.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(f"{path} has results schema version {_shown(version)}; this edgecnn reads version "
                           f"{SCHEMA_VERSION}: measure again with `edgecnn bench` (command: "
                           f"{_shown(results.get('command', '?'))})")
    missing = [f for f in REQUIRED_FIELDS if f not in results]
    if missing:
        raise ResultsError(f"{path} lacks {', '.join(missing)}; it is truncated or was edited by hand")
    problem = _problem(results)
    if problem:
        raise ResultsError(f"{path}: {problem}; the file is corrupt or was edited by hand: measure again with "
                           "`edgecnn bench`")
    if verify_digest:
        _verify_digest(path, results)
    for record in results["records"]:
        if record["accuracy"] is not None:
            record["accuracy"]["drop"] = accuracy_drop(record["accuracy"])
    results["source"] = str(path)
    return results


def _problem(results: dict[str, Any]) -> str | None:
    """What is wrong with a results document whose kind and version are right; None when nothing is."""
    problem = RESULTS_SCHEMA.check(results, "")
    if problem:
        return problem.removeprefix(".")
    if not isinstance(results["records"], list):
        return f"records must be a list of records (got {_shown(results['records'])})"
    for i, record in enumerate(results["records"]):
        where = f"record {i}"
        if isinstance(record, dict):
            named = " ".join(str(record.get(f)) for f in ("model", "runtime", "precision"))
            where += f" ({_short(named, 80)}, batch {_shown(record.get('batch'))})"
        problem = RECORD_SCHEMA.check(record, where)
        if problem is None and record["flow"] == "peer" and not record.get("peer"):
            problem = f"{where} is a peer's record without its peer"
        if problem:
            return problem
    return None


def accuracy_drop(accuracy: dict[str, Any]) -> float | None:
    """Points of top-1 lost against the model's own PyTorch FP32 (None without that reference): always worked out
    from the two top-1 figures, never read from the file, so a hand-written "drop" cannot pass a budget."""
    reference = accuracy.get("reference_top1")
    return None if reference is None else round(reference - accuracy["top1"], 3)


def results_digest(results: dict[str, Any]) -> str:
    """SHA-256 of a results document's canonical JSON (sorted keys, no whitespace) without the digest itself.

    Written with the file and checked on `--resume`, it detects a file edited since edgecnn wrote it (a record
    "improved" by hand), not a determined forger: anyone can recompute it, as the artifact's manifest_sha256.
    """
    body = {k: v for k, v in results.items() if k not in (DIGEST_FIELD, "source")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _verify_digest(path: Path, results: dict[str, Any]) -> None:
    written = results.get(DIGEST_FIELD)
    if written is None:
        raise ResultsError(f"{path} has no {DIGEST_FIELD}: an older edgecnn, a deploy bundle or an editor wrote it, "
                           "so its records cannot be kept as measured; drop --resume and pass --force to measure "
                           "again, or choose another --out")
    if written != results_digest(results):
        raise ResultsError(f"{path} was edited since edgecnn wrote it (its content no longer matches its "
                           f"{DIGEST_FIELD}), so its records cannot be kept as measured; drop --resume and pass "
                           "--force to measure again, or choose another --out")


def oversubscribed(record: dict[str, Any], machine: dict[str, Any]) -> bool:
    """Whether a record was timed with more threads than its machine has logical cores (timings distorted): as
    the record says, or as its threads and the machine's core count show (deploy bundles' records do not say)."""
    cores = machine.get("logical_cores")
    return record.get("oversubscribed") is True or (isinstance(cores, int) and record["threads"] > cores)


def is_results_file(path: Path) -> bool:
    """Whether `path` is a results file edgecnn wrote (any schema version): only those may be replaced."""
    try:
        results = read_json(path, "results file")
    except UserError:
        return False
    return isinstance(results, dict) and results.get("kind") == RESULTS_KIND


def check_output(path: Path, force: bool) -> None:
    """Refuse to replace a file edgecnn did not write, and its own earlier results without --force."""
    if path.is_dir():
        raise UserError(f"{path} is a directory; --out names the results JSON file to write")
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_file():
        raise UserError(f"{path} is not a regular file (a device, a pipe, a dangling link); --out names the "
                        "results JSON file to write: choose another")
    if not is_results_file(path):
        raise UserError(f"{path} exists and is not an edgecnn results file; choose another --out "
                        "(edgecnn never overwrites files it did not write)")
    if not force:
        raise UserError(f"{path} already holds benchmark results; pass --force to replace them or choose "
                        "another --out")


class ResultsWriteError(ResultsError):
    """The results file could not be written (a full disk, a folder that turned read-only)."""


def _write_error(path: Path, e: OSError) -> ResultsWriteError:
    reason = str(e.strerror or e)
    remedy = "free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    return ResultsWriteError(f"{reason[:1].lower()}{reason[1:]} writing {path} ({remedy} or choose another --out)")


def probe_writable(path: Path) -> None:
    """Before minutes of measuring: one line if `path`'s folder cannot take a file (nothing is left there)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe_directory(path.parent, prefix=f".{path.name}.tmp-")
    except OSError as e:
        raise _write_error(path, e) from e


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename), sealed with `results_digest`: a Ctrl-C or a full disk
    never leaves half a file, nor a temporary one; a failure is one line (`ResultsWriteError`)."""
    document = {k: v for k, v in results.items() if k not in ("source", DIGEST_FIELD)}
    document[DIGEST_FIELD] = results_digest(document)
    atomic_write(path, json.dumps(document, indent=1) + "\n", mode=0o644, error=lambda e: _write_error(path, e))
