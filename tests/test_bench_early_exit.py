"""`edgecnn bench` on a BranchyNet model: a real quick sweep of b_lenet_fmnist (torch + ONNX Runtime, FP32).

The early-exit session and its trunk are timed as two configurations of one group; the record's `early_exit`
section must be consistent with the records' own numbers. Asserts structure and sanity, never absolute times.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from edgecnn.benchmarks.early_exit_record import predicted_settings
from edgecnn.benchmarks.harness import run_sweep
from edgecnn.benchmarks.pick import Candidate, confirm, pick
from edgecnn.benchmarks.schema import read_results
from edgecnn.benchmarks.settings import SweepSettings
from edgecnn.cli.bench import _print_records
from edgecnn.export.manifest import read_manifest

SAMPLES, ITERS, ROUNDS = 200, 20, 2


@pytest.fixture(scope="module")
def results_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench_ee")
    settings = SweepSettings(models=["b_lenet_fmnist"], runtimes=["torch", "onnxruntime"], precisions=["fp32"],
                             batches=[1], threads=[1], warmup_s=0.05, duration_s=None, iters=ITERS, rounds=ROUNDS,
                             accuracy_samples=SAMPLES, cache_dir=root / "cache")
    run_sweep(settings, root / "bench.json", command="pytest early-exit sweep")
    return root / "bench.json"


@pytest.fixture(scope="module")
def results(results_file: Path) -> dict:
    return read_results(results_file)


def _one(results: dict, **match: object) -> dict:
    found = [r for r in results["records"] if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, [(r["runtime"], r["flow"], r["variant"]) for r in results["records"]])
    return found[0]


def test_early_exit_and_trunk_are_timed_in_the_same_rounds(results: dict) -> None:
    assert results["skipped"] == [] and len(results["records"]) == 3
    ee = _one(results, runtime="onnxruntime", flow="edgecnn")
    trunk = _one(results, runtime="onnxruntime", flow="trunk")
    assert (ee["variant"], trunk["variant"]) == ("early-exit", "trunk")
    assert ee["session"]["backend"] == "early_exit" and trunk["session"]["backend"] == "onnxruntime"
    assert ee["artifact"]["path"] == trunk["artifact"]["path"]  # the trunk is the same artifact's plain graph
    for r in (ee, trunk):
        assert r["iterations"] == ITERS and r["rounds"] == len(r["round_p50_ms"]) == ROUNDS
        assert 0 < r["latency_ms"]["min"] <= r["latency_ms"]["mean"] <= r["latency_ms"]["max"]
    assert ee["latency_statistic"] == "mean" and "early_exit" not in trunk


def test_early_exit_section_is_consistent_with_the_records(results: dict) -> None:
    ee = _one(results, runtime="onnxruntime", flow="edgecnn")
    trunk = _one(results, runtime="onnxruntime", flow="trunk")
    section = ee["early_exit"]
    stored = read_manifest(Path(ee["artifact"]["path"]))["early_exit"]
    assert section["thresholds"] == stored["thresholds"] and section["stages"] == len(stored["stages"])
    fractions = section["exit_fractions"]
    assert len(fractions) == len(section["exit_accuracy"]) == section["stages"] == len(section["thresholds"]) + 1
    assert all(0 <= f <= 1 for f in fractions) and sum(fractions) == pytest.approx(1.0, abs=1e-4)
    assert section["samples"] == SAMPLES
    assert section["ms_per_sample"] == pytest.approx(ee["latency_ms"]["mean"] / ee["batch"])
    assert section["trunk_ms_per_sample"] == pytest.approx(trunk["latency_ms"]["mean"] / trunk["batch"])
    assert section["speedup_vs_trunk"] == pytest.approx(trunk["latency_ms"]["mean"] / ee["latency_ms"]["mean"],
                                                        abs=1e-3)
    assert section["accuracy"] == ee["accuracy"]["top1"] and section["trunk_accuracy"] == trunk["accuracy"]["top1"]
    assert section["accuracy_vs_trunk_pt"] == pytest.approx(section["accuracy"] - section["trunk_accuracy"], abs=1e-3)
    for acc in (section["accuracy"], section["trunk_accuracy"], section["accuracy_by_rule"], *section["exit_accuracy"]):
        assert 0.0 <= acc <= 100.0
    # the loop at batch 1 and the exit rule on every exit's outputs decide alike (one image is 0.5 pt here)
    assert abs(section["accuracy_by_rule"] - section["accuracy"]) <= 0.5
    # the final exit alone is the trunk
    assert abs(section["exit_accuracy"][-1] - section["trunk_accuracy"]) <= 0.5


def test_record_names_the_form_it_ran_and_its_stage_costs_at_its_threads(results: dict) -> None:
    ee = _one(results, runtime="onnxruntime", flow="edgecnn")
    section = ee["early_exit"]
    stored = read_manifest(Path(ee["artifact"]["path"]))["early_exit"]
    assert section["form"] == stored["form"] == ee["session"]["form"]
    assert len(section["stage_ms"]) == section["stages"] and min(section["stage_ms"]) >= 0
    assert "at this record's threads" in section["stage_ms_measures"]
    front = section["tuning"]["front"]
    assert all(len(s["thresholds"]) == section["stages"] - 1 for s in front), "pick names the thresholds it picks"


def test_torch_on_a_multi_exit_model_is_the_eager_trunk(results: dict) -> None:
    eager = _one(results, runtime="torch")
    assert eager["flow"] == "edgecnn" and eager["variant"] == "trunk" and "early_exit" not in eager
    assert "final exit" in eager["measures"]
    trunk = _one(results, runtime="onnxruntime", flow="trunk")
    assert trunk["accuracy"]["agreement_vs_torch_fp32"] >= 99.0


def test_pick_takes_the_early_exit_record_at_its_mean(results: dict) -> None:
    ee = _one(results, runtime="onnxruntime", flow="edgecnn")
    answer = pick([results], budget_ms=1e3, statistic="p50")
    chosen = {c.label: c for c in answer.chosen}
    label = "b_lenet_fmnist onnxruntime fp32 early-exit (threads 1, mean)"
    assert label in chosen and chosen[label].latency_ms == ee["latency_ms"]["mean"]
    assert not any(c.record["flow"] == "trunk" for c in answer.chosen + answer.excluded)  # a baseline, not a pick


def test_pick_searches_every_threshold_setting_of_the_sweep_predicted_from_the_records_stage_costs(
        results: dict) -> None:
    from edgecnn.export.early_exit_thresholds import expected_ms

    ee = _one(results, runtime="onnxruntime", flow="edgecnn")
    section, tuning = ee["early_exit"], ee["early_exit"]["tuning"]
    others = [s for s in tuning["front"] if s["thresholds"] != section["thresholds"]]
    assert others, "the sweep has settings besides the stored one"
    around = ee["latency_ms"]["mean"] - expected_ms(section["exit_fractions"], section["stage_ms"])
    answer = pick([results], budget_ms=1e3)
    predicted = [c for c in answer.chosen + answer.excluded if c.predicted]
    assert sorted(tuple(c.thresholds) for c in predicted) == sorted(tuple(s["thresholds"]) for s in others)
    for c in predicted:
        s = next(s for s in others if s["thresholds"] == c.thresholds)
        assert c.latency_ms == pytest.approx(expected_ms(s["exit_fractions"], section["stage_ms"]) + around)
        assert c.accuracy == pytest.approx(ee["accuracy"]["top1"] + s["accuracy"] - tuning["chosen"]["accuracy"])
        assert c.drop == pytest.approx(ee["accuracy"]["reference_top1"] - c.accuracy, abs=1e-3)
        assert "predicted" in c.label and c.record is ee
    # a budget between two predicted settings keeps the faster, and says the slower is over it (predicted)
    fast, slow = min(predicted, key=lambda c: c.latency_ms), max(predicted, key=lambda c: c.latency_ms)
    tight = pick([results], budget_ms=(fast.latency_ms + slow.latency_ms) / 2)
    assert fast.thresholds in [c.thresholds for c in tight.chosen]
    assert any(c.thresholds == slow.thresholds and "over budget: mean (predicted)" in c.reason
               for c in tight.excluded)
    assert predicted_settings({**ee, "batch": 4}) == [], "latency at batch 1 only"


def test_confirm_measures_a_setting_on_its_artifact_as_the_record_was_measured(results: dict) -> None:
    ee = _one(results, runtime="onnxruntime", flow="edgecnn")
    own = confirm(Candidate(ee, "here", 0.0, 0.0, 0.0, "mean", thresholds=list(ee["early_exit"]["thresholds"])))
    measured = own.confirmation
    assert measured["images"] == SAMPLES and measured["latency_ms"] > 0
    # the record's own setting is timed again beside it: how much busier or quieter the machine is than then
    assert measured["machine_drift"] == pytest.approx(measured["recorded_setting_ms_now"] / ee["latency_ms"]["mean"],
                                                      rel=1e-3)
    # its thresholds, the same images: the top-1 of the exit rule the record saw
    assert measured["top1"] == pytest.approx(ee["early_exit"]["accuracy_by_rule"], abs=1e-3)
    gone = confirm(Candidate({**ee, "artifact": {**ee["artifact"], "path": "/nonexistent/artifact"}}, "here", 0.0,
                             0.0, 0.0, "mean", thresholds=[0.0]))
    assert "/nonexistent/artifact cannot be run here" in gone.confirmation["not_measured"]
    plain = Candidate(ee, "here", 1.0, 90.0, 0.5, "mean")
    assert confirm(plain).confirmation is None, "a measured record needs no confirmation"


def test_cli_pick_confirms_a_predicted_answer_before_saying_it(results_file: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from edgecnn.cli import main

    main(["pick", "--results", str(results_file), "--budget-ms", "1000"])
    out = capsys.readouterr().out
    pick_line = next(line for line in out.splitlines() if line.startswith("pick: "))
    assert "early-exit" in pick_line and "at thresholds" in pick_line and "predicted" in pick_line
    assert "confirmed by one measurement: " in out and "% against the prediction; within the budget" in out
    assert "the record's own thresholds, timed in the same rounds, ran " in out


def test_cli_prints_the_early_exit_table(results: dict, capsys: pytest.CaptureFixture[str]) -> None:
    _print_records(results)
    out = capsys.readouterr().out
    assert "edgecnn early-exit" in out and "early-exit ms/sample" in out and "speed-up" in out


def test_record_carries_the_export_sweep_and_the_report_draws_it(results: dict, tmp_path: Path) -> None:
    from edgecnn.benchmarks.report import write_report

    ee = _one(results, runtime="onnxruntime", flow="edgecnn")
    tuning = ee["early_exit"]["tuning"]
    stored = read_manifest(Path(ee["artifact"]["path"]))["early_exit"]["per_precision"]["fp32"]
    assert tuning["chosen"] == {"accuracy": stored["accuracy"], "expected_ms": stored["expected_ms"]}
    front = tuning["front"]
    assert len(front) == len(stored["sweep"]) >= 2
    assert [s["expected_ms"] for s in front] == sorted(s["expected_ms"] for s in front)  # fastest first
    assert [s["accuracy"] for s in front] == sorted(s["accuracy"] for s in front)      # each one more accurate
    index = write_report([results], tmp_path / "report")
    assert "![early-exit threshold sweeps](early-exit-curves.png)" in index.read_text()
    assert (index.parent / "early-exit-curves.png").stat().st_size > 10_000
    # every sweep on one plot with the plain models' points, and listed as the report's own file
    assert "![early exit among the plain models](early-exit-tradeoff.png)" in index.read_text()
    assert (index.parent / "early-exit-tradeoff.png").stat().st_size > 10_000
    assert "early-exit-tradeoff.png" in (index.parent / "edgecnn-report.json").read_text()
