"""`edgecnn eval MODEL`: any model form scored on labelled data (the weights' own by default), on a generated image
folder that is not Fashion-MNIST: top-1, per class, the confusion matrix as text, JSON and PNG, the precision the
runtime executed, and the same number bench measures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecnn.cli import main

NAME = "lenet5_fmnist"
QUIET = ["--threads", "1"]


@pytest.fixture(scope="module")
def int8_artifact(shapes_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgecnn.calibration import CalibrationOptions
    from edgecnn.export import export_registered

    return export_registered(NAME, "onnx", "int8", tmp_path_factory.mktemp("eval") / "int8", checkpoint=shapes_checkpoint,
                             calibration=CalibrationOptions(calibrator="minmax", samples=64), parity_samples=8).path


def _bench_correct(model: Path, tmp_path: Path) -> tuple[float, int]:
    """(images bench counts as correct, images scored) for an artifact timed as it is."""
    out = tmp_path / "bench.json"
    assert main(["bench", str(model), "--out", str(out), "--iters", "3", "--rounds", "1", "--warmup-s", "0",
                 "--no-progress", *QUIET]) == 0
    record, = json.loads(out.read_text())["records"]
    accuracy = record["accuracy"]
    return accuracy["top1"] * accuracy["samples"] / 100, accuracy["samples"]


@pytest.mark.parametrize("argv", [[NAME, "--checkpoint", "CK"], ["CK"]], ids=["zoo-name", "checkpoint-file"])
def test_checkpoint_is_scored_on_its_own_folder(argv: list[str], shapes_checkpoint: Path, shapes_dir: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", *[str(shapes_checkpoint) if a == "CK" else a for a in argv], *QUIET]) == 0
    out = capsys.readouterr().out
    assert "on 40 shapes images" in out and str(shapes_dir.resolve()) in out and "fashion" not in out.lower()
    recorded = json.loads(shapes_checkpoint.with_suffix(".json").read_text())["test_accuracy"]
    assert f"top-1 test accuracy {recorded:.2f}%" in out, "the test split training scored, scored again"


@pytest.mark.parametrize("form", ["artifact", "bundle"])
def test_int8_artifact_and_bundle_on_a_labelled_folder(form: str, int8_artifact: Path, shapes_int8_bundle: Path,
                                                       shapes_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    model = int8_artifact if form == "artifact" else shapes_int8_bundle
    assert main(["eval", str(model), "--data", str(shapes_dir), "--out", str(tmp_path / "eval"), *QUIET]) == 0
    out = capsys.readouterr().out
    assert "executed precision int8" in out and "per-class accuracy:" in out and "confusion matrix" in out
    assert (form == "bundle") == ("deploy bundle" in out)
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    confusion = result["confusion"]
    assert result["samples"] == 40 == sum(map(sum, confusion)) == sum(c["images"] for c in result["per_class"].values())
    assert sum(confusion[k][k] for k in range(10)) == result["correct"]
    assert f"top-1 test accuracy {result['top1']:.2f}% ({result['correct']}/40)" in out
    assert (tmp_path / "eval" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "eval" / "eval.txt").read_text() == out.split("wrote ")[0]

    bench_correct, samples = _bench_correct(model, tmp_path)
    assert samples == 40 and abs(bench_correct - result["correct"]) <= 1, "eval and bench score the same images alike"


def test_out_replaces_only_its_own_earlier_output(shapes_checkpoint: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep")
    assert main(["eval", str(shapes_checkpoint), "--out", str(users), "--force", *QUIET]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and (users / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]

    ours = tmp_path / "ours"
    assert main(["eval", str(shapes_checkpoint), "--out", str(ours), *QUIET]) == 0
    assert main(["eval", str(shapes_checkpoint), "--out", str(ours), *QUIET]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["eval", str(shapes_checkpoint), "--out", str(ours), "--force", *QUIET]) == 0


def test_data_of_other_classes_is_said_and_another_class_count_refused(shapes_dir: Path, image_folder: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", NAME, "--data", str(shapes_dir), *QUIET]) == 0  # the committed Fashion-MNIST weights
    out = capsys.readouterr().out
    assert "instead of the weights' own fashion_mnist" in out and "are not the model's" in out and "by index" in out
    assert main(["eval", NAME, "--data", str(image_folder), *QUIET]) == 2  # 3 classes
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has 3 classes" in err


def test_onnx_file_is_scored_once_its_preprocessing_and_data_are_said(shapes_int8_bundle: Path, shapes_dir: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    import shutil

    graph = shutil.copy(shapes_int8_bundle / "model.onnx", tmp_path / "mine.onnx")  # an ONNX file, nothing beside it
    assert main(["eval", str(graph), *QUIET]) == 2
    assert "pass --data" in capsys.readouterr().err
    manifest = json.loads((shapes_int8_bundle / "manifest.json").read_text())
    said = ["--mean", "0.286", "--std", "0.353", "--classes", ",".join(manifest["class_names"])]
    assert main(["eval", str(graph), "--data", str(shapes_dir), *said, *QUIET]) == 0
    out = capsys.readouterr().out
    assert "on 40 shapes images" in out and "executed precision int8" in out
