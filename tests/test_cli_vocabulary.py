"""One CLI vocabulary (issue 24 point 4): one flag means one thing on every command, the old spellings still parse
for a release, and bench's INT8 exports take export's calibration flags."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import edgecnn
from edgecnn.cli import build_parser


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(argv).parse_args(argv)


def _flags(command: str, *required: str) -> set[str]:
    parser = build_parser([command, *required])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s for a in sub._actions for s in a.option_strings}


@pytest.mark.parametrize("argv, dest, value", [
    (["bench", "m", "--runtimes", "onnxruntime", "--out", "r.json"], "runtimes", ["onnxruntime"]),
    (["bench", "m", "--targets", "onnxruntime", "--out", "r.json"], "runtimes", ["onnxruntime"]),
    (["bench", "m", "--peer-calib-samples", "7", "--out", "r.json"], "peer_calib_samples", 7),
    (["bench", "m", "--calibration-samples", "7", "--out", "r.json"], "peer_calib_samples", 7),
    (["deploy", "m", "--device", "onnxruntime", "--out", "b"], "device", "onnxruntime"),
    (["deploy", "m", "--target", "onnxruntime", "--out", "b"], "device", "onnxruntime"),
    (["train", "m", "--batch", "16"], "batch_size", 16),
    (["train", "m", "--batch-size", "16"], "batch_size", 16),
    (["eval", "m", "--batch", "16"], "batch_size", 16),
    (["pick", "--budget-ms", "1", "--max-test-drop", "0.5"], "max_test_drop", 0.5),
    (["pick", "--budget-ms", "1", "--max-drop", "0.5"], "max_test_drop", 0.5),
])
def test_new_names_and_old_spellings_mean_the_same(argv: list[str], dest: str, value: object) -> None:
    assert getattr(_parse(argv), dest) == value


def test_every_command_that_calibrates_int8_takes_the_same_flags() -> None:
    calibration = {"--calibrator", "--calib-samples", "--calib-data", "--max-drop", "--placement", "--fallback"}
    for command, required in (("export", ["m"]), ("deploy", ["m", "--device", "onnxruntime", "--out", "b"]),
                              ("bench", ["m", "--out", "r.json"])):
        assert calibration <= _flags(command, *required), command
    assert "--target" not in _flags("bench", "m", "--out", "r.json"), "--target is an export format only"


def test_bench_calibration_flags_reach_its_int8_exports_and_their_cache() -> None:
    from edgecnn.benchmarks.settings import SweepSettings
    from edgecnn.benchmarks.models import _calibration_tag

    plain = SweepSettings(models=["lenet5_fmnist"]).calibration_options()
    bounded = SweepSettings(models=["lenet5_fmnist"], calibrator="minmax", max_drop=0.5, fallback="cost",
                            placement="fast").calibration_options()
    assert (bounded.calibrator, bounded.max_drop, bounded.fallback, bounded.placement) == ("minmax", 0.5, "cost", "fast")
    assert _calibration_tag(plain) == "" and _calibration_tag(bounded).startswith(".")
    assert _calibration_tag(bounded) != _calibration_tag(SweepSettings(models=["x"], max_drop=0.5).calibration_options())


def test_edgecnn_bench_is_the_command_in_python(tmp_path: Path) -> None:
    results = edgecnn.bench(["lenet5_fmnist"], tmp_path / "r.json", runtimes=["onnxruntime"], precisions=["fp32"],
                            threads=[1], warmup_s=0, duration_s=None, iters=3, rounds=1, accuracy_samples=50,
                            cache_dir=tmp_path / "cache")
    record, = results["records"]
    assert (record["model"], record["runtime"], record["precision"]) == ("lenet5_fmnist", "onnxruntime", "fp32")
    assert json.loads((tmp_path / "r.json").read_text())["records"][0]["latency_ms"] == record["latency_ms"]


def test_bench_times_the_placement_it_is_given_and_report_shows_both_side_by_side(tmp_path: Path) -> None:
    from edgecnn.benchmarks import read_results
    from edgecnn.cli import main
    from edgecnn.export.manifest import read_manifest

    quick = ["lenet5_fmnist", "--runtimes", "onnxruntime", "--precisions", "int8", "--threads", "1", "--iters", "5",
             "--rounds", "1", "--warmup-s", "0", "--accuracy-samples", "200", "--calibrator", "minmax",
             "--calib-samples", "64", "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert main(["bench", *quick, "--out", str(tmp_path / "plain.json")]) == 0
    assert main(["bench", *quick, "--placement", "fast", "--out", str(tmp_path / "fast.json")]) == 0
    plain, = read_results(tmp_path / "plain.json")["records"]
    fast, = read_results(tmp_path / "fast.json")["records"]
    assert plain.get("variant") is None and fast["variant"] == "placement-fast"
    assert plain["artifact"]["path"] != fast["artifact"]["path"], "each recipe is cached in its own folder"
    assert "placement" in read_manifest(fast["artifact"]["path"])["calibration"]
    assert main(["report", str(tmp_path / "plain.json"), str(tmp_path / "fast.json"), "--out", str(tmp_path / "r")]) == 0
    report = (tmp_path / "r" / "README.md").read_text()
    assert "onnxruntime int8 placement-fast" in report and "onnxruntime int8 " in report


EXPORT_FLAGS = {"--opset", "--exporter", "--input-size", "--half-io", "--parity-samples", "--seed", "--exit-budget",
                "--early-exit"}


def test_deploy_exports_with_the_export_flags_and_refuses_them_on_an_artifact(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    from edgecnn.cli import main
    from edgecnn.export.manifest import read_manifest

    assert EXPORT_FLAGS <= _flags("export", "m")
    assert EXPORT_FLAGS <= _flags("deploy", "m", "--device", "onnxruntime", "--out", "b")
    bundle = tmp_path / "b"
    assert main(["deploy", "lenet5_fmnist", "--device", "onnxruntime", "--opset", "18", "--parity-samples", "7",
                 "--out", str(bundle), "--no-progress"]) == 0
    m = read_manifest(bundle)
    assert (m["target_info"]["onnx"]["opset"], m["parity"][0]["samples"]) == (18, 7)
    # an artifact folder is bundled as it is: an export flag would need an export, so it is refused, nothing written
    artifact = edgecnn.export("lenet5_fmnist", "onnx", "fp32", tmp_path / "a").path
    capsys.readouterr()
    assert main(["deploy", str(artifact), "--device", "onnxruntime", "--opset", "17", "--out", str(tmp_path / "c")]) == 2
    assert "export options would need an export" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
