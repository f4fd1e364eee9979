"""Early-exit artifacts: per-stage graphs + trunk, the manifest section, the exit loop vs PyTorch, thresholds,
and every bad input said in one line. One small b_lenet export (ONNX Runtime) serves the module."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import edgecnn
from edgecnn.branchynet import softmax_entropy
from edgecnn.export import runtime
from edgecnn.export.early_exit import EarlyExitStages
from edgecnn.export.early_exit_thresholds import choose, evaluate_setting, pareto, sweep, tune
from edgecnn.export.manifest import read_manifest
from edgecnn.export.pipeline import CheckParity, FoldBatchNorm, Pipeline, PrepareForTarget, WriteTarget, export_model

VAL = 300


def _pipeline() -> Pipeline:
    return Pipeline([PrepareForTarget(), FoldBatchNorm(), WriteTarget(), CheckParity(),
                     EarlyExitStages(val_samples=VAL, cost_repeats=5)])


@pytest.fixture(scope="module")
def net() -> edgecnn.branchynet.MultiExitNet:
    torch.manual_seed(0)
    return edgecnn.create_model("b_lenet_fmnist", trunk_weights="committed").eval()


@pytest.fixture(scope="module")
def artifact(net, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ee") / "b_lenet"
    export_model(net, "onnx", "fp32", out, parity_samples=8, pipeline=_pipeline())
    return out


def _images(n: int, seed: int = 0) -> torch.Tensor:
    from edgecnn.data import load_dataset, preprocess
    ds = load_dataset("fashion_mnist", "test")
    images, _ = ds.get_batch(range(seed, seed + n))
    return preprocess(images, edgecnn.get_config("b_lenet_fmnist"))


def test_manifest_section_is_complete_and_validated(artifact: Path) -> None:
    m = read_manifest(artifact)
    ee = m["early_exit"]
    assert [s["file"] for s in ee["stages"]] == ["stage1/model.onnx", "stage2/model.onnx"]
    assert ee["stages"][0]["outputs"] == {"logits": "logits", "entropy": "entropy", "features": "features"}
    assert ee["stages"][1]["outputs"]["features"] is None
    assert ee["trunk"] == {"file": "model.onnx"} and len(ee["thresholds"]) == 1
    assert ee["exit_entropy"] == "softmax, natural log"
    assert ee["exit_rule"] == "exit at stage k when entropy < thresholds[k]"
    tuning = ee["per_precision"]["fp32"]
    assert tuning["thresholds"] == ee["thresholds"] and tuning["runtime"] == "onnxruntime"
    assert "never the test split" in tuning["tuned_on"] and f"{VAL} images" in tuning["tuned_on"]
    assert math.isclose(sum(tuning["exit_fractions"]), 1.0, abs_tol=1e-6)
    assert tuning["accuracy"] >= tuning["final_exit_accuracy"] - tuning["accuracy_budget_pt"]
    assert all(c > 0 for c in tuning["stage_ms"]) and tuning["exit_agreement_vs_torch"] == [1.0, 1.0]
    assert tuning["trunk_ms"] > 0 and tuning["expected_speedup_vs_trunk"] == \
        pytest.approx(tuning["trunk_ms"] / tuning["expected_ms"], rel=1e-2)
    for stage in ee["stages"]:  # each stage graph is one of the artifact's hashed files
        assert stage["file"] in m["files"]
        import onnx
        graph = onnx.load(str(artifact / stage["file"])).graph
        assert len(graph.input) == 1 and [o.name for o in graph.output] == \
            [n for n in (stage["outputs"]["logits"], stage["outputs"]["entropy"], stage["outputs"]["features"]) if n]


@pytest.mark.parametrize("batch", [1, 7])
def test_session_matches_pytorch_multi_exit_model(artifact: Path, net, batch: int) -> None:
    x = _images(28)
    with torch.no_grad():
        h = softmax_entropy(net.forward_exits(x)[0]).numpy()
    # A threshold in the widest gap near the median entropy: some samples leave, and no sample sits on it.
    s = np.sort(h)
    gaps = [(s[i + 1] - s[i], i) for i in range(len(s) // 4, 3 * len(s) // 4)]
    _, i = max(gaps)
    threshold = float((s[i] + s[i + 1]) / 2)
    expected, expected_exit = net.early_exit(x, [threshold])
    assert 0 < int((expected_exit == 0).sum()) < len(x)
    with runtime.load(artifact, backend="early_exit", thresholds=[threshold]) as session:
        results = [session.classify(x[i:i + batch].numpy()) for i in range(0, len(x), batch)]
    predictions = np.concatenate([r.logits.argmax(1) for r in results])
    exits = np.concatenate([r.exits for r in results])
    np.testing.assert_array_equal(exits, expected_exit.numpy())
    np.testing.assert_array_equal(predictions, expected.numpy())


def test_session_uses_tuned_thresholds_and_reports_them(artifact: Path) -> None:
    m = read_manifest(artifact)
    with runtime.load(artifact, backend="early_exit") as session:
        assert session.thresholds == m["early_exit"]["thresholds"]
        logits = session.run(_images(3).numpy())
        info = session.info()
    assert logits.shape == (3, 10) and info["stages"] == 2 and info["runtime"] == "onnxruntime"


def test_onnxruntime_stages_run_on_one_thread_each(artifact: Path) -> None:
    """Each ONNX Runtime session owns a spinning pool: stage sessions get one thread, whatever the loop is given."""
    with runtime.load(artifact, backend="early_exit", threads=2) as session:
        info = session.info()
        pools = [stage._session.get_session_options().intra_op_num_threads for stage in session._stages]
    assert info["threads"] == 2 and info["stage_threads"] == 1 and pools == [1, 1]


def test_trunk_is_the_plain_network(artifact: Path, net) -> None:
    x = _images(4)
    with runtime.load(artifact, backend="onnxruntime", trunk=True) as trunk:
        got = np.concatenate([trunk.run(x[i:i + 1].numpy()) for i in range(4)])
    np.testing.assert_allclose(got, net(x).detach().numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("thresholds, message", [
    ([0.5, 0.5], "2 exits take 1 entropy threshold"), ([], "2 exits take 1"), ([-1.0], "threshold 0 is -1.0"),
    ([float("nan")], "threshold 0 is nan"),
])
def test_bad_thresholds_are_one_line(artifact: Path, thresholds: list, message: str) -> None:
    with pytest.raises(edgecnn.UserError, match=message):
        runtime.load(artifact, backend="early_exit", thresholds=thresholds)


def test_plain_session_on_early_exit_artifact_and_the_reverse(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(edgecnn.UserError, match="early-exit artifact .*backend='early_exit'.*trunk=True"):
        runtime.load(artifact, backend="onnxruntime")
    plain = tmp_path / "plain"
    export_model(edgecnn.create_model("lenet5_fmnist"), "onnx", "fp32", plain, parity_samples=4)
    with pytest.raises(edgecnn.UserError, match="has no early_exit section .*plain network"):
        runtime.load(plain, backend="early_exit")


def test_missing_stage_file(artifact: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    (broken / "stage2" / "model.onnx").unlink()
    with pytest.raises(edgecnn.UserError, match="stage2/model.onnx is named in the manifest but missing"):
        runtime.load(broken, backend="early_exit")
    manifest = json.loads((artifact / "manifest.json").read_text())
    with pytest.raises(edgecnn.UserError, match="stage 2's graph .* is missing"):
        runtime.open_session(broken, manifest, "early_exit")


def test_swapped_stage_files(artifact: Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    stages = manifest["early_exit"]["stages"]
    for key in ("file", "model_files"):  # the records keep their order, the graphs they name are swapped
        stages[0][key], stages[1][key] = stages[1][key], stages[0][key]
    with pytest.raises(edgecnn.UserError, match="swapped or come from another export"):
        runtime.open_session(artifact, manifest, "early_exit")


def test_bf16_early_exit_is_refused_before_any_work(net, tmp_path: Path) -> None:
    with pytest.raises(edgecnn.UserError, match="bf16"):
        export_model(net, "openvino", "bf16", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def int8_artifact(request, net, tmp_path_factory) -> Path:
    from edgecnn.calibration import CalibrationOptions
    from edgecnn.export.quantize import Quantize

    out = tmp_path_factory.mktemp("ee-int8") / f"b_lenet-{request.param}"
    pipeline = Pipeline([PrepareForTarget(), FoldBatchNorm(), WriteTarget(), Quantize(), CheckParity(),
                         EarlyExitStages(val_samples=VAL, cost_repeats=5)])
    export_model(net, request.param, "int8", out, parity_samples=8, pipeline=pipeline,
                 calibration=CalibrationOptions(calibrator="minmax", samples=64))
    return out


def test_int8_stages_are_quantized_with_the_trunks_calibrator_and_float_entropy(int8_artifact: Path) -> None:
    m = read_manifest(int8_artifact)
    ee, calibration = m["early_exit"], m["calibration"]
    assert list(ee["per_precision"]) == ["int8"], "thresholds are tuned on the INT8 artifact itself"
    first, last = ee["stages"]
    for stage in (first, last):
        assert stage["int8"]["calibrator"] == calibration["calibrator"] == "minmax"
        assert stage["int8"]["calibration_samples"] == 64
    assert first["int8"]["entropy_nodes_kept_float"] and not last["int8"]["entropy_nodes_kept_float"]
    if m["target"] == "onnx":
        import onnx
        graph = onnx.load(str(int8_artifact / first["file"])).graph
        ops = {n.name: n.op_type for n in graph.node}
        assert "QuantizeLinear" in ops.values() and "ConvInteger" not in ops.values()
        kept = set(first["int8"]["entropy_nodes_kept_float"])
        assert kept <= set(ops) and not any(ops[n] in ("QuantizeLinear", "DequantizeLinear") for n in kept)
        producers = {o: n.op_type for n in graph.node for o in n.output}
        assert all(producers.get(i) != "DequantizeLinear" for n in graph.node if n.name in kept for i in n.input)
    else:
        assert "FakeQuantize" in (int8_artifact / first["file"]).read_text()


def test_placement_fast_places_every_stage_as_the_trunk(net, tmp_path: Path, monkeypatch) -> None:
    """--placement fast times each stage graph's layers too: the early-exit path is what runs on the device."""
    import onnx

    from edgecnn.calibration import CalibrationOptions
    from edgecnn.export import placement
    from edgecnn.export.quantize import Quantize

    # every INT8 placement measured slower than FP32 here: every layer of the trunk and of each stage stays float
    monkeypatch.setattr(placement, "median_ratio", lambda ours, theirs: 1.5)
    out = tmp_path / "fast"
    export_model(net, "onnx", "int8", out, parity_samples=8, pipeline=Pipeline(
        [PrepareForTarget(), FoldBatchNorm(), WriteTarget(), Quantize(), CheckParity(),
         EarlyExitStages(val_samples=VAL, cost_repeats=5)]),
        calibration=CalibrationOptions(calibrator="minmax", samples=32, placement="fast", profile_threads=1))
    m = read_manifest(out)
    assert m["calibration"]["placement"]["chosen"] == "float"
    for stage in m["early_exit"]["stages"]:
        assert stage["int8"]["placement"]["chosen"] == "float"
        assert stage["int8"]["placement"]["layers"], "each stage's layers were timed"
        ops = {n.op_type for n in onnx.load(str(out / stage["file"])).graph.node}
        assert not ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv"}, ops


def test_each_stage_is_an_export_context_run_through_a_pipeline_of_the_real_passes(net, tmp_path: Path,
                                                                                    monkeypatch) -> None:
    from edgecnn.calibration import CalibrationOptions
    from edgecnn.export.passes import ExportContext
    from edgecnn.export.quantize import Calibrated, Quantize

    stages: list[tuple[list[type], ExportContext]] = []
    run_passes = Pipeline.run_passes

    def recorded(pipeline: Pipeline, ctx: ExportContext) -> None:
        run_passes(pipeline, ctx)
        stages.append(([type(p) for p in pipeline.passes], ctx))

    monkeypatch.setattr(Pipeline, "run_passes", recorded)
    out = tmp_path / "int8"
    export_model(net, "onnx", "int8", out, parity_samples=8, pipeline=Pipeline(
        [PrepareForTarget(), FoldBatchNorm(), WriteTarget(), Quantize(), CheckParity(),
         EarlyExitStages(val_samples=VAL, cost_repeats=5)]),
        calibration=CalibrationOptions(calibrator="minmax", samples=32, max_drop=5.0))
    m = read_manifest(out)
    assert [passes for passes, _ in stages] == [[WriteTarget, Quantize]] * net.num_exits
    for (_, stage), section in zip(stages, m["early_exit"]["stages"]):
        assert [p["name"] for p in stage.passes] == ["write_target", "quantize_int8"]
        calibrated = stage.records["quantize_int8"]
        assert isinstance(calibrated, Calibrated) and stage.calibration.max_drop is None, "no --max-drop in a stage"
        assert section["int8"]["calibrator"] == calibrated.record["calibrator"] == m["calibration"]["calibrator"]
        assert section["int8"]["calibration_samples"] == len(calibrated.data.calibration) == 32
        assert section["model_files"]["onnx"].endswith(stage.output.model_files["onnx"])


def test_int8_exit_loop_is_the_rule_on_its_own_exits_at_any_batch(int8_artifact: Path, net) -> None:
    images = _images(200).numpy()
    with runtime.load(int8_artifact, backend="early_exit") as session:
        one = [session.classify(images[i:i + 1]) for i in range(len(images))]
        whole = session.classify(images)
        entropies, logits = session.exit_outputs(images)
        thresholds = session.thresholds
    exits = np.concatenate([r.exits for r in one])
    assert (exits == whole.exits).all()
    assert (np.concatenate([r.logits for r in one]).argmax(1) == whole.logits.argmax(1)).all()
    rule = np.where(entropies[0] < thresholds[0], 0, 1)
    assert (rule == whole.exits).all() and (logits[rule, np.arange(len(images))].argmax(1) == whole.logits.argmax(1)).all()
    with torch.no_grad():
        reference, _ = net.early_exit(torch.from_numpy(images), thresholds)
    assert (reference.numpy() == whole.logits.argmax(1)).mean() >= 0.95, "INT8 stays close to the FP32 network"


# ---------------------------------------------------------------- the threshold search, on made-up exits

def _exits(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit 1 is right when confident (low entropy), wrong otherwise; the final exit is always right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    entropy = rng.uniform(0, 2, n)
    first = np.where(entropy < 1.0, labels, (labels + 1) % 10)
    return entropy[None], np.stack([first, labels]), labels


def test_expected_latency_and_fractions() -> None:
    entropies, predictions, labels = _exits()
    s = evaluate_setting([1.0], entropies, predictions, labels, [1.0, 3.0])
    leave = float((entropies[0] < 1.0).mean())
    assert s.exit_fractions == pytest.approx((leave, 1 - leave))
    assert s.expected_ms == pytest.approx(1.0 + (1 - leave) * 3.0) and s.accuracy == 100.0


def test_tune_picks_fastest_within_budget() -> None:
    entropies, predictions, labels = _exits()
    chosen, front, final = tune(entropies, predictions, labels, [1.0, 3.0], budget_pt=0.0)
    assert final == 100.0 and chosen.accuracy == 100.0
    assert 0.9 <= chosen.thresholds[0] <= 1.0, "the cut is where exit 1 starts being wrong"
    loose, _, _ = tune(entropies, predictions, labels, [1.0, 3.0], budget_pt=10.0)
    assert loose.expected_ms < chosen.expected_ms and loose.accuracy >= 90.0
    assert [s.expected_ms for s in front] == sorted(s.expected_ms for s in front)
    assert [s.accuracy for s in front] == sorted(s.accuracy for s in front)
    with pytest.raises(edgecnn.UserError, match="budget"):
        tune(entropies, predictions, labels, [1.0, 3.0], budget_pt=float("nan"))
    assert choose(sweep(entropies, predictions, labels, [1.0, 3.0]), final, 0.0) == chosen
    assert pareto([chosen]) == [chosen]


def test_inspect_shows_stages_thresholds_and_exit_fractions(artifact: Path, capsys: pytest.CaptureFixture) -> None:
    from edgecnn.cli import main
    assert main(["inspect", str(artifact)]) == 0
    out = capsys.readouterr().out
    tuning = read_manifest(artifact)["early_exit"]["per_precision"]["fp32"]
    assert "stage1/model.onnx" in out and "stage2/model.onnx" in out and "exit (val)" in out
    assert f"{100 * tuning['exit_fractions'][0]:.1f}%" in out and f"{tuning['thresholds'][0]:.4g}" in out
    assert "early exit on the validation split" in out


@pytest.mark.slow
@pytest.mark.parametrize("target, precision", [("onnx", "fp16"), ("openvino", "fp32"), ("openvino", "fp16")])
def test_each_target_and_precision_tunes_its_own_thresholds(net, tmp_path: Path, target: str, precision: str) -> None:
    out = tmp_path / f"{target}-{precision}"
    export_model(net, target, precision, out, parity_samples=8, pipeline=_pipeline())
    m = read_manifest(out)
    tuning = m["early_exit"]["per_precision"]
    assert list(tuning) == [precision], "thresholds are tuned on this artifact, for its precision only"
    assert tuning[precision]["runtime"] == m["default_backend"]
    assert tuning[precision]["thresholds"] == m["early_exit"]["thresholds"]
    x = _images(9).numpy()
    with runtime.load(out, backend="early_exit") as session:
        one = [session.classify(x[i:i + 1]) for i in range(9)]
        many = session.classify(x)
    np.testing.assert_array_equal(np.concatenate([r.exits for r in one]), many.exits)
    np.testing.assert_array_equal(np.concatenate([r.logits.argmax(1) for r in one]), many.logits.argmax(1))


@pytest.mark.parametrize("value, message", [("-1", "must be 0 or more"), ("nan", "finite number")])
def test_exit_budget_flag_is_validated(value: str, message: str, capsys: pytest.CaptureFixture) -> None:
    from edgecnn.cli import main
    with pytest.raises(SystemExit) as e:
        main(["export", "b_lenet_fmnist", "--exit-budget", value])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_budget_keeps_a_margin_of_one_standard_error() -> None:
    """Exit 1 is right on 90 % of its confident samples: spending the whole budget on validation is refused."""
    rng = np.random.default_rng(1)
    n = 4000
    labels = rng.integers(0, 10, n)
    entropy = rng.uniform(0, 2, n)
    first = np.where(rng.uniform(size=n) < 0.97, labels, (labels + 1) % 10)
    entropies, predictions = entropy[None], np.stack([first, labels])
    settings = sweep(entropies, predictions, labels, [1.0, 3.0])
    for s in settings:  # the standard error of a paired difference, from its discordant samples
        lost = int(((predictions[0] != labels) & (entropy < s.thresholds[0])).sum())
        assert s.loss_se_pt == pytest.approx(100 * np.sqrt(lost - lost ** 2 / n) / n)
    plain = choose(settings, 100.0, 1.0, margin_se=0.0)
    guarded = choose(settings, 100.0, 1.0)
    assert 100.0 - plain.accuracy <= 1.0 and 100.0 - guarded.accuracy + guarded.loss_se_pt <= 1.0 + 1e-9
    assert guarded.expected_ms > plain.expected_ms and guarded.accuracy > plain.accuracy
