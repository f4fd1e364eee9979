"""The single-graph form of early exit: stages, entropy and exit decision in one graph (later stages inside `If`),
one session call per sample, at every precision and on ONNX Runtime and OpenVINO; the form export keeps; the exit
heads' adaptive pooling exported as the fixed pooling it equals. Small b_lenet exports serve the module."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import edgecnn
from edgecnn.branchynet import softmax_entropy
from edgecnn.export import runtime
from edgecnn.export.early_exit import EarlyExitStages, _equivalent_avg_pool, stage_graphs
from edgecnn.export.manifest import read_manifest
from edgecnn.export.pipeline import CheckParity, FoldBatchNorm, Pipeline, PrepareForTarget, WriteTarget, export_model

VAL = 300


def _pipeline(*middle: object) -> Pipeline:
    return Pipeline([PrepareForTarget(), FoldBatchNorm(), WriteTarget(), *middle, CheckParity(),
                     EarlyExitStages(val_samples=VAL, cost_repeats=5)])


@pytest.fixture(scope="module")
def net() -> edgecnn.branchynet.MultiExitNet:
    torch.manual_seed(0)
    return edgecnn.create_model("b_lenet_fmnist", trunk_weights="committed").eval()


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def graph_artifact(request, net, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ee-graph") / f"b_lenet-{request.param}"
    export_model(net, request.param, "fp32", out, parity_samples=8, pipeline=_pipeline(), early_exit_form="graph")
    return out


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def int8_graph_artifact(request, net, tmp_path_factory) -> Path:
    from edgecnn.calibration import CalibrationOptions
    from edgecnn.export.quantize import Quantize

    out = tmp_path_factory.mktemp("ee-graph-int8") / f"b_lenet-{request.param}"
    export_model(net, request.param, "int8", out, parity_samples=8, pipeline=_pipeline(Quantize()),
                 calibration=CalibrationOptions(calibrator="minmax", samples=64), early_exit_form="graph")
    return out


def _images(n: int) -> torch.Tensor:
    from edgecnn.data import load_dataset, preprocess
    images, _ = load_dataset("fashion_mnist", "test").get_batch(range(n))
    return preprocess(images, edgecnn.get_config("b_lenet_fmnist"))


def _threshold_in_a_gap(net, x: torch.Tensor) -> float:
    """A threshold in the widest gap near the median first-exit entropy: some samples leave, none sits on it."""
    with torch.no_grad():
        s = np.sort(softmax_entropy(net.forward_exits(x)[0]).numpy())
    _, i = max((s[i + 1] - s[i], i) for i in range(len(s) // 4, 3 * len(s) // 4))
    return float((s[i] + s[i + 1]) / 2)


def _count_calls(session, counts: Counter) -> None:
    """Count the calls of the single graph and of the stage graphs (instance attributes shadow the methods)."""
    graph = session._graph
    graph._run_feeds = lambda feeds, run=graph._run_feeds: (counts.update(["graph"]), run(feeds))[1]
    for stage in session._stages:
        stage._run_all = lambda x, run=stage._run_all: (counts.update(["stage"]), run(x))[1]


def test_the_single_graph_is_named_hashed_and_chosen_in_the_manifest(graph_artifact: Path) -> None:
    m = read_manifest(graph_artifact)
    ee = m["early_exit"]
    graph = ee["graph"]
    assert ee["form"] == "graph" and graph["input"]["shape"] == [1, 1, 28, 28]
    assert graph["file"] in m["files"] and set(graph["model_files"].values()) == {graph["file"]}
    if graph["file"].endswith(".xml"):
        assert "graph/model.bin" in m["files"]
    tuning = ee["per_precision"]["fp32"]
    assert tuning["form"] == "graph" and tuning["form_chosen_by"] == "asked (--early-exit graph)"
    assert set(tuning["forms"]) == {"graph", "stages"} and tuning["thresholds"] == ee["thresholds"]
    assert all(len(f["stage_ms"]) == 2 and min(f["stage_ms"]) >= 0 for f in tuning["forms"].values())
    assert tuning["graph_vs_stages"]["same_exit"] == 1.0 and tuning["graph_vs_stages"]["logits_max_abs_diff"] < 1e-4


def test_the_graph_holds_the_later_stage_inside_an_if(graph_artifact: Path) -> None:
    if read_manifest(graph_artifact)["target"] == "onnx":
        import onnx
        graph = onnx.load(str(graph_artifact / "graph" / "model.onnx")).graph
        inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
        branch = next(n for n in graph.node if n.op_type == "If")
        then_body, else_body = ({a.name: a.g for a in branch.attribute}[b] for b in ("then_branch", "else_branch"))
        ops = lambda g: Counter(n.op_type for n in g.node)  # noqa: E731
        stage2 = ops(onnx.load(str(graph_artifact / "stage2" / "model.onnx")).graph)
    else:
        import openvino as ov
        graph = ov.Core().read_model(str(graph_artifact / "graph" / "model.xml"))
        inputs, outputs = [i.get_any_name() for i in graph.inputs], [o.get_any_name() for o in graph.outputs]
        branch = next(op for op in graph.get_ordered_ops() if op.get_type_name() == "If")
        then_body, else_body = branch.get_function(0), branch.get_function(1)
        ops = lambda g: Counter(op.get_type_name() for op in g.get_ordered_ops())  # noqa: E731
        stage2 = ops(ov.Core().read_model(str(graph_artifact / "stage2" / "model.xml")))
    assert inputs == ["input", "thresholds"] and outputs == ["logits", "exit"]
    compute = {"Conv", "Gemm", "Convolution", "MatMul"}
    assert {op: n for op, n in ops(else_body).items() if op in compute} == \
        {op: n for op, n in stage2.items() if op in compute} != {}
    assert not compute & set(ops(then_body)), "the exit branch computes nothing"


@pytest.mark.parametrize("batch", [1, 7])
def test_one_call_per_sample_at_batch_1_and_the_stages_for_a_larger_batch(graph_artifact: Path, net,
                                                                          batch: int) -> None:
    x = _images(28)
    threshold = _threshold_in_a_gap(net, x)
    expected, expected_exit = net.early_exit(x, [threshold])
    assert 0 < int((expected_exit == 0).sum()) < len(x)
    counts: Counter = Counter()
    with runtime.load(graph_artifact, backend="early_exit", thresholds=[threshold]) as session:
        assert session.form == "graph" and session.info()["form"] == "graph"
        _count_calls(session, counts)
        results = [session.classify(x[i:i + batch].numpy()) for i in range(0, len(x), batch)]
    np.testing.assert_array_equal(np.concatenate([r.exits for r in results]), expected_exit.numpy())
    np.testing.assert_array_equal(np.concatenate([r.logits.argmax(1) for r in results]), expected.numpy())
    if batch == 1:
        assert counts == Counter(graph=len(x)), "one call of the single graph per sample, no stage call"
    else:
        assert counts["graph"] == 0 and counts["stage"] >= len(results)


def test_the_staged_form_of_a_graph_artifact_and_the_reverse(graph_artifact: Path, net, tmp_path: Path) -> None:
    with runtime.load(graph_artifact, backend="early_exit", form="stages") as session:
        assert session.form == "stages" and session._graph is None
        tuned = read_manifest(graph_artifact)["early_exit"]["per_precision"]["fp32"]["forms"]["stages"]
        assert session.thresholds == tuned["thresholds"], "each form runs at the thresholds tuned on its costs"
    stages_only = tmp_path / "stages"
    export_model(net, "onnx", "fp32", stages_only, parity_samples=4, pipeline=_pipeline(), early_exit_form="stages")
    m = read_manifest(stages_only)
    assert m["early_exit"]["form"] == "stages" and "graph" not in m["early_exit"]
    assert not any(f.startswith("graph/") for f in m["files"])
    with pytest.raises(edgecnn.UserError, match="no single graph .*form='stages'.*--early-exit graph"):
        runtime.load(stages_only, backend="early_exit", form="graph")
    with pytest.raises(edgecnn.UserError, match="unknown early-exit form 'both'"):
        runtime.load(stages_only, backend="early_exit", form="both")


def test_auto_keeps_the_form_measured_faster(net, tmp_path: Path) -> None:
    export_model(net, "onnx", "fp32", tmp_path / "auto", parity_samples=4, pipeline=_pipeline())
    ee = read_manifest(tmp_path / "auto")["early_exit"]
    tuning = ee["per_precision"]["fp32"]
    forms = tuning["forms"]
    assert "graph" in ee and set(forms) == {"graph", "stages"}
    assert ee["form"] == tuning["form"] == min(forms, key=lambda f: forms[f]["measured_ms"])
    assert ee["thresholds"] == forms[ee["form"]]["thresholds"] and "measured here" in tuning["form_chosen_by"]


def test_half_io_graph_compares_its_float16_entropy_in_float32(net, tmp_path: Path) -> None:
    out = tmp_path / "half"
    export_model(net, "onnx", "fp16", out, parity_samples=4, pipeline=_pipeline(), keep_io_types=False,
                 early_exit_form="graph")
    x = _images(20).numpy().astype(np.float16)
    with runtime.load(out, backend="early_exit", form="graph") as graph, \
            runtime.load(out, backend="early_exit", form="stages", thresholds=graph.thresholds) as stages:
        one = [graph.classify(x[i:i + 1]) for i in range(len(x))]
        staged = [stages.classify(x[i:i + 1]) for i in range(len(x))]
    np.testing.assert_array_equal(np.concatenate([r.exits for r in one]), np.concatenate([r.exits for r in staged]))


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "lenet5_fmnist", "early_exit_form": "graph"}, "applies to multi-exit .*leave the option out"),
    ({"target": "tensorrt", "early_exit_form": "graph"}, "targets onnx, openvino, not tensorrt.*--early-exit stages"),
    ({"early_exit_form": "both"}, "unknown early-exit form 'both'"),
])
def test_bad_early_exit_forms_are_refused_before_any_work(net, tmp_path: Path, kwargs: dict, message: str) -> None:
    model = edgecnn.create_model(kwargs.pop("model")) if "model" in kwargs else net
    with pytest.raises(edgecnn.UserError, match=message):
        export_model(model, kwargs.pop("target", "onnx"), "fp32", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_early_exit_option(capsys: pytest.CaptureFixture) -> None:
    from edgecnn.cli import main
    with pytest.raises(SystemExit) as e:
        main(["export", "b_lenet_fmnist", "--early-exit", "bogus"])
    assert e.value.code == 2 and "--early-exit" in capsys.readouterr().err


def test_inspect_names_the_single_graph_and_the_default_form(graph_artifact: Path, capsys) -> None:
    from edgecnn.cli import main
    assert main(["inspect", str(graph_artifact)]) == 0
    graph = read_manifest(graph_artifact)["early_exit"]["graph"]["file"]
    assert f"single graph: {graph} (batch 1); default form: graph" in capsys.readouterr().out


def test_a_foreign_or_unlisted_single_graph_is_one_line(graph_artifact: Path) -> None:
    manifest = json.loads((graph_artifact / "manifest.json").read_text())
    graph, stage1 = manifest["early_exit"]["graph"], manifest["early_exit"]["stages"][0]
    foreign = json.loads(json.dumps(manifest))
    foreign["early_exit"]["graph"]["model_files"] = stage1["model_files"]  # a stage graph in the graph's place
    with pytest.raises(edgecnn.UserError, match="single graph .*(does not run as|returns outputs).*export again"):
        runtime.open_session(graph_artifact, foreign, "early_exit", form="graph")
    unlisted = json.loads(json.dumps(manifest))
    del unlisted["files"][graph["file"]]
    with pytest.raises(edgecnn.UserError, match="the single graph .* is not among the artifact's files"):
        runtime.open_session(graph_artifact, unlisted, "early_exit", form="graph")


def test_graph_stage_costs_come_from_one_call_per_exit(graph_artifact: Path) -> None:
    """The graph form's stage costs are differences of whole-graph calls sent out at each exit in turn."""
    counts: Counter = Counter()
    with runtime.load(graph_artifact, backend="early_exit", form="graph") as session:
        _count_calls(session, counts)
        kept = session.thresholds
        costs = session.stage_costs(_images(1).numpy(), repeats=3)
        assert session.thresholds == kept
    assert len(costs) == 2 and min(costs) >= 0 and counts == Counter(graph=2 * (3 + 10))


def test_int8_graph_is_composed_of_the_quantized_stages(int8_graph_artifact: Path) -> None:
    """quantize_static leaves If bodies float, so the graph is built from the INT8 stages as the quantizers wrote
    them: the same quantize nodes, the exit entropy still float."""
    m = read_manifest(int8_graph_artifact)
    ee = m["early_exit"]
    stages = [int8_graph_artifact / s["file"] for s in ee["stages"]]
    graph = int8_graph_artifact / ee["graph"]["file"]
    if m["target"] == "onnx":
        import onnx
        count = lambda g: Counter(n.op_type for n in _onnx_nodes(g))  # noqa: E731
        quantize_ops = ("QuantizeLinear", "DequantizeLinear")
        main = onnx.load(str(graph)).graph
        kept = {f"stage1/{n}" for n in ee["stages"][0]["int8"]["entropy_nodes_kept_float"]}
        assert kept and kept <= {n.name for n in main.node}
        graphs = [onnx.load(str(p)).graph for p in (graph, *stages)]
    else:
        import openvino as ov
        count = lambda g: Counter(op.get_type_name() for op in _openvino_ops(g))  # noqa: E731
        quantize_ops = ("FakeQuantize",)
        graphs = [ov.Core().read_model(str(p)) for p in (graph, *stages)]
    in_graph, in_stages = count(graphs[0]), sum((count(g) for g in graphs[1:]), Counter())
    assert all(in_graph[op] == in_stages[op] > 0 for op in quantize_ops)
    assert ee["per_precision"]["int8"]["graph_vs_stages"]["same_exit"] == 1.0


def _onnx_nodes(graph) -> list:
    import onnx
    nodes = list(graph.node)
    for n in graph.node:
        nodes += [x for a in n.attribute if a.type == onnx.AttributeProto.GRAPH for x in _onnx_nodes(a.g)]
    return nodes


def _openvino_ops(model) -> list:
    ops = list(model.get_ordered_ops())
    for op in model.get_ordered_ops():
        if op.get_type_name() == "If":
            ops += _openvino_ops(op.get_function(0)) + _openvino_ops(op.get_function(1))
    return ops


# ---------------------------------------------------------------- the exit heads' pooling

def test_adaptive_pooling_becomes_the_fixed_pooling_it_equals() -> None:
    replaced = 0
    for n in range(1, 16):
        for m in range(1, n + 1):
            pool = _equivalent_avg_pool(m, (n, n))
            if pool is not None:
                replaced += 1
                x = torch.randn(2, 3, n, n)
                torch.testing.assert_close(pool(x), nn.AdaptiveAvgPool2d(m)(x), rtol=1e-5, atol=1e-6)
    assert replaced > 15 and isinstance(_equivalent_avg_pool(7, (7, 7)), nn.Identity)
    assert _equivalent_avg_pool(3, (5, 5)) is None, "windows of 2, 3 and 2 rows: no fixed pooling equals it"
    assert _equivalent_avg_pool(2, (7, 7)).kernel_size == (4, 4)


def test_exit_heads_are_exported_without_adaptive_pooling_and_compute_the_same() -> None:
    torch.manual_seed(0)
    net = edgecnn.create_model("b_resnet_fmnist").eval()
    graphs = stage_graphs(net, tuple(net.config.input_size))
    x = torch.randn(3, *net.config.input_size)
    with torch.no_grad():
        for stage, head, graph in zip(net.stages, net.exits, graphs):
            assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in head.modules())
            assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in graph.modules())
            logits, _, features = graph(x)
            torch.testing.assert_close(logits, head(stage(x)))
            x = features


def test_the_deploy_bundle_runs_the_single_graph_at_batch_1_and_the_stages_beyond(graph_artifact: Path, net,
                                                                                  tmp_path: Path) -> None:
    """A bundle of a graph-form artifact runs the single graph on the device, one call per image (its exits and
    classes equal the rule's), and the stage loop for a larger batch, without edgecnn."""
    import importlib.util
    import subprocess
    import sys

    from edgecnn.export.deploy import build_bundle

    device = "openvino" if graph_artifact.name.endswith("openvino") else "onnxruntime"
    bundle = build_bundle(str(graph_artifact), device, None, tmp_path / "bundle").path
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["early_exit"]["form"] == "graph" and manifest["early_exit"]["graph"]["file"] in manifest["files"]
    spec = importlib.util.spec_from_file_location("edgecnn_bundle_graph_test", bundle / "edgecnn_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.manifest_problem(manifest) is None
    model = module.Model(manifest, manifest["default_backend"], threads=1, directory=bundle)
    assert model.form == "graph"
    calls: Counter = Counter()
    graph_run = model.graph.run_all
    model.graph.run_all = lambda x, extra=None: (calls.update(["graph"]), graph_run(x, extra))[1]
    x = _images(24).numpy()
    thresholds = manifest["early_exit"]["thresholds"]
    expected, expected_exit = net.early_exit(torch.from_numpy(x), thresholds)
    one_by_one = [model.classify(x[i:i + 1]) for i in range(len(x))]
    assert calls["graph"] == len(x), "one call of the single graph per image"
    np.testing.assert_array_equal(np.concatenate([e for _, e in one_by_one]), expected_exit.numpy())
    np.testing.assert_array_equal(np.concatenate([z for z, _ in one_by_one]).argmax(1), expected.numpy())
    logits, exits = model.classify(x)   # a batch: the stage loop, the same answers
    assert calls["graph"] == len(x)
    np.testing.assert_array_equal(exits, expected_exit.numpy())
    check = subprocess.run([sys.executable, str(bundle / "run.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
