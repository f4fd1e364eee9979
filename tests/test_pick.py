"""`edgecnn pick` on crafted results: ranking, ties, nothing within budget, missing accuracy, other machines,
impossible numbers and untrusted drops, names that hold control characters, oversubscribed timings."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from edgecnn.benchmarks.machine import machine_info
from edgecnn.benchmarks.pick import load_for_pick, pick
from edgecnn.benchmarks.schema import RESULTS_KIND, SCHEMA_VERSION, read_results
from edgecnn.cli import main
from edgecnn.errors import UserError

ELSEWHERE = {"name": "Jetson Orin ×6", "cpu": "ARMv8 Processor rev 1 (v8l)", "logical_cores": 6}


def record(model: str, runtime: str, precision: str, p50: float, top1: float | None, reference: float = 92.0,
           batch: int = 1, flow: str = "edgecnn", threads: int = 1) -> dict[str, Any]:
    accuracy = None if top1 is None else {"top1": top1, "reference_top1": reference,
                                          "drop": round(reference - top1, 3), "agreement_vs_torch_fp32": 99.0}
    return {"model": model, "runtime": runtime, "precision": precision, "batch": batch, "threads": threads,
            "flow": flow, "peer": {"name": "nncf-quantize"} if flow == "peer" else None,
            "executed_precision": precision,
            "latency_ms": {"mean": p50, "p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "min": p50 * 0.9,
                           "max": p50 * 1.5, "std": 0.01}, "throughput": batch * 1e3 / p50,
            "round_p50_ms": [p50], "spread_pct": 0.0, "memory": {"rss_delta_mb": 1.0},
            "artifact": {"path": "crafted", "bytes": 1000}, "accuracy": accuracy}


def results(records: list[dict[str, Any]], machine: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": RESULTS_KIND, "machine": machine or machine_info(),
            "tools": {}, "command": "edgecnn bench (crafted)", "settings": {}, "records": records, "skipped": [],
            "source": "crafted.json"}


def labels(candidates: list[Any]) -> list[str]:
    return [f"{c.record['model']} {c.record['runtime']} {c.record['precision']}" for c in candidates]


def test_ranks_by_accuracy_then_latency_and_says_why_the_others_are_out() -> None:
    answer = pick([results([
        record("resnet18_fmnist", "openvino", "int8", 0.9, 93.8, reference=94.2),
        record("resnet18_fmnist", "onnxruntime", "fp32", 1.8, 94.2, reference=94.2),
        record("resnet18_fmnist", "torch", "fp32", 4.0, 94.2, reference=94.2),
        record("lenet5_fmnist", "onnxruntime", "int8", 0.1, 89.0, reference=91.1),
        record("lenet5_fmnist", "onnxruntime", "fp32", 0.2, 91.1, reference=91.1),
        record("resnet18_fmnist", "openvino", "int8", 0.5, 93.0, reference=94.2, batch=8),
        record("resnet18_fmnist", "openvino", "int8", 0.5, 94.0, reference=94.2, flow="peer")])],
        budget_ms=2.0, max_drop=0.5)
    assert labels(answer.chosen) == ["resnet18_fmnist onnxruntime fp32", "resnet18_fmnist openvino int8",
                                     "lenet5_fmnist onnxruntime fp32"]
    reasons = {c.label: c.reason for c in answer.excluded}
    assert reasons["resnet18_fmnist torch fp32 (threads 1)"].startswith("over budget")
    assert reasons["lenet5_fmnist onnxruntime int8 (threads 1)"].startswith("over the drop: 2.10 pt")
    assert len(answer.excluded) == 2  # the batch-8 record and the peer are not candidates at batch 1


def test_ties_in_accuracy_rank_the_faster_first_and_keep_both() -> None:
    answer = pick([results([record("a_fmnist", "openvino", "fp32", 1.5, 92.0),
                            record("a_fmnist", "onnxruntime", "fp32", 1.2, 92.0)])], budget_ms=2.0)
    assert labels(answer.chosen) == ["a_fmnist onnxruntime fp32", "a_fmnist openvino fp32"]


def test_nothing_within_budget_leaves_every_candidate_excluded_over_budget() -> None:
    answer = pick([results([record("a_fmnist", "onnxruntime", "fp32", 3.0, 92.0),
                            record("a_fmnist", "openvino", "int8", 2.5, 91.9)])], budget_ms=1.0)
    assert answer.chosen == []
    assert [c.reason.split(":")[0] for c in answer.excluded] == ["over budget", "over budget"]


def test_missing_accuracy_excludes_with_its_reason_and_a_statistic_can_be_chosen() -> None:
    answer = pick([results([record("resnet50", "onnxruntime", "fp32", 40.0, None)])], budget_ms=50.0)
    assert answer.chosen == [] and "no accuracy measured" in answer.excluded[0].reason
    answer = pick([results([record("a_fmnist", "onnxruntime", "fp32", 1.0, 92.0)])], budget_ms=1.2,
                  statistic="p99")  # p99 = 1.3 ms
    assert answer.chosen == [] and "p99 1.3 ms" in answer.excluded[0].reason


def test_results_from_another_machine_are_refused_unless_asked_and_excluded_when_mixed(tmp_path: Path) -> None:
    other = tmp_path / "jetson.json"
    other.write_text(json.dumps(results([record("a_fmnist", "tensorrt", "int8", 0.3, 91.8)], ELSEWHERE)))
    with pytest.raises(UserError, match="not this machine.*--any-machine"):
        load_for_pick([other])
    assert len(load_for_pick([other], any_machine=True)) == 1
    here = tmp_path / "here.json"
    here.write_text(json.dumps(results([record("a_fmnist", "onnxruntime", "fp32", 1.0, 92.0)])))
    answer = pick(load_for_pick([here, other]), budget_ms=2.0)
    assert labels(answer.chosen) == ["a_fmnist onnxruntime fp32"]
    assert answer.excluded[0].reason.startswith("not measured on this machine (measured on Jetson Orin ×6)")


def early_exit(p50: float, mean: float, top1: float) -> dict[str, Any]:
    """An early-exit record: most images leave early (low p50), the rest pay every stage (higher mean)."""
    r = record("b_resnet_fmnist", "onnxruntime", "fp32", p50, top1)
    r["latency_ms"]["mean"] = mean
    return {**r, "variant": "early-exit", "latency_statistic": "mean", "early_exit": {"speedup_vs_trunk": 1.6}}


def test_same_cpu_name_with_other_speed_flags_is_another_machine() -> None:
    """Cloud VMs call every EPYC generation "AMD EPYC": an AVX2 host's latencies say nothing about a VNNI one."""
    from edgecnn.benchmarks.machine import same_machine

    here = machine_info()
    other = {**here, "cpu_flags": {**here["cpu_flags"], "avx512_vnni": not here["cpu_flags"]["avx512_vnni"]}}
    assert same_machine(here, dict(here)) and not same_machine(here, other)
    answer = pick([results([record("m", "onnxruntime", "int8", 1.0, 92.0)], machine=other)], budget_ms=2.0)
    assert not answer.chosen and "not measured on this machine" in answer.excluded[0].reason
    assert ("avx512_vnni" in answer.excluded[0].reason) == other["cpu_flags"]["avx512_vnni"]


def test_an_early_exit_record_is_a_candidate_held_to_its_mean(tmp_path: Path, capsys) -> None:
    trunk = {**record("b_resnet_fmnist", "onnxruntime", "fp32", 1.2, 92.0), "flow": "trunk", "variant": "trunk"}
    crafted = results([early_exit(p50=0.5, mean=1.5, top1=91.9), trunk])
    answer = pick([crafted], budget_ms=1.0)  # p50 0.5 fits, the mean does not
    assert answer.chosen == [] and len(answer.excluded) == 1  # the trunk is a baseline, never a candidate
    assert answer.excluded[0].reason == "over budget: mean 1.5 ms > 1 ms"
    answer = pick([crafted], budget_ms=2.0, statistic="p99")
    assert [c.label for c in answer.chosen] == ["b_resnet_fmnist onnxruntime fp32 early-exit (threads 1, mean)"]
    assert answer.chosen[0].latency_ms == 1.5
    path = tmp_path / "ee.json"
    path.write_text(json.dumps(crafted))
    assert main(["pick", "--budget-ms", "2", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fp32 early-exit" in out and "1.500 (mean)" in out


@pytest.mark.parametrize("kwargs, message", [({"budget_ms": 0}, "--budget-ms must be greater than 0"),
                                             ({"budget_ms": -1}, "--budget-ms must be greater than 0"),
                                             ({"budget_ms": 1, "max_drop": -0.1}, "--max-drop must be 0 or more"),
                                             ({"budget_ms": 1, "statistic": "p42"}, "unknown latency statistic")])
def test_bad_numbers_are_one_user_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        pick([results([])], **kwargs)


def test_cli_pick_prints_the_answer_and_exits_1_when_nothing_fits(tmp_path: Path, capsys) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results([record("a_fmnist", "onnxruntime", "fp32", 1.0, 92.0),
                                        record("a_fmnist", "torch", "fp32", 3.0, 92.0)])))
    assert main(["pick", "--budget-ms", "2", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pick: a_fmnist onnxruntime fp32" in out and "a_fmnist torch fp32 (threads 1): over budget" in out
    assert main(["pick", "--budget-ms", "0.5", "--results", str(path)]) == 1
    assert "nothing meets the budget" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pick", "--budget-ms", "0"])
    assert e.value.code == 2 and "--budget-ms: must be greater than 0, got 0" in capsys.readouterr().err
    future = tmp_path / "v2.json"
    future.write_text(json.dumps({**results([]), "schema_version": SCHEMA_VERSION + 1}))
    assert main(["pick", "--budget-ms", "1", "--results", str(future)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgecnn: error:") and "schema version 2" in err and len(err.splitlines()) == 1
    foreign = tmp_path / "other.json"
    foreign.write_text(json.dumps({"benchmark": "export_time"}))
    with pytest.raises(UserError, match="not an edgecnn benchmark results file"):
        read_results(foreign)


def test_without_results_it_reads_the_committed_ones_for_this_cpu_or_says_what_to_run(monkeypatch, capsys) -> None:
    pick_module = sys.modules[pick.__module__]  # the module (the package re-exports the function as `pick`)

    committed = sorted(p for p in pick_module.COMMITTED.glob("*.json") if p.name.startswith(("fmnist", "canonical")))
    assert committed, "benchmarks/results holds the committed `edgecnn bench` sweeps"
    measured_on = read_results(committed[0])["machine"]
    monkeypatch.setattr(pick_module, "machine_info", lambda: measured_on)
    from edgecnn.benchmarks.machine import same_machine
    assert pick_module.committed_results() == [p for p in committed
                                                if same_machine(read_results(p)["machine"], measured_on)]
    assert main(["pick", "--budget-ms", "1000"]) == 0
    assert "pick:" in capsys.readouterr().out
    monkeypatch.setattr(pick_module, "machine_info", lambda: ELSEWHERE)
    assert main(["pick", "--budget-ms", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no committed results for this machine (Jetson Orin ×6)" in err
    assert "edgecnn bench" in err


def _written(tmp_path: Path, document: dict[str, Any], name: str = "r.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("written_drop", [None, 0.0])
def test_the_drop_is_worked_out_from_the_reference_never_read(written_drop: float | None, tmp_path: Path) -> None:
    """50 % top-1 against a 91.5 % reference is 41.5 pt lost, whatever the file says the drop is."""
    poor = record("a_fmnist", "onnxruntime", "int8", 0.5, 50.0, reference=91.5)
    poor["accuracy"]["drop"] = written_drop
    fair = record("a_fmnist", "onnxruntime", "fp32", 1.0, 91.5, reference=91.5)
    for loaded in (load_for_pick([_written(tmp_path, results([poor, fair]))]), [results([poor, fair])]):
        answer = pick(loaded, budget_ms=2.0, max_drop=0.5)
        assert labels(answer.chosen) == ["a_fmnist onnxruntime fp32"]
        assert [c.reason for c in answer.excluded] == ["over the drop: 41.50 pt below its FP32 > 0.5 pt"]


@pytest.mark.parametrize("field, value", [("p50", float("nan")), ("p50", -5.0), ("top1", float("nan"))])
def test_a_record_with_an_impossible_number_is_one_line_naming_it(field: str, value: float, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Before, NaN or negative latencies and a NaN top-1 ranked first."""
    bad = record("b_fmnist", "openvino", "int8", 0.2, 91.0)
    (bad["accuracy"] if field == "top1" else bad["latency_ms"])[field] = value
    path = _written(tmp_path, results([record("a_fmnist", "onnxruntime", "fp32", 1.0, 92.0), bad]))
    assert main(["pick", "--budget-ms", "2", "--results", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1
    assert f"{path}: record 1 (b_fmnist openvino int8, batch 1)" in err and f"{field} must be a finite number" in err


def test_a_record_without_accuracy_is_said_to_lack_it_whatever_its_latency() -> None:
    """Never a candidate: "over budget" would suggest a larger budget could pick it."""
    bundle = {**record("a_fmnist", "tensorrt", "fp16", 40.0, None), "deploy_bundle": {"target": "jetson"}}
    answer = pick([results([record("a_fmnist", "onnxruntime", "fp32", 40.0, None), bundle], ELSEWHERE)],
                  budget_ms=1.0, any_machine=True)
    assert [c.reason for c in answer.excluded] == [
        "no accuracy measured (latency only: pass --data to `edgecnn bench`)",
        "no accuracy measured (latency only: a deploy bundle's bench.sh measures no accuracy)"]


def test_names_from_results_files_are_escaped_on_the_terminal(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    evil_model, evil_machine = "m\x1b[2J\nforged line", "box\x1b]0;title\x07\r"
    path = _written(tmp_path, results([record(evil_model, "onnxruntime", "fp32", 1.0, 92.0),
                                       record(evil_model, "openvino", "fp32", 3.0, 92.0)],
                                      {**machine_info(), "name": evil_machine}))
    assert main(["pick", "--budget-ms", "2", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r") and "forged line" not in out.splitlines()[0]
    assert not any(line.startswith("forged line") for line in out.splitlines())
    assert "pick: m\\x1b[2J\\nforged line onnxruntime fp32" in out and "box\\x1b]0;title\\x07\\r" in out
    assert "m\\x1b[2J\\nforged line openvino fp32 (threads 1): over budget" in out


def test_an_oversubscribed_pick_is_said_to_be(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    here = machine_info()
    over = record("a_fmnist", "onnxruntime", "fp32", 1.0, 92.0, threads=here["logical_cores"] + 1)
    path = _written(tmp_path, results([over, record("a_fmnist", "openvino", "fp32", 1.5, 92.0)]))
    assert main(["pick", "--budget-ms", "2", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    pick_line = next(line for line in out.splitlines() if line.startswith("pick:"))
    assert "a_fmnist onnxruntime fp32" in pick_line and "oversubscribed" in pick_line
    assert f"{here['logical_cores'] + 1} (over)" in out
    marked = {**record("a_fmnist", "onnxruntime", "fp32", 1.0, 92.0), "oversubscribed": True}  # as bench marks it
    fair = record("a_fmnist", "openvino", "fp32", 1.5, 92.0)
    assert [c.oversubscribed for c in pick([results([marked, fair])], budget_ms=2.0).chosen] == [True, False]
