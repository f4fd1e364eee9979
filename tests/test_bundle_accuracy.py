"""A deploy bundle scores a labelled folder on the device itself: `run.py FOLDER` prints top-1, `bench.sh --images
FOLDER` records it in edgecnn's results schema, and `edgecnn pick` answers from those results. The bundle is the user's
own LeNet (a generated image folder that is not Fashion-MNIST), INT8 on ONNX Runtime; the numbers must be the ones
`edgecnn eval` gets for the same bundle."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgecnn.benchmarks.schema import read_results
from edgecnn.cli import main
from edgecnn.export.deploy import TEMPLATES
from edgecnn.model_ref import comparable_class_name

ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
QUICK_BENCH = ["--iters", "4", "--warmup", "1", "--rounds", "2", "--threads", "1"]
ACCURACY = re.compile(r"^accuracy: top-1 ([\d.]+)% \((\d+)/(\d+)\)", re.MULTILINE)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def eval_correct(shapes_int8_bundle: Path, shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> int:
    """What `edgecnn eval` finds correct on the bundle's own test folder (edgecnn's runtime session)."""
    out = tmp_path_factory.mktemp("eval") / "eval"
    assert main(["eval", str(shapes_int8_bundle), "--data", str(shapes_dir), "--threads", "1", "--out", str(out)]) == 0
    return json.loads((out / "eval.json").read_text())["correct"]


def test_run_py_prints_accuracy_on_a_labelled_folder(shapes_int8_bundle: Path, shapes_dir: Path,
                                                     eval_correct: int) -> None:
    done = _run([sys.executable, str(shapes_int8_bundle / "run.py"), str(shapes_dir / "test"), "--threads", "1"])
    assert done.returncode == 0, done.stderr
    found = ACCURACY.findall(done.stdout)
    assert len(found) == 1 and done.stdout.count(".png: ") == 40, done.stdout[-500:]
    top1, correct, total = float(found[0][0]), int(found[0][1]), int(found[0][2])
    assert total == 40 and top1 == pytest.approx(100 * correct / 40, abs=0.01)
    assert abs(correct - eval_correct) <= 1, "the bundle's own code scores as edgecnn's runtime does"

    flat = _run([sys.executable, str(shapes_int8_bundle / "run.py"), str(shapes_dir / "test" / "zero"),
                 "--threads", "1"])
    assert flat.returncode == 0 and "accuracy" not in flat.stdout, "a folder without class sub-folders has no labels"


def test_bench_sh_records_accuracy_and_pick_answers_from_it(shapes_int8_bundle: Path, shapes_dir: Path,
                                                            eval_correct: int, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "device.json"
    done = _run(["sh", str(shapes_int8_bundle / "bench.sh"), *QUICK_BENCH, "--images", str(shapes_dir / "test"),
                 "--out", str(out)])
    assert done.returncode == 0, done.stderr
    record, = read_results(out)["records"]  # edgecnn's own schema check of every field
    accuracy = record["accuracy"]
    assert accuracy["samples"] == 40 and accuracy["classes"] == 10 and accuracy["dataset"] == "shapes"
    assert abs(accuracy["top1"] * 40 / 100 - eval_correct) <= 1 and f"top-1 {accuracy['top1']:.2f}%" in done.stdout
    assert record["dataset"]["path"] == str((shapes_dir / "test").resolve()) and len(record["weights_sha256"]) == 64

    assert main(["pick", "--budget-ms", "1000", "--results", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"{accuracy['top1']:.2f}" in said and "lacks accuracy" not in said, said


def test_unlabelled_images_record_no_accuracy_and_say_why(shapes_int8_bundle: Path, shapes_dir: Path,
                                                          tmp_path: Path) -> None:
    done = _run(["sh", str(shapes_int8_bundle / "bench.sh"), *QUICK_BENCH, "--images", str(shapes_dir),
                 "--out", str(tmp_path / "r.json")])  # train/ and test/ are no class names
    assert done.returncode == 0, done.stderr
    assert "is not a labelled folder" in done.stderr
    assert read_results(tmp_path / "r.json")["records"][0]["accuracy"] is None


@pytest.mark.parametrize("name", ["T-shirt/top", "Ankle boot", "zero", "class_7", "Ünïcode name"])
def test_the_bundle_matches_class_folders_as_edgecnn_does(name: str) -> None:
    spec = importlib.util.spec_from_file_location("edgecnn_bundle_under_test", TEMPLATES / "edgecnn_bundle.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    assert bundle.comparable_class_name(name) == comparable_class_name(name)
