"""The user's journey with their own data (issue 25 bars, points 2-3): train two zoo models on a generated image
folder that is not Fashion-MNIST, export one INT8 artifact, bench both checkpoints and the artifact side by side,
and `pick` answers with the accuracy those weights have on that data — every record and the report saying which
weights (SHA-256) and which dataset, INT8 calibrated on the weights' own training split, and no output line naming
Fashion-MNIST.

`eval` of the INT8 artifact and of its deploy bundle, each on the weights' own test folder, agree with bench's
record of that artifact to ±1 image (issue 25 point 4).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgecnn.cli import main

# Per architecture: a learning rate and batch that learn the shapes in one short epoch.
TRAINED = {"lenet5_fmnist": (0.02, 8), "resnet18_fmnist": (0.1, 16)}
FASHION_WORDS = ("fashion", "t-shirt", "trouser", "ankle boot", "pullover")


@dataclass
class Journey:
    data: Path
    checkpoints: dict[str, Path]
    artifact: Path
    results: Path
    cache: Path
    outputs: dict[str, str] = field(default_factory=dict)   # command → what it printed (stdout + stderr)


def _run(capsys: pytest.CaptureFixture[str], journey: Journey, name: str, argv: list[str]) -> str:
    assert main(argv) == 0, argv
    captured = capsys.readouterr()
    journey.outputs[name] = captured.out + captured.err
    return captured.out


@pytest.fixture(scope="module")
def journey(shapes_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Journey:
    from edgecnn.train import train

    root = tmp_path_factory.mktemp("journey")
    checkpoints = {}
    for name, (lr, batch) in TRAINED.items():
        checkpoints[name] = root / "runs" / f"{name}.safetensors"
        train(name, data=str(shapes_folder), out=checkpoints[name], epochs=1, batch_size=batch, lr=lr,
              augment="none", threads=1, progress=False)
    return Journey(shapes_folder, checkpoints, root / "art" / "lenet-int8", root / "bench.json", root / "cache")


def test_the_journey(journey: Journey, capsys: pytest.CaptureFixture[str]) -> None:
    lenet, resnet = journey.checkpoints["lenet5_fmnist"], journey.checkpoints["resnet18_fmnist"]
    _run(capsys, journey, "export", ["export", str(lenet), "--precision", "int8", "--calibrator", "minmax",
                                     "--max-drop", "0.5", "--out", str(journey.artifact), "--no-progress"])
    _run(capsys, journey, "bench", [
        "bench", str(lenet), str(resnet), str(journey.artifact), "--runtimes", "onnxruntime",
        "--precisions", "fp32,int8", "--iters", "10", "--rounds", "2", "--warmup-s", "0", "--threads", "1",
        "--calibrator", "minmax", "--calib-samples", "128", "--cache", str(journey.cache), "--out",
        str(journey.results), "--no-progress"])
    answer = _run(capsys, journey, "pick", ["pick", "--budget-ms", "100", "--results", str(journey.results)])
    _run(capsys, journey, "report", ["report", str(journey.results), "--out", str(journey.results.parent / "report")])

    records = json.loads(journey.results.read_text())["records"]
    assert {r["model"] for r in records} == {str(lenet), str(resnet), str(journey.artifact)}
    sha = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (lenet, resnet)}
    sha[str(journey.artifact)] = sha[str(lenet)]
    for r in records:
        assert r["weights_sha256"] == sha[r["model"]], "every record says which weights"
        assert r["dataset"]["path"] == str(journey.data) and r["dataset"]["origin"] == "checkpoint sidecar"
        assert r["accuracy"]["samples"] == 120 and r["accuracy"]["classes"] == 10
    artifact_record = next(r for r in records if r["model"] == str(journey.artifact))
    assert artifact_record["artifact"]["path"] == str(journey.artifact), "an artifact is benched as it is"

    report = (journey.results.parent / "report" / "README.md").read_text()
    weights_table = report.split("## Weights and data", 1)[1].split("## Headline", 1)[0]
    assert all(f"| {sha[str(p)][:16]} | shapes ({journey.data}) (checkpoint sidecar) |" in weights_table
               for p in (lenet, resnet))

    # INT8 of each checkpoint calibrated on its own training split, never on Fashion-MNIST
    for manifest in journey.cache.glob("*-int8-b1/manifest.json"):
        samples = json.loads(manifest.read_text())["calibration"]["calibration_samples"]
        assert samples["source"].startswith(f"shapes ({journey.data}) train split") and samples["samples"] == 128

    # pick answers with the accuracy those weights have on that data
    best = next(line for line in answer.splitlines() if line.startswith("pick: "))
    chosen = next(r for r in records if best.startswith(f"pick: {r['model']} {r['runtime']} {r['precision']}"))
    assert f"{chosen['accuracy']['top1']:.2f}% top-1 on shapes ({journey.data}) test (120 images" in best
    assert chosen["accuracy"]["top1"] > 50, "a trained model, not chance"

    # the artifact's manifest says what --max-drop could resolve on the folder's validation split
    resolution = json.loads((journey.artifact / "manifest.json").read_text())["calibration"]["resolution"]
    assert resolution["validation_images"] == 60 and resolution["max_drop_as_measured_pt"] == pytest.approx(100 / 60, abs=1e-3)
    assert "resolution: 60 validation images" in journey.outputs["export"]

    # eval of the INT8 artifact and of its bundle score the same images as bench did, on the weights' own data
    _run(capsys, journey, "deploy", ["deploy", str(journey.artifact), "--target", "onnxruntime",
                                     "--out", str(journey.artifact.parent / "bundle")])
    bench_correct = artifact_record["accuracy"]["top1"] * 120 / 100
    for form, model in (("eval artifact", journey.artifact), ("eval bundle", journey.artifact.parent / "bundle")):
        out = journey.artifact.parent / form.replace(" ", "-")
        _run(capsys, journey, form, ["eval", str(model), "--threads", "1", "--out", str(out)])
        scored = json.loads((out / "eval.json").read_text())
        assert scored["samples"] == 120 and abs(scored["correct"] - bench_correct) <= 1, (form, scored["correct"])
        assert f"({scored['correct']}/120)" in journey.outputs[form]

    for command, text in journey.outputs.items():
        for line in text.splitlines():
            assert not any(word in line.lower() for word in FASHION_WORDS), (command, line)
