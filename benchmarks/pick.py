"""`pick`: the users' question answered from results — which configuration meets the latency budget with the
least accuracy lost, and why every other one does not.

A candidate is one edgecnn record (model × runtime × precision × threads) at the asked batch, measured on
this machine. It qualifies when its latency statistic (p50 by default, per call) is within the budget and
its accuracy drop against its own model's PyTorch FP32 is within `max_drop` points. Qualifiers rank by
accuracy (the least lost), then latency; ties keep both, in latency order. Peers (and the trunks timed beside
early-exit records) are shown in the report, never picked: they are what edgecnn is compared with. An
early-exit record is a candidate like any other, held to its mean per call (`latency_statistic`; at batch 1
its mean per-sample latency) whatever the statistic asked, since its latency depends on the exit taken.

Results come through `read_results`, which refuses a record with an impossible number in one line; the drop is
always worked out from the two top-1 figures (`accuracy_drop`), never read. A record timed with more threads
than its machine has logical cores can still be picked, and is said to be oversubscribed when it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgecnn.benchmarks.machine import describe, machine_info, same_machine
from edgecnn.benchmarks.schema import STATISTICS, accuracy_drop, config_name, oversubscribed, read_results
from edgecnn.errors import UserError
from edgecnn.text import printable
from edgecnn.validation import non_negative_float, positive_float, positive_int

COMMITTED = Path(__file__).parent / "results"


@dataclass
class Candidate:
    record: dict[str, Any]
    machine: str
    latency_ms: float
    accuracy: float | None
    drop: float | None
    statistic: str     # the latency statistic it is held to
    oversubscribed: bool = False  # timed with more threads than its machine's logical cores: timings distorted
    reason: str = ""   # why it is excluded; empty for a qualifier

    @property
    def label(self) -> str:
        """How it is named on the terminal (names from the file escaped: they may hold control characters)."""
        r = self.record
        held = f", {self.statistic}" if r.get("latency_statistic") else ""
        return printable(f"{r['model']} {config_name(r)} (threads {r['threads']}{held})")


@dataclass
class Answer:
    budget_ms: float
    max_drop: float | None
    batch: int
    statistic: str
    sources: list[str]
    machine: str
    chosen: list[Candidate] = field(default_factory=list)
    excluded: list[Candidate] = field(default_factory=list)


def committed_results(machine: dict[str, Any] | None = None) -> list[Path]:
    """The committed results files measured on a machine like this one (`same_machine`)."""
    machine = machine or machine_info()
    found = []
    for path in sorted(COMMITTED.glob("*.json")):
        try:
            results = read_results(path)
        except UserError:
            continue  # other benchmarks' files (export_time.json…) live here too
        if same_machine(results["machine"], machine):
            found.append(path)
    return found


def load_for_pick(paths: Sequence[Path | str] | None, any_machine: bool = False) -> list[dict[str, Any]]:
    """Results to pick from: the files given, or the committed ones for this CPU; one line when none fit."""
    here = machine_info()
    if not paths:
        paths = committed_results(here)
        if not paths:
            raise UserError(f"no committed results for this machine ({here['name']}); measure it with "
                            "`edgecnn bench '*_fmnist' --targets onnxruntime,openvino --out bench.json`, then "
                            "`edgecnn pick --results bench.json ...`")
    results = [read_results(p) for p in paths]
    if not any_machine and not any(same_machine(r["machine"], here) for r in results):
        names = printable(", ".join(sorted({describe(r["machine"]) for r in results})))
        raise UserError(f"{', '.join(map(str, paths))} measured on {names}, not this machine ({describe(here)}); "
                        "pass --any-machine to pick from them anyway, or measure here with `edgecnn bench`")
    return results


def pick(results: Sequence[dict[str, Any]], budget_ms: float, max_drop: float | None = None, batch: int = 1,
         statistic: str = "p50", any_machine: bool = False, machine: dict[str, Any] | None = None) -> Answer:
    """Rank the configurations that meet `budget_ms` (per call at `batch`) with the least accuracy lost."""
    budget_ms = positive_float("--budget-ms", budget_ms)
    max_drop = None if max_drop is None else non_negative_float("--max-drop", max_drop)
    batch = positive_int("--batch", batch)
    if statistic not in STATISTICS:
        raise UserError(f"unknown latency statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")
    here = machine or machine_info()
    answer = Answer(budget_ms, max_drop, batch, statistic, [r.get("source", "?") for r in results], here["name"])
    for results_file in results:
        local = any_machine or same_machine(results_file["machine"], here)
        for record in results_file["records"]:
            if record["flow"] != "edgecnn" or record["batch"] != batch:
                continue
            accuracy = record["accuracy"]
            held = record.get("latency_statistic") or statistic
            c = Candidate(record, results_file["machine"]["name"], record["latency_ms"][held],
                          None if accuracy is None else accuracy["top1"],
                          None if accuracy is None else accuracy_drop(accuracy), held,
                          oversubscribed(record, results_file["machine"]))
            if not local:
                c.reason = f"not measured on this machine (measured on {describe(results_file['machine'])})"
            elif c.accuracy is None:  # never a candidate, whatever its latency
                c.reason = "no accuracy measured (latency only: " + (
                    "a deploy bundle's bench.sh measures no accuracy)" if record.get("deploy_bundle")
                    else "pass --data to `edgecnn bench`)")
            elif c.latency_ms > budget_ms:
                c.reason = f"over budget: {held} {c.latency_ms:.3g} ms > {budget_ms:g} ms"
            elif max_drop is not None and c.drop is None:
                c.reason = "no FP32 reference top-1 to measure its drop against --max-drop"
            elif max_drop is not None and c.drop > max_drop:
                c.reason = f"over the drop: {c.drop:.2f} pt below its FP32 > {max_drop:g} pt"
            (answer.excluded if c.reason else answer.chosen).append(c)
    answer.chosen.sort(key=lambda c: (-c.accuracy, c.latency_ms))
    answer.excluded.sort(key=lambda c: (c.reason.split(":")[0], c.latency_ms))
    return answer


__all__ = ["Answer", "Candidate", "STATISTICS", "committed_results", "load_for_pick", "pick"]
