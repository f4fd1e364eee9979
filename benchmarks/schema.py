"""The results file: one JSON per `edgecnn bench` run, versioned, rewritten atomically as it grows.

    {"schema_version": 1, "kind": "edgecnn-bench-results", "command": "...", "created_utc": "...",
     "complete": true, "machine": {...}, "tools": {...}, "settings": {...},
     "records": [one per model × runtime × precision × batch × threads (× peer)], "skipped": [...]}

A record holds `latency_ms` (mean, p50, p90, p99, min, max, std per call), `throughput` (samples/s),
`round_p50_ms` + `spread_pct` (drift across the interleaved rounds), `memory`, `artifact`,
`executed_precision`, `accuracy` (or null), `flow` ("edgecnn", "peer", or "trunk": the plain network timed
beside an early-exit one) and `variant` (what an extension made of the artifact: "early-exit", "trunk"; null
for a plain one). An early-exit record adds its `early_exit` section and `latency_statistic` ("mean": the
statistic `pick` holds it to, since its latency depends on the exit taken). Deploy bundles' `bench.sh`
writes the same schema, so `edgecnn report` merges results from any machine.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgecnn.errors import UserError

SCHEMA_VERSION = 1
RESULTS_KIND = "edgecnn-bench-results"
REQUIRED_FIELDS = ("schema_version", "kind", "machine", "tools", "command", "settings", "records", "skipped")
RECORD_FIELDS = ("model", "runtime", "precision", "batch", "threads", "flow", "latency_ms", "accuracy")


class ResultsError(UserError):
    """A results file that is not one this edgecnn reads."""


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


def read_results(path: Path | str) -> dict[str, Any]:
    """A validated results file, or one line saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"results file {path} does not exist; write one with `edgecnn bench MODELS --out {path}`")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path} is not valid JSON ({e}); it is corrupt or not a results file") from e
    if not isinstance(results, dict) or results.get("kind") != RESULTS_KIND:
        raise ResultsError(f"{path} is not an edgecnn benchmark results file (kind is not {RESULTS_KIND!r})")
    version = results.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(f"{path} has results schema version {version!r}; this edgecnn reads version "
                           f"{SCHEMA_VERSION}: measure again with `edgecnn bench` (command: "
                           f"{results.get('command', '?')})")
    missing = [f for f in REQUIRED_FIELDS if f not in results]
    if missing:
        raise ResultsError(f"{path} lacks {', '.join(missing)}; it is truncated or was edited by hand")
    for i, record in enumerate(results["records"]):
        lacking = [f for f in RECORD_FIELDS if f not in record]
        if lacking:
            raise ResultsError(f"{path}: record {i} lacks {', '.join(lacking)}; the file was edited by hand")
    results["source"] = str(path)
    return results


def is_results_file(path: Path) -> bool:
    """Whether `path` is a results file edgecnn wrote (any schema version): only those may be replaced."""
    try:
        return json.loads(path.read_text()).get("kind") == RESULTS_KIND
    except (OSError, ValueError, AttributeError):
        return False


def check_output(path: Path, force: bool) -> None:
    """Refuse to replace a file edgecnn did not write, and its own earlier results without --force."""
    if path.is_dir():
        raise UserError(f"{path} is a directory; --out names the results JSON file to write")
    if not path.exists():
        return
    if not is_results_file(path):
        raise UserError(f"{path} exists and is not an edgecnn results file; choose another --out "
                        "(edgecnn never overwrites files it did not write)")
    if not force:
        raise UserError(f"{path} already holds benchmark results; pass --force to replace them or choose "
                        "another --out")


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename), so a Ctrl-C never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({k: v for k, v in results.items() if k != "source"}, f, indent=1)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
