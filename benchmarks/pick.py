"""`pick`: the users' question answered from results — which configuration meets the latency budget with the
least accuracy lost, and why every other one does not.

A candidate is one edgecnn record (model × runtime × precision × threads) at the asked batch, measured on
this machine. It qualifies when its latency statistic (p50 by default, per call) is within the budget and
its accuracy drop against its own model's PyTorch FP32 is within `max_drop` points. Qualifiers rank by
accuracy, where differences within the test's noise are ties and the faster wins among ties (`resolution`).
A configuration near chance for its class count (no trained model for that data), a latency-only one (INT8
calibrated on synthetic inputs) and one whose parity check failed are excluded, with the reason. Peers
(and the trunks timed beside early-exit records) are shown in the report, never picked: they are what edgecnn is
compared with. An early-exit record is a candidate like any other, held to its mean per call (`latency_statistic`; at batch 1
its mean per-sample latency) whatever the statistic asked, since its latency depends on the exit taken.

Early exit is searched jointly: at batch 1, every other threshold setting of an early-exit record's validation sweep
(the one export tuned from) is a candidate too, at that record's runtime, precision, form and threads, its mean
latency and top-1 predicted from what the record measured (`early_exit_record.predicted_settings`). Such a
candidate is marked predicted; `confirm` measures the answer once on its artifact before it is said (the CLI does),
or says why it stays predicted.

Results come through `read_results`, which refuses a record with an impossible number in one line; the drop is
always worked out from the two top-1 figures (`accuracy_drop`), never read. A record timed with more threads
than its machine has logical cores can still be picked, and is said to be oversubscribed when it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgecnn.benchmarks.machine import describe, machine_info, same_machine
from edgecnn.benchmarks.resolution import accuracy_resolution, latency_tied, near_chance, rank
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
    thresholds: list[float] | None = None  # an early-exit setting other than the record's: predicted, not measured
    confirmation: dict[str, Any] | None = None  # `confirm`'s measurement of a predicted setting

    @property
    def predicted(self) -> bool:
        return self.thresholds is not None

    @property
    def label(self) -> str:
        """How it is named on the terminal (names from the file escaped: they may hold control characters)."""
        r = self.record
        held = f", {self.statistic}" if r.get("latency_statistic") else ""
        if not self.predicted:
            return printable(f"{r['model']} {config_name(r)} (threads {r['threads']}{held})")
        setting = ", ".join(f"{t:.4g}" for t in self.thresholds)
        return printable(f"{r['model']} {config_name(r)} {r['early_exit'].get('form', 'stages')} at thresholds "
                         f"[{setting}] (threads {r['threads']}{held}, predicted)")


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
    notes: list[str] = field(default_factory=list)   # the measurement's resolution where it decided the order


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
                            "`edgecnn bench '*_fmnist' --runtimes onnxruntime,openvino --out bench.json`, then "
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
    from edgecnn.benchmarks.early_exit_record import predicted_settings

    for results_file in results:
        local = any_machine or same_machine(results_file["machine"], here)
        for record in results_file["records"]:
            if record["flow"] != "edgecnn" or record["batch"] != batch:
                continue
            accuracy = record["accuracy"]
            held = record.get("latency_statistic") or statistic
            candidates = [Candidate(record, results_file["machine"]["name"], record["latency_ms"][held],
                                    None if accuracy is None else accuracy["top1"],
                                    None if accuracy is None else accuracy_drop(accuracy), held,
                                    oversubscribed(record, results_file["machine"]))]
            candidates += [Candidate(record, results_file["machine"]["name"], s.latency_ms, s.top1,
                                     accuracy_drop({**accuracy, "top1": s.top1}), held, candidates[0].oversubscribed,
                                     thresholds=list(s.thresholds)) for s in predicted_settings(record)]
            for c in candidates:
                c.reason = _exclusion(c, local, results_file["machine"], budget_ms, max_drop)
                (answer.excluded if c.reason else answer.chosen).append(c)
    answer.chosen = rank(answer.chosen, lambda c: c.accuracy, lambda c: c.latency_ms, _resolution)
    answer.notes = _tie_notes(answer.chosen)
    answer.excluded.sort(key=lambda c: (c.reason.split(":")[0], c.latency_ms))
    return answer


def _exclusion(c: Candidate, local: bool, machine: dict[str, Any], budget_ms: float, max_drop: float | None) -> str:
    """Why a candidate is not a qualifier ("" when it is)."""
    if not local:
        return f"not measured on this machine (measured on {describe(machine)})"
    if c.record.get("latency_only"):
        return ("latency only: INT8 calibrated on synthetic inputs (--calib-data synthetic), its accuracy is "
                "unknown; never an accuracy answer")
    if (c.record.get("artifact") or {}).get("parity_passed") is False:
        return "its parity check failed at export: the artifact does not compute what its source model computes"
    if c.accuracy is None:  # never a candidate, whatever its latency
        return "no accuracy measured (latency only: " + (
            "a deploy bundle's bench.sh measures no accuracy)" if c.record.get("deploy_bundle")
            else "pass --data to `edgecnn bench`)")
    chance = near_chance({**c.record["accuracy"], "top1": c.accuracy})
    if chance:
        return chance
    if c.latency_ms > budget_ms:
        held = f"{c.statistic}{' (predicted)' if c.predicted else ''}"
        return f"over budget: {held} {c.latency_ms:.3g} ms > {budget_ms:g} ms"
    if max_drop is not None and c.drop is None:
        return "no FP32 reference top-1 to measure its drop against --max-drop"
    if max_drop is not None and c.drop > max_drop:
        return f"over the drop: {c.drop:.2f} pt below its FP32 > {max_drop:g} pt"
    return ""


def _paired(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """One model's configurations: the same weights measured on the same images against the same reference."""
    keys = ("weights_sha256", "dataset")
    return all(a.get(k) is not None and a.get(k) == b.get(k) for k in keys) and \
        a["accuracy"].get("samples") == b["accuracy"].get("samples")


def _resolution(a: Candidate, b: Candidate) -> float:
    return accuracy_resolution({**a.record["accuracy"], "top1": a.accuracy}, {**b.record["accuracy"], "top1": b.accuracy},
                               _paired(a.record, b.record))


def _tie_notes(ranked: list[Candidate]) -> list[str]:
    """What the measurement could not tell apart at the top of the ranking, and so how the pick was decided."""
    if len(ranked) < 2:
        return []
    best, notes = ranked[0], []
    for other in ranked[1:]:
        gap, resolution = other.accuracy - best.accuracy, _resolution(best, other)
        if gap > 0 and gap < resolution:
            notes.append(f"{other.label} is {gap:.2f} pt more accurate, within the test's resolution of "
                         f"{resolution:.2f} pt (95 %, {other.record['accuracy'].get('samples', '?')} images): a tie, "
                         "and the faster wins")
        elif abs(gap) < resolution and latency_tied(best.record, other.record, best.latency_ms, other.latency_ms):
            notes.append(f"{other.label} ties on accuracy ({gap:+.2f} pt, resolution {resolution:.2f} pt) and on "
                         "latency (within the rounds' spread): either answers the question")
    return [printable(n) for n in notes[:3]]


def confirm(candidate: Candidate) -> Candidate:
    """Measure a predicted early-exit setting once on its artifact (`confirm_setting`): the candidate, with the
    measurement (or why there is none) in `confirmation`. A measured candidate is returned as it is."""
    from edgecnn.benchmarks.early_exit_record import confirm_setting

    if candidate.predicted and candidate.confirmation is None:
        candidate.confirmation = confirm_setting(candidate.record, candidate.thresholds)
    return candidate


__all__ = ["Answer", "Candidate", "STATISTICS", "committed_results", "confirm", "load_for_pick", "pick"]
