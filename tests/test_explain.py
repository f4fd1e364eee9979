"""`edgecnn explain` and the measured float placements (`--placement fast`, `--fallback cost`), kept small:
lenet5_fmnist artifacts exported once for the module, a few profiled runs, one or two re-quantizations. Structure
is asserted (names mapped, rows present, coverage computed, records complete, bad input one line), never timings."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgecnn.calibration import CalibrationOptions
from edgecnn.cli import main
from edgecnn.export import export_registered
from edgecnn.export.placement import Trial, cheapest_fallback, cheapest_subset, place_for_speed
from edgecnn.export.profile import (LayerMap, NodeTime, Profile, computes_in_float, counter_truncation_us, graph_layers,
                                    runs_in_integers)

MODEL = "lenet5_fmnist"
LAYERS = ["features.0", "features.3", "classifier.0", "classifier.2", "classifier.4"]
pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                                reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
QUICK = {"rounds": 1, "iterations": 5}


def _int8(out: Path, target: str = "onnx", **options) -> Path:
    calibration = CalibrationOptions(**{"samples": 32, "calibrator": "minmax", **options})
    return export_registered(MODEL, target, "int8", out, parity_samples=8, calibration=calibration).path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain-artifacts")
    return {"onnx-fp32": export_registered(MODEL, "onnx", "fp32", root / "onnx-fp32", parity_samples=8).path,
            "onnx-int8": _int8(root / "onnx-int8"),
            "openvino-int8": _int8(root / "openvino-int8", "openvino")}


def test_every_node_of_both_graphs_and_of_the_runtime_is_named_by_its_module(artifacts: dict[str, Path]) -> None:
    fp32 = artifacts["onnx-fp32"] / "model.onnx"
    layers = graph_layers(fp32)
    assert layers.layers == LAYERS                       # the parameter names' modules, in graph order
    assert layers.resolve("/features.1/Relu") == "features.0"          # an epilogue: the layer it reads
    assert layers.nodes["features.0"] == ["/features.0/Conv", "/features.1/Relu", "/features.2/MaxPool"]
    assert layers.resolve("/features.1/Relu_output_0_nchwc") == "features.0"  # ONNX Runtime's NCHWc rename
    assert layers.resolve("fused /classifier.0/Gemm") == "classifier.0"      # its Gemm fusion
    assert layers.resolve("Transpose_token_3") is None                      # runtime-inserted: unmapped
    quantized = graph_layers(fp32, artifacts["onnx-int8"] / "model.onnx")
    graph = onnx.load(str(artifacts["onnx-int8"] / "model.onnx")).graph
    inserted = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not all(i in {t.name for t in graph.initializer} for i in n.input)]
    assert inserted and all(quantized.resolve(n.name) in LAYERS for n in inserted)
    first_q = next(n for n in inserted if n.input[0] == "input")
    assert quantized.resolve(first_q.name) == "features.0"            # quantizing the input: the first conv's cost
    assert quantized.resolve("/features.3/Conv_token_5") == "features.3"   # the QLinearConv ONNX Runtime made


def test_explain_maps_every_layer_computes_coverage_and_writes_the_report(artifacts: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    from edgecnn.benchmarks.explain import explain

    out = tmp_path / "explain"
    # the ONNX INT8 artifact takes the FP32 one given beside it; the OpenVINO one gets its FP32 exported here
    result = explain([artifacts["onnx-int8"], artifacts["onnx-fp32"], artifacts["openvino-int8"]], threads=1,
                     out=out, candidates=1, **QUICK)
    (model,) = result["models"]
    assert set(model["coverage"]) == {"torch fp32", "onnxruntime fp32", "onnxruntime int8", "openvino fp32",
                                      "openvino int8"}
    assert model["labels"][0] == "torch fp32"              # the eager reference leads, by PyTorch's profiler
    eager = {tuple(row["layers"]): row["nodes"]["torch fp32"] for row in model["rows"] if "torch fp32" in row["nodes"]}
    assert {layer for key in eager for layer in key} == set(LAYERS)   # every module timed belongs to a layer
    (first,) = eager[("features.0",)]
    assert first["fused"] == ["features.1", "features.2"] and first["kernel"].startswith("aten::")  # ReLU, pool
    assert first["us"] > 0
    for coverage in model["coverage"].values():
        assert coverage["coverage"] == pytest.approx(coverage["per_layer_sum_ms"] / coverage["latency_ms"], rel=0.01)
    assert model["missing_convolutions"] == []             # features.0 and features.3 both have their rows
    named = [layer for row in model["rows"] for layer in row["layers"]]
    assert set(LAYERS) <= set(named)
    for label, coverage in model["coverage"].items():   # nothing dropped: what no rule maps has its own row
        assert sum(row["us"].get(label, 0.0) for row in model["rows"]) == pytest.approx(
            1000 * coverage["per_layer_sum_ms"], abs=0.5)
        # the counters' whole µs, each node given back its runtime's expected truncation once
        nodes = [n["us"] for row in model["rows"] for n in row["nodes"].get(label, [])]
        lost = counter_truncation_us(label.split()[0])
        assert coverage["counter_truncation_ms"] == pytest.approx(len(nodes) * lost / 1000, abs=1e-4)
        if label != "torch fp32":   # PyTorch's profiler keeps fractions of a µs
            assert all(us >= lost and 2 * (us - lost) == round(2 * (us - lost)) for us in nodes)
    for runtime in ("onnxruntime", "openvino"):
        assert model["sqnr_db"][runtime] and set(model["sqnr_db"][runtime]) <= set(LAYERS)
        assert len(model["accuracy_recovered_pt"][runtime]) == 1
    assert {p.name for p in out.iterdir()} >= {"README.md", "explain.json", "latency-lenet5-fmnist.png",
                                                "error-lenet5-fmnist.png", "edgecnn-report.json"}
    readme = (out / "README.md").read_text()
    assert "| features.0 |" in readme and "Why INT8 is slow here" in readme and "VNNI" in readme
    sha = json.loads((artifacts["onnx-fp32"] / "manifest.json").read_text())["model"]["weights"]["sha256"]
    assert model["weights"].endswith(f"(sha256 {sha[:16]})") and f"Weights: {model['weights']}." in readme
    assert json.loads((out / "explain.json").read_text())["models"][0]["rows"] == model["rows"]
    # an earlier explain report is replaced with --force only; anything else is never replaced
    assert main(["explain", str(artifacts["onnx-fp32"]), "--out", str(out), "--threads", "1"]) == 2
    (out / "mine.txt").write_text("a user's file")
    assert main(["explain", str(artifacts["onnx-fp32"]), "--out", str(out), "--threads", "1", "--force"]) == 2
    assert (out / "mine.txt").read_text() == "a user's file"


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_runtime_without_a_profiler_here_is_one_line(tmp_path: Path, capsys) -> None:
    trt = export_registered(MODEL, "tensorrt", "fp32", tmp_path / "trt", parity_samples=8).path
    out = tmp_path / "explain"
    _one_line_error(capsys, ["explain", str(trt), "--out", str(out)], "has no per-layer profiler edgecnn can run here")
    assert not out.exists()


def test_placement_fast_records_each_layer_and_an_all_float_int8_is_refused_by_explain(tmp_path: Path, capsys,
                                                                                      monkeypatch) -> None:
    from edgecnn.export import placement

    # every INT8 placement measured slower than FP32: the artifact computes every layer in float
    monkeypatch.setattr(placement, "median_ratio", lambda ours, theirs: 1.5)
    art = _int8(tmp_path / "fast", placement="fast", profile_threads=1)
    c = json.loads((art / "manifest.json").read_text())["calibration"]
    record = c["placement"]
    assert [row["layers"] for row in record["layers"]] == [[layer] for layer in LAYERS]
    assert all({"fp32_us", "int8_us", "slower_in_int8"} <= set(row) for row in record["layers"])
    assert record["chosen"] == "float" and record["left_in_float"] == "every layer"
    assert record["machine"]["cpu_flags"]
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["parity"][0]["test_split"]["drop"] == 0
    ops = {n.op_type for n in onnx.load(str(art / "model.onnx")).graph.node}
    assert not ops & {"QuantizeLinear", "DequantizeLinear"}
    _one_line_error(capsys, ["explain", str(art), "--out", str(tmp_path / "ex"), "--threads", "1"],
                    "no quantized layer")
    # timed on another machine: its float layers are that machine's choice
    from edgecnn.benchmarks import explain as explain_module

    other = {**record["machine"], "cpu": "Another CPU"}
    monkeypatch.setattr(explain_module, "machine_info", lambda: other)
    _one_line_error(capsys, ["explain", str(art), "--out", str(tmp_path / "ex")], "left layers in float by timings "
                                                                                  "taken on")
    assert not (tmp_path / "ex").exists()


def _profile(latency: float, us: dict[str, float]) -> Profile:
    nodes = [NodeTime(f"/{name}/node" if name != "Transpose" else name, "Conv", "Conv", t) for name, t in us.items()]
    return Profile(Path("m"), "onnxruntime", 1, nodes, latency, latency, [latency] * 3, 3)


class _FakeTrial:
    """A Trial over recorded numbers: which layers are in float decides accuracy and latency."""

    def __init__(self, gains: dict[str, float], float_us: dict[str, float], int8_us: dict[str, float]) -> None:
        self.gains, self.float_us, self.int8_us = gains, float_us, int8_us
        self.excluded: list[str] = []
        self.kept: dict[Path, list[str]] = {}
        self.restored: list[Path] = []
        self.trial = Trial(Path("fp32.onnx"), self.quantize, self.keep, self.restored.append, self.profile)

    def quantize(self, exclude: list[str]) -> float:
        self.excluded = list(exclude)
        return 90.0 + sum(self.gains[n.split("/")[1]] for n in set(exclude))

    def keep(self, name: str) -> Path:
        self.kept[Path(name)] = self.excluded
        return Path(name)

    def profile(self, paths: list[Path]) -> list[Profile]:
        """Each layer at its float or INT8 time; an INT8 model also pays 5 µs of conversions no layer owns."""
        out = []
        for path in paths:
            floated = set(self.gains) if path.name == "fp32.onnx" else {n.split("/")[1] for n in self.kept[path]}
            us = {l: self.float_us[l] if l in floated else self.int8_us[l] for l in self.gains}
            if floated != set(self.gains):
                us["Transpose"] = 5.0
            out.append(_profile(sum(us.values()) / 1000, us))
        return out


def _fake_layers(monkeypatch: pytest.MonkeyPatch, names: str) -> LayerMap:
    """One node per layer, `/a/node` for layer a; the searches' graph_layers returns it for every model."""
    from edgecnn.export import placement

    layers = LayerMap({f"/{n}/node": n for n in names}, {n: [f"/{n}/node"] for n in names},
                      {n: f"/{n}/node" for n in names})
    monkeypatch.setattr(placement, "graph_layers", lambda fp32, quantized=None: layers)
    return layers


@pytest.fixture
def fake_layers(monkeypatch) -> LayerMap:
    return _fake_layers(monkeypatch, "abc")


def test_placement_fast_floats_the_layers_slower_in_int8_and_keeps_the_faster_placement(fake_layers) -> None:
    fake = _FakeTrial({"a": 0.0, "b": 0.0, "c": 0.0}, float_us={"a": 10, "b": 10, "c": 10},
                      int8_us={"a": 30, "b": 4, "c": 4})
    exclude, accuracy, record = place_for_speed(fake.trial, fake_layers, [], 90.0, 90.0)
    assert exclude == ["/a/node"] and record["chosen"] == "placed" and record["left_in_float"] == ["a"]
    assert [row["slower_in_int8"] for row in record["layers"]] == [True, False, False]
    assert fake.restored == [Path("placement-placed")]
    # floating the slow layers still leaves INT8 slower than FP32 (its conversions): the FP32 model is put back
    fake = _FakeTrial({"a": 0.0, "b": 0.0, "c": 0.0}, float_us={"a": 10, "b": 10, "c": 10},
                      int8_us={"a": 30, "b": 11, "c": 9.5})
    exclude, accuracy, record = place_for_speed(fake.trial, fake_layers, [], 89.0, 90.0)
    assert record["chosen"] == "float" and fake.restored == [Path("fp32.onnx")] and accuracy == 90.0


def test_cheapest_subset_is_the_least_latency_that_reaches_the_gain() -> None:
    gains, costs = {"a": 0.3, "b": 0.2, "c": 0.25}, {"a": 10.0, "b": 1.0, "c": 2.0}
    assert cheapest_subset(gains, costs, 0.4) == {"b", "c"}                 # 3 µs, where sensitivity's a+b costs 11
    assert cheapest_subset(gains, costs, 0.4, refused=[frozenset({"b", "c"})]) == {"a", "b"}
    assert cheapest_subset(gains, costs, 1.0) is None


def test_fallback_cost_returns_the_cheapest_set_and_records_both_numbers(fake_layers) -> None:
    # a recovers the most but its float kernel is slow; b and c together recover enough for little
    fake = _FakeTrial({"a": 0.5, "b": 0.3, "c": 0.3}, float_us={"a": 40, "b": 5, "c": 6},
                      int8_us={"a": 10, "b": 4, "c": 4})
    nodes, accuracy, record = cheapest_fallback(fake.trial, fake_layers, ["/a/node", "/b/node", "/c/node"], [],
                                                fp32_accuracy=91.0, accuracy=90.0, max_drop=0.5)
    assert sorted(nodes) == ["/b/node", "/c/node"] and accuracy == pytest.approx(90.6)
    assert [(c["layer"], c["accuracy_gain_pt"], c["latency_cost_us"]) for c in record["chosen"]] == \
        [("b", 0.3, 1.0), ("c", 0.3, 2.0)]
    assert {c["layer"] for c in record["candidates"]} == {"a", "b", "c"}
    assert record["chosen_by"] == "knapsack over measured gains"


def test_fallback_cost_takes_the_cheapest_layers_first_when_gains_do_not_add_up(monkeypatch) -> None:
    from edgecnn.export import placement

    layers = _fake_layers(monkeypatch, "abcd")
    monkeypatch.setattr(placement, "CONFIRMATIONS", 1)
    fake = _FakeTrial({"a": 0.25, "b": 0.25, "c": 0.1, "d": 0.0}, float_us={"a": 5, "b": 6, "c": 7, "d": 44},
                      int8_us={"a": 4, "b": 4, "c": 4, "d": 4})
    alone = fake.quantize
    # a and b together recover less than their sum unless c is in float too: the knapsack's pick is refused
    fake.trial.quantize = lambda exclude: alone(exclude) - (
        0.3 if {"/a/node", "/b/node"} <= set(exclude) and "/c/node" not in exclude else 0)
    nodes, accuracy, record = cheapest_fallback(fake.trial, layers, ["/d/node", "/c/node", "/b/node", "/a/node"],
                                                [], fp32_accuracy=91.0, accuracy=90.0, max_drop=0.6)
    assert record["confirmations"][0]["layers"] == ["b", "a"] and record["confirmations"][0]["drop"] > 0.6
    assert record["cost_order"]["order"] == ["a", "b", "c", "d"]        # cheapest in float first
    assert nodes == ["/a/node", "/b/node", "/c/node"] and accuracy == pytest.approx(90.6)
    assert record["chosen_by"] == "cheapest in float first, doubling then bisection"
    assert [c["latency_cost_us"] for c in record["chosen"]] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("argv, message", [
    (["--precision", "fp32", "--placement", "fast"], "apply to --precision int8, not fp32"),
    (["--precision", "int8", "--fallback", "cost"], "--fallback cost chooses which layers --max-drop returns"),
    (["--target", "tensorrt", "--precision", "int8", "--placement", "fast"], "has none edgecnn can run here"),
])
def test_bad_placement_requests_are_one_line_and_write_nothing(tmp_path: Path, capsys, argv: list[str],
                                                               message: str) -> None:
    out = tmp_path / "art"
    _one_line_error(capsys, ["export", MODEL, "--out", str(out), "--no-progress", *argv], message)
    assert not out.exists()


@pytest.mark.slow  # several quantize-and-score rounds on the 5000-image validation split
def test_fallback_cost_meets_max_drop_in_a_real_export(tmp_path: Path) -> None:
    art = _int8(tmp_path / "cost", samples=1, max_drop=0.5, fallback="cost", profile_threads=1)
    c = json.loads((art / "manifest.json").read_text())["calibration"]
    first_drop = c["fp32_validation_accuracy"] - c["scores_validation_accuracy"]["minmax"]
    assert first_drop > 0.5, "the test needs a first INT8 model over budget"
    assert c["validation_drop"] <= 0.5 and c["fallback"]["chosen_by"]
    assert all({"accuracy_gain_pt", "latency_cost_us"} <= set(layer) for layer in c["fallback"]["chosen"])
    assert c["nodes_to_exclude"] == [n for layer in c["fallback"]["chosen"] for n in layer["nodes"]]
    assert set(c["nodes_to_exclude"]) <= {n.name for n in onnx.load(str(art / "model.onnx")).graph.node}


@pytest.mark.parametrize("op, kernel, integer, float_compute", [
    ("QLinearConv", "QLinearConv", True, False),                  # ONNX Runtime's INT8 convolution
    ("FusedConv", "FusedConv", False, True),                      # one the quantizer left in float
    ("Convolution", "brgconv_avx512_I8", True, False),            # OpenVINO: the precision ends exec_type
    ("Convolution", "brgconv_avx512_FP32", False, True),
    ("FullyConnected", "brgemm_avx512_u8", True, False),
    ("Relu", "Relu", False, False),                               # not a convolution or matrix product
])
def test_which_kernels_ran_in_integers_and_which_compute_stayed_float(op: str, kernel: str, integer: bool,
                                                                      float_compute: bool) -> None:
    """What "why INT8 is slow here" calls a layer that ran in float, on either runtime's profile."""
    node = NodeTime("n", op, kernel, 1.0)
    assert runs_in_integers(node) is integer and computes_in_float(node) is float_compute


def test_an_artifact_whose_model_cannot_be_rebuilt_has_no_eager_column_and_says_why(artifacts: dict[str, Path]) -> None:
    import copy

    from edgecnn.benchmarks.explain import _Artifact, _Pair, _with_eager_reference

    fp32 = artifacts["onnx-fp32"]
    manifest = json.loads((fp32 / "manifest.json").read_text())
    rebuildable = _Pair(_Artifact(fp32, manifest), None, graph_layers(fp32 / "model.onnx"))
    eager, pair = _with_eager_reference([rebuildable])
    assert eager.runtime == "torch" and eager.fp32 is pair.fp32 and not pair.notes
    gone = copy.deepcopy(manifest)
    gone["model"]["weights"].update(source="checkpoint", path=str(fp32 / "missing.safetensors"))
    (pair,) = _with_eager_reference([_Pair(_Artifact(fp32, gone), None, graph_layers(fp32 / "model.onnx"))])
    assert pair.runtime == "onnxruntime"
    (note,) = pair.notes
    assert note.startswith("the eager PyTorch reference is not profiled: the checkpoint") and "is gone" in note
