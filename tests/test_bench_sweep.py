"""A real quick sweep: lenet5_fmnist + resnet18_fmnist on ONNX Runtime and OpenVINO, FP32, few iterations.

Asserts structure and sanity (ordering of the statistics, accuracy against PyTorch, reuse of artifacts,
skips with reasons, Ctrl-C keeping what finished), never absolute times; and `--calibrator` for INT8
exports (part of the reuse match, a calibrator a quantizer lacks is a skip). `--resume` keeps only records it
can re-verify; a full disk loses nothing already written; more threads than cores is said and recorded.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from edgecnn.benchmarks import harness
from edgecnn.benchmarks.cache import ensure_artifact
from edgecnn.benchmarks.harness import run_sweep
from edgecnn.benchmarks.schema import DIGEST_FIELD, SCHEMA_VERSION, read_results, results_digest
from edgecnn.benchmarks.settings import SweepSettings
from edgecnn.calibration import CalibrationOptions
from edgecnn.cli import main
from edgecnn.errors import UserError

MODELS = ["lenet5_fmnist", "resnet18_fmnist"]


def quick(cache: Path, **overrides) -> SweepSettings:
    settings = dict(models=MODELS, runtimes=["onnxruntime", "openvino", "tensorrt"], precisions=["fp32"],
                    batches=[1], threads=[1], warmup_s=0.05, duration_s=None, iters=12, rounds=3,
                    accuracy_samples=256, cache_dir=cache)
    return SweepSettings(**{**settings, **overrides})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    out = root / "bench.json"
    return run_sweep(quick(root / "cache"), out, command="pytest quick sweep"), out, root / "cache"


def test_results_file_is_versioned_and_complete(sweep: tuple[dict, Path, Path]) -> None:
    results, out, _ = sweep
    on_disk = read_results(out)
    assert on_disk["schema_version"] == SCHEMA_VERSION and on_disk["complete"] is True
    assert on_disk["command"] == "pytest quick sweep"
    machine = on_disk["machine"]
    assert machine["cpu"] and machine["logical_cores"] >= 1 and "avx512_vnni" in machine["cpu_flags"]
    assert on_disk["tools"]["onnxruntime"] and on_disk["tools"]["openvino"]
    assert len(on_disk["records"]) == len(results["records"]) == 4


def test_every_record_is_sane(sweep: tuple[dict, Path, Path]) -> None:
    results, _, _ = sweep
    assert {(r["model"], r["runtime"]) for r in results["records"]} == \
        {(m, rt) for m in MODELS for rt in ("onnxruntime", "openvino")}
    for r in results["records"]:
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
        assert r["iterations"] == 12 and r["rounds"] == len(r["round_p50_ms"]) == 3
        assert r["throughput"] == pytest.approx(r["batch"] * 1000 / lat["mean"], rel=0.01)
        assert r["executed_precision"] == "fp32" and r["flow"] == "edgecnn" and r["threads"] == 1
        assert r["artifact"]["bytes"] > 0 and r["artifact"]["parity_passed"] is True
        acc = r["accuracy"]
        assert acc["samples"] == 256 and acc["dataset"] == "fashion_mnist"
        # FP32 artifacts match PyTorch FP32 on real images, so accuracy equals the reference's
        assert acc["agreement_vs_torch_fp32"] >= 99.0 and abs(acc["drop"]) <= 1.0
        assert 60.0 < acc["top1"] <= 100.0


def test_impossible_combinations_are_skipped_with_their_reason(sweep: tuple[dict, Path, Path]) -> None:
    skipped = sweep[0]["skipped"]
    assert {(s["model"], s["runtime"]) for s in skipped} == {(m, "tensorrt") for m in MODELS}
    assert all("tensorrt" in s["reason"] or "GPU" in s["reason"] for s in skipped)


def test_matching_artifacts_are_reused_and_ctrl_c_keeps_what_finished(sweep: tuple[dict, Path, Path],
                                                                      tmp_path: Path, monkeypatch) -> None:
    _, _, cache = sweep
    real = harness._timed_calls
    calls = {"n": 0}

    def interrupt_in_second_model(run, x, seconds=None, iters=None):  # the runtimes still run for real
        calls["n"] += 1
        if calls["n"] > 8:  # 2 warm-ups + 2 × 3 rounds of the first model
            raise KeyboardInterrupt
        return real(run, x, seconds, iters)

    monkeypatch.setattr(harness, "_timed_calls", interrupt_in_second_model)
    out = tmp_path / "interrupted.json"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(quick(cache, runtimes=["onnxruntime", "openvino"]), out)
    kept = read_results(out)
    assert kept["complete"] is False and "Ctrl-C" in kept["interrupted"]
    assert {r["model"] for r in kept["records"]} == {"lenet5_fmnist"}
    assert all(r["artifact"]["reused"] for r in kept["records"])

    monkeypatch.setattr(harness, "_timed_calls", real)
    with pytest.raises(UserError, match="other settings .*rounds 3 → 4"):
        run_sweep(quick(cache, runtimes=["onnxruntime", "openvino"], rounds=4), out, resume=True)
    resumed = run_sweep(quick(cache, runtimes=["onnxruntime", "openvino"]), out, resume=True)
    assert resumed["complete"] is True and len(resumed["resumed"]) == 1
    assert resumed["created_utc"] == kept["created_utc"]
    first = [r for r in resumed["records"] if r["model"] == "lenet5_fmnist"]
    assert first == kept["records"]  # kept as measured, not re-timed
    assert {r["model"] for r in resumed["records"]} == set(MODELS) and len(resumed["records"]) == 4


def test_resume_refuses_results_from_another_machine(sweep: tuple[dict, Path, Path], tmp_path: Path) -> None:
    _, out, cache = sweep
    elsewhere = json.loads(out.read_text())
    elsewhere["machine"]["cpu"] = "Some Other CPU"
    elsewhere[DIGEST_FIELD] = results_digest(elsewhere)  # as that machine's edgecnn would have sealed it
    moved = tmp_path / "elsewhere.json"
    moved.write_text(json.dumps(elsewhere))
    with pytest.raises(UserError, match="not this machine; --resume only continues"):
        run_sweep(quick(cache), moved, resume=True)


def test_out_file_is_never_one_edgecnn_did_not_write(tmp_path: Path) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    with pytest.raises(UserError, match="not an edgecnn results file"):
        run_sweep(quick(tmp_path / "cache"), notes, force=True)
    assert notes.read_text() == '{"mine": true}\n'


@pytest.mark.parametrize("argv, message", [
    (["bench", "nope_fmnist"], "unknown model 'nope_fmnist'"),
    (["bench", "lenet5_fmnist", "--runtimes", "onnx"], "unknown runtime 'onnx' in --runtimes"),
    (["bench", "lenet5_fmnist", "--precisions", "fp8"], "unknown precision 'fp8'"),
    (["bench", "zzz*"], "no model matches"),
])
def test_cli_bad_names_are_one_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "r.json").exists()


def test_cli_bad_numbers_are_refused_by_argparse(tmp_path: Path, capsys) -> None:
    for flag, value in (("--batch", "1,0"), ("--iters", "0"), ("--duration-s", "-1"), ("--threads", "x")):
        with pytest.raises(SystemExit):
            main(["bench", "lenet5_fmnist", flag, value, "--out", str(tmp_path / "r.json")])
        assert flag in capsys.readouterr().err
    assert json.dumps(list(tmp_path.iterdir())) == "[]"


def test_an_int8_artifact_from_another_calibrator_is_exported_again(tmp_path: Path) -> None:
    def int8(calibrator: str) -> tuple[Path, bool]:
        return ensure_artifact("lenet5_fmnist", "onnx", "int8", 1, tmp_path, CalibrationOptions(calibrator=calibrator))

    def requested(path: Path) -> str:
        return json.loads((path / "manifest.json").read_text())["calibration"]["requested"]

    path, reused = int8("minmax")
    assert not reused and requested(path) == "minmax"
    assert int8("minmax") == (path, True)
    path, reused = int8("percentile")  # same model, target, precision and batch: only the calibrator differs
    assert not reused and requested(path) == "percentile"
    assert int8("percentile") == (path, True)


def test_an_int8_artifact_asked_for_as_default_is_not_taken_for_library() -> None:
    """A cache entry made before `default` became `library` (issue 24) records requested "default"; the options now
    hold "library" whichever name was given, so it no longer matches and is exported again, not reused renamed."""
    from edgecnn.benchmarks.models import _calibrated_as

    old = {"requested": "default", "calibration_samples": {"samples": CalibrationOptions().samples}}
    assert not any(_calibrated_as(old, CalibrationOptions(calibrator=asked)) for asked in ("default", "library"))
    assert _calibrated_as({**old, "requested": "library"}, CalibrationOptions(calibrator="default"))


def test_an_artifact_made_by_other_edgecnn_code_or_tools_is_exported_again(tmp_path: Path, monkeypatch) -> None:
    from edgecnn.export import passes

    def fp32() -> tuple[Path, bool]:
        return ensure_artifact("lenet5_fmnist", "onnx", "fp32", 1, tmp_path)

    path, reused = fp32()
    assert not reused and fp32() == (path, True)
    made_by = json.loads((path / "manifest.json").read_text())["tools"]
    assert made_by["edgecnn_source"] == passes.edgecnn_source_digest()
    edited = {**made_by, "edgecnn_source": "0" * 16}          # what an edit to an editable install looks like
    monkeypatch.setattr(passes, "tool_versions", lambda extra=(): edited)
    assert fp32() == (path, False)                            # exported again, by the "edited" code
    assert json.loads((path / "manifest.json").read_text())["tools"] == edited
    monkeypatch.setattr(passes, "tool_versions", lambda extra=(): {**edited, "onnxruntime": "0.0"})
    assert fp32() == (path, False)                            # and after a runtime upgrade


def test_a_calibrator_the_quantizer_lacks_is_a_skip_and_the_settings_record_it(tmp_path: Path) -> None:
    results = run_sweep(quick(tmp_path / "cache", models=["lenet5_fmnist"], runtimes=["torch", "onnxruntime"],
                              precisions=["int8"], calibrator="mse"), tmp_path / "r.json")
    assert results["settings"]["calibrator"] == "mse" and results["records"] == []
    reasons = {s["runtime"]: s["reason"] for s in results["skipped"]}
    assert "calibrator 'mse' does not exist for the onnx target" in reasons["onnxruntime"]
    assert "fp32 only" in reasons["torch"]
    assert not (tmp_path / "cache").exists()  # refused before any export


def test_an_unknown_calibrator_is_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="unknown calibrator 'kl'; choose one of auto"):
        quick(tmp_path, calibrator="kl").validated()
    with pytest.raises(SystemExit):
        main(["bench", "lenet5_fmnist", "--calibrator", "kl", "--out", str(tmp_path / "r.json")])
    assert "--calibrator: invalid choice: 'kl'" in capsys.readouterr().err


def _resume_copy(out: Path, tmp_path: Path, edit=None) -> Path:
    """A copy of a finished run's results, optionally edited, to resume (nothing is left to measure in it)."""
    doc = json.loads(out.read_text())
    if edit:
        edit(doc)
    copy = tmp_path / "resume.json"
    copy.write_text(json.dumps(doc, indent=1))
    return copy


def test_resume_refuses_a_file_edited_since_it_was_written(sweep: tuple[dict, Path, Path], tmp_path: Path) -> None:
    _, out, cache = sweep
    assert run_sweep(quick(cache), _resume_copy(out, tmp_path), resume=True)["complete"] is True  # as written: kept

    def improve(doc: dict) -> None:  # a record "improved" by hand, still plausible
        record = doc["records"][0]
        record["latency_ms"]["p50"], record["accuracy"]["top1"] = 0.0001, 99.99

    for edit, message in ((improve, "was edited since edgecnn wrote it"),
                          (lambda doc: doc.pop(DIGEST_FIELD), f"has no {DIGEST_FIELD}")):
        copy = _resume_copy(out, tmp_path, edit)
        before = copy.read_bytes()
        with pytest.raises(UserError, match=message):
            run_sweep(quick(cache), copy, resume=True)
        assert copy.read_bytes() == before


def test_resume_keeps_a_record_only_while_its_artifact_is_the_one_it_timed(sweep: tuple[dict, Path, Path],
                                                                          tmp_path: Path) -> None:
    from edgecnn.export import export_registered

    results, out, cache = sweep
    record = next(r for r in results["records"] if r["model"] == "lenet5_fmnist" and r["runtime"] == "onnxruntime")
    artifact = Path(record["artifact"]["path"])
    model_file = artifact / "model.onnx"
    original = model_file.read_bytes()
    try:
        model_file.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])  # same size
        with pytest.raises(UserError, match="no longer verifies .*does not match its SHA-256"):
            run_sweep(quick(cache), _resume_copy(out, tmp_path), resume=True)
    finally:
        model_file.write_bytes(original)
    export_registered("lenet5_fmnist", "onnx", "fp32", artifact, batch=1, overwrite=True)  # intact, but another export
    with pytest.raises(UserError, match="is not the export lenet5_fmnist onnxruntime fp32 b1 t1 was timed on"):
        run_sweep(quick(cache), _resume_copy(out, tmp_path), resume=True)


@pytest.fixture
def disk_full_from(monkeypatch: pytest.MonkeyPatch):
    """`arm(folder, n)`: from the n-th temporary file made in `folder` on, writes fail as on a full disk (the
    temporary file's descriptor is pointed at /dev/full; the first one is the harness's writability probe)."""
    real = tempfile.mkstemp

    def arm(folder: Path, nth: int) -> None:
        made = []

        def mkstemp(*args, **kwargs):
            fd, name = real(*args, **kwargs)
            if Path(kwargs.get("dir") or "") == folder:
                made.append(name)
                if len(made) >= nth:
                    full = os.open("/dev/full", os.O_WRONLY)
                    os.dup2(full, fd)
                    os.close(full)
            return fd, name

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return arm


def test_a_full_disk_never_replaces_good_results_and_leaves_no_temporary_file(
        sweep: tuple[dict, Path, Path], tmp_path: Path, disk_full_from) -> None:
    _, out, cache = sweep
    settings = quick(cache, models=["lenet5_fmnist"], runtimes=["onnxruntime"])
    good = tmp_path / "bench.json"
    shutil.copy(out, good)
    disk_full_from(tmp_path, 1)
    with pytest.raises(UserError, match=r"^no space left on device writing .*bench\.json .*; 1 configuration\(s\) "
                                        r"measured since its last write are lost; .*bench\.json is left as it was$"):
        run_sweep(settings, good, force=True)
    assert good.read_bytes() == out.read_bytes()  # the earlier complete results, not an empty start
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


def test_a_full_disk_at_the_last_write_keeps_what_was_measured_for_resume(
        sweep: tuple[dict, Path, Path], tmp_path: Path, disk_full_from, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, cache = sweep
    settings = quick(cache, models=["lenet5_fmnist"], runtimes=["onnxruntime"])
    out = tmp_path / "bench.json"
    disk_full_from(tmp_path, 3)  # the probe, the group's write, then the final one (complete: true)
    with pytest.raises(UserError, match=r"no space left on device .*keeps its last write: rerun with --resume"):
        run_sweep(settings, out)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
    kept = read_results(out)
    assert kept["complete"] is False and len(kept["records"]) == 1
    monkeypatch.undo()
    resumed = run_sweep(settings, out, resume=True)
    assert resumed["complete"] is True and resumed["records"] == kept["records"]


def test_more_threads_than_cores_is_said_and_marked_in_every_record(sweep: tuple[dict, Path, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _, _, cache = sweep
    cores = os.cpu_count()
    out = tmp_path / "over.json"
    assert main(["bench", "lenet5_fmnist", "--runtimes", "onnxruntime", "--precisions", "fp32", "--threads",
                 f"1,{cores + 1}", "--warmup-s", "0", "--iters", "4", "--rounds", "2", "--accuracy-samples", "64",
                 "--cache", str(cache), "--no-progress", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--threads {cores + 1} is more than the {cores} logical cores here" in err[0]
    assert {r["threads"]: r["oversubscribed"] for r in read_results(out)["records"]} == {1: False, cores + 1: True}
