"""Per-layer latency from each runtime's own profiler, and per-layer quantization error, named by the model's layers.

    layers = graph_layers(Path("fp32/model.onnx"))                 # layer (module name) of every node and tensor
    fp32, int8 = profile_models([ModelRun(Path("fp32/model.onnx"), "onnxruntime"),
                                 ModelRun(Path("int8/model.onnx"), "onnxruntime")], batch, threads=1)
    rows = fp32.by_layer(layers)                                    # layer → µs per inference, unmapped kept apart

A layer is the PyTorch module a user knows (`layer2.0.conv1`), found from the parameter names the exporter gives
the weights (`layer2.0.conv1.weight`); a node without parameters (ReLU, residual Add, pooling) belongs to the layer
whose value it reads, as runtimes fuse such epilogues into the convolution before them. A quantized graph keeps the
FP32 graph's node names (ONNX Runtime and NNCF both do), so its nodes take the FP32 graph's layers; what the
quantizer added (Q/DQ, FakeQuantize) takes the layer it converts for. Runtime node names (ONNX Runtime's
`/conv1_1/Conv_token_4`, `/relu/Relu_output_0_nchwc`; OpenVINO's fused nodes and their `originalLayersNames`) are
resolved back to graph names; what no rule resolves is reported as unmapped, never dropped.

Profilers: ONNX Runtime's session profiling (`enable_profiling`, one `<node>_kernel_time` event per node and run),
OpenVINO's performance counters (`PERF_COUNT`: executed kernel and precision, e.g. `brgconv_avx512_I8`). Each model
is also timed with the profiler off, in the same interleaved rounds: that is its latency, which the per-layer times
are set against (the profiler's own bookkeeping between kernels is no part of it). This module is the export stage's:
`--placement fast` and `--fallback cost` measure with it; `edgecnn explain` reports with it.
"""
from __future__ import annotations

import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgecnn.errors import UserError

# A weight or bias as torch's exporters name it: the module's name, then the parameter's.
PARAMETER = re.compile(r"^(?P<layer>.+)\.(?:weight|bias)$")
# Nodes that convert a value for the layer that reads it (a standalone DequantizeLinear exists because its reader
# runs in float); any other node without parameters belongs to the layer whose value it reads.
_FOR_THE_READER = {"DequantizeLinear"}
# What ONNX Runtime adds to a graph node's name when it rewrites the node (layout, QDQ fusion, Gemm fusion).
_ORT_SUFFIX = re.compile(r"(_token_\d+|_nchwc|_quant)$")
_ORT_PREFIX = "fused "
SQNR_CHUNK = 16
# Both profilers count whole microseconds, truncated: ONNX Runtime each node's duration per run; OpenVINO's CPU
# plugin each node's time per inference, then the integer average of those (intel_cpu/src/perf_count.h). A
# truncation loses half a microsecond on average, so every node's median gets back the expected loss of its
# runtime's counter (per inference; its backend's `counter_truncation_us`); `Profile.truncation_ms` says how much of a
# profile's sum that is.


def profiled_backends() -> tuple[str, ...]:
    """The runtimes with a per-layer profiler edgecnn reads (their backend module's `profiler`)."""
    from edgecnn.export.backends import BACKENDS

    return tuple(b.name for b in BACKENDS.values() if b.profiler is not None)


def profiled_targets() -> tuple[str, ...]:
    """The export targets whose artifacts run on a profiled runtime."""
    from edgecnn.export.backends import BACKENDS

    targets = (BACKENDS.lookup(name).target_name for name in profiled_backends())
    return tuple(t for t in targets if t is not None)   # the eager reference has no target of its own


def counter_truncation_us(backend: str) -> float:
    from edgecnn.export.backends import BACKENDS

    return BACKENDS.lookup(backend).counter_truncation_us


@dataclass
class _Node:
    name: str
    op: str
    reads: list[str]        # names of the nodes whose values it reads (data, not constants)
    writes: list[str]       # names of the tensors it writes (ONNX); OpenVINO names values by node
    parameters: list[str]   # parameter names among its constant inputs (`layer1.0.conv1.weight`)
    weight_shape: list[int] = field(default_factory=list)  # of its first parameter of rank 2 or more


@dataclass
class LayerMap:
    """Which layer (module name) each node, and for ONNX each tensor, of one graph belongs to."""
    layer_of: dict[str, str]
    nodes: dict[str, list[str]]     # layer → its graph nodes, in graph order (what a quantizer's exclude takes)
    output: dict[str, str]          # layer → the tensor (ONNX) or node (OpenVINO) its value leaves by
    weight_shape: dict[str, list[int]] = field(default_factory=dict)  # layer → its weight's shape (FP32 graph)
    inserted: set[str] = field(default_factory=set)  # nodes a quantizer added (not in the FP32 graph)

    @property
    def layers(self) -> list[str]:
        """Layers in graph order."""
        return list(self.nodes)

    def resolve(self, name: str) -> str | None:
        """The layer of a graph node, tensor or runtime node (named as ONNX Runtime rewrites, or OpenVINO inserts),
        or a layer's own name (the eager reference's profiler names its modules)."""
        if name in self.nodes:
            return name
        for candidate in _name_variants(name):
            if candidate in self.layer_of:
                return self.layer_of[candidate]
        # a runtime-inserted node named after the node it serves (OpenVINO's reorders)
        served = [known for known in self.layer_of if len(known) > 2 and name.endswith("_" + known)]
        return self.layer_of[max(served, key=len)] if served else None

    def resolve_all(self, names: Iterable[str]) -> tuple[str, ...]:
        """The layers of a runtime node (its own name and the graph nodes it fused), in graph order; () if none.
        A quantizer's converter fused into a node (a FakeQuantize on the value it reads) names a layer only if
        nothing else in the node does: it belongs to the node it was fused into."""
        resolved = [(name, layer) for name in names if (layer := self.resolve(name)) is not None]
        found = {layer for name, layer in resolved if name not in self.inserted} or {layer for _, layer in resolved}
        return tuple(layer for layer in self.layers if layer in found)


def _name_variants(name: str) -> Iterable[str]:
    """`name`, then without what ONNX Runtime adds when it rewrites a node (repeatedly: `_quant_token_3`)."""
    name = name.removeprefix(_ORT_PREFIX)
    yield name
    while (stripped := _ORT_SUFFIX.sub("", name)) != name:
        name = stripped
        yield name


def _assign(nodes: list[_Node], known: dict[str, str]) -> LayerMap:
    """Layers for `nodes` (in graph order): from parameters, else from `known` (the FP32 graph's map, by node name),
    else the layer whose value the node reads (a DequantizeLinear: the layer it is read by), else the other way."""
    layer: dict[str, str] = {}
    readers: dict[str, list[str]] = {n.name: [] for n in nodes}
    for node in nodes:
        for source in node.reads:
            readers.setdefault(source, []).append(node.name)

    def from_sources(node: _Node) -> str | None:
        return next((layer[s] for s in node.reads if s in layer), None)

    def from_readers(node: _Node) -> str | None:
        return next((layer[r] for r in readers.get(node.name, []) if r in layer), None)

    for node in nodes:
        own = next((PARAMETER.match(p)["layer"] for p in node.parameters), None) or known.get(node.name)
        if own is None and node.op not in _FOR_THE_READER:
            own = from_sources(node)
        if own is not None:
            layer[node.name] = own
    for rule in (from_readers, from_sources):  # a reader may itself be resolved only by the pass before
        for node in reversed(nodes) if rule is from_readers else nodes:
            if node.name not in layer and (own := rule(node)) is not None:
                layer[node.name] = own
    members: dict[str, list[str]] = {}
    output: dict[str, str] = {}
    shapes: dict[str, list[int]] = {}
    for node in nodes:
        if node.name not in layer:
            continue
        own = layer[node.name]
        members.setdefault(own, []).append(node.name)
        if node.weight_shape:
            shapes.setdefault(own, node.weight_shape)
        if node.op not in _FOR_THE_READER:
            output[own] = node.writes[0] if node.writes else node.name
    layer_of = dict(layer)
    layer_of.update({t: layer[n.name] for n in nodes if n.name in layer for t in n.writes})
    inserted = {n.name for n in nodes if known and n.name not in known}
    return LayerMap(layer_of, members, output, shapes, inserted)


def _onnx_nodes(model: Any) -> list[_Node]:
    graph = model.graph
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    constant = set(shapes)
    producer: dict[str, str] = {}
    nodes = []
    for node in graph.node:  # ONNX nodes are stored in topological order
        inputs = [i for i in node.input if i]
        if all(i in constant for i in inputs):  # Constant, weight DequantizeLinear, ...: folded into the reader
            constant.update(node.output)
            continue
        parameters = [i for i in inputs if i in constant and PARAMETER.match(i)]
        weight = next((shapes[p] for p in parameters if len(shapes.get(p, ())) >= 2), [])
        nodes.append(_Node(node.name, node.op_type, [producer[i] for i in inputs if i in producer],
                           list(node.output), parameters, weight))
        producer.update({o: node.name for o in node.output})
    return nodes


def _openvino_nodes(model: Any) -> list[_Node]:
    constant: set[str] = set()
    nodes = []
    for op in model.get_ordered_ops():
        name, sources = op.get_friendly_name(), [op.input_value(i).get_node() for i in range(op.get_input_size())]
        if op.get_type_name() == "Constant" or (sources and all(s.get_friendly_name() in constant for s in sources)):
            constant.add(name)
            continue
        if op.get_type_name() in ("Parameter", "Result"):
            continue
        weights = [c for s in sources if s.get_friendly_name() in constant for c in _constants_above(s)
                   if PARAMETER.match(c.get_friendly_name())]
        shape = next((list(c.get_output_shape(0)) for c in weights if len(c.get_output_shape(0)) >= 2), [])
        nodes.append(_Node(name, op.get_type_name(), [s.get_friendly_name() for s in sources
                                                       if s.get_friendly_name() not in constant], [],
                           [c.get_friendly_name() for c in weights], shape))
    return nodes


def _constants_above(op: Any) -> list[Any]:
    """The Constant nodes a constant subgraph (weights behind Convert, Multiply, Reshape…) starts from."""
    if op.get_type_name() == "Constant":
        return [op]
    return [c for i in range(op.get_input_size()) for c in _constants_above(op.input_value(i).get_node())]


def _read_graph(path: Path) -> list[_Node]:
    if path.suffix == ".onnx":
        import onnx

        return _onnx_nodes(onnx.load(str(path), load_external_data=False))
    import openvino as ov

    return _openvino_nodes(ov.Core().read_model(str(path)))


def graph_layers(fp32: Path, quantized: Path | None = None) -> LayerMap:
    """The layers of the FP32 graph `fp32` (an ONNX or OpenVINO IR file), or, given the `quantized` graph made from
    it, of that graph's nodes (named as the FP32 graph's, plus what the quantizer inserted)."""
    layers = _assign(_read_graph(fp32), {})
    if quantized is None:
        return layers
    return _assign(_read_graph(quantized), layers.layer_of)


# ---------------------------------------------------------------- profiling

@dataclass
class NodeTime:
    """One node as the runtime ran it: fused nodes keep one name and list the graph nodes inside (`fused`)."""
    name: str
    op: str
    kernel: str      # ONNX Runtime: the op it ran; OpenVINO: exec_type, the kernel and its precision
    us: float        # median microseconds per inference, with the counter's expected truncation added back
    fused: list[str] = field(default_factory=list)


# ONNX Runtime's integer kernels; OpenVINO ends a kernel's exec_type with its precision (brgconv_avx512_I8, …_u8).
_INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat"}
_INTEGER_KERNEL = re.compile(r"(I8|[iu]8)$")


def runs_in_integers(node: NodeTime) -> bool:
    """Whether the runtime ran this node with an integer (INT8) kernel."""
    return node.op in _INTEGER_OPS or bool(_INTEGER_KERNEL.search(node.kernel))


# Convolutions and matrix products as each runtime's profiler names them (ONNX Runtime after its fusions, OpenVINO).
_COMPUTE_OPS = {"Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
                "Convolution", "FullyConnected"}


def computes_in_float(node: NodeTime) -> bool:
    """Whether this node is a convolution or matrix product the runtime ran with a float kernel."""
    return node.op in _COMPUTE_OPS and not runs_in_integers(node)


@dataclass
class LayerTime:
    """The runtime nodes one layer ran as: several layers when the runtime fused them into one node; () unmapped."""
    layers: tuple[str, ...]
    us: float
    nodes: list[NodeTime]


@dataclass
class Profile:
    """One model's per-node times from its runtime's profiler, and its latency with the profiler off."""
    model: Path
    backend: str
    threads: int | None
    nodes: list[NodeTime]
    latency_ms: float             # median per inference, profiler off
    profiled_ms: float            # median per inference, profiler on
    round_latency_ms: list[float]  # per interleaved round, profiler off
    runs: int                     # profiled inferences the node medians come from
    call_ms: float = 0.0          # the runtime's cost per call on a one-node graph of the same input, same rounds

    def by_layer(self, layers: LayerMap) -> list[LayerTime]:
        """Per layer (graph order), the time of the runtime nodes mapped to it; the unmapped nodes last, together."""
        found: dict[tuple[str, ...], list[NodeTime]] = {}
        for node in self.nodes:
            found.setdefault(layers.resolve_all([node.name, *node.fused]), []).append(node)
        order = {layer: k for k, layer in enumerate(layers.layers)}
        keys = sorted(found, key=lambda key: order[key[0]] if key else len(order))
        return [LayerTime(key, sum(n.us for n in found[key]), found[key]) for key in keys]

    @property
    def truncation_ms(self) -> float:
        """How much of the per-node sum is the counter's expected truncation, added back."""
        return len(self.nodes) * counter_truncation_us(self.backend) / 1000

    @property
    def coverage(self) -> float:
        """Sum of the per-node times over the latency: how much of the real latency the profile accounts for."""
        return sum(n.us for n in self.nodes) / (1000 * self.latency_ms)

    @property
    def graph_coverage(self) -> float:
        """As `coverage`, of the latency less the runtime's per-call cost (what no node of any graph can own)."""
        return sum(n.us for n in self.nodes) / (1000 * max(self.latency_ms - self.call_ms, 1e-9))


@dataclass
class LayerComparison:
    """One group of layers across several profiles: the layers a runtime fused into one node stay together."""
    layers: tuple[str, ...]          # () for what no rule mapped
    us: dict[str, float]             # profile label → µs per inference (absent: the profile ran none of it)
    nodes: dict[str, list[NodeTime]]


def compare(rows: dict[str, list[LayerTime]], order: Sequence[str]) -> list[LayerComparison]:
    """Per-layer rows of several profiles (label → `Profile.by_layer`) side by side, in `order` (graph order):
    layers any profile ran fused form one row in all, so each row times the same work everywhere."""
    group = {layer: layer for layer in order}

    def root(layer: str) -> str:
        while group.setdefault(layer, layer) != layer:
            layer = group[layer]
        return layer

    for profile_rows in rows.values():
        for row in profile_rows:
            for other in row.layers[1:]:
                group[root(other)] = root(row.layers[0])
    members: dict[str, list[str]] = {}
    for layer in list(order) + [k for k in group if k not in order]:
        members.setdefault(root(layer), []).append(layer)
    found: dict[tuple[str, ...], LayerComparison] = {}
    for label, profile_rows in rows.items():
        for row in profile_rows:
            key = tuple(members[root(row.layers[0])]) if row.layers else ()
            entry = found.setdefault(key, LayerComparison(key, {}, {}))
            entry.us[label] = entry.us.get(label, 0.0) + row.us
            entry.nodes.setdefault(label, []).extend(row.nodes)
    position = {layer: k for k, layer in enumerate(order)}
    return sorted(found.values(), key=lambda c: position.get(c.layers[0], len(position)) if c.layers else 1e9)


@dataclass(frozen=True)
class ModelRun:
    """A model file to profile and how: its backend and the precision its artifact is (OpenVINO's hint)."""
    path: Path
    backend: str
    precision: str = "fp32"


class ProfiledRun:
    """A model on its backend as edgecnn's runtime sessions run it, with or without the runtime's profiler: what a
    backend module's `profiler` returns."""

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def node_times(self) -> list[NodeTime]:
        """Median µs per inference of every node the profiler saw (plus the counter's expected truncation), in
        execution order."""
        raise NotImplementedError

    @classmethod
    def per_call(cls, batch: np.ndarray, work: Path, threads: int | None) -> ProfiledRun:
        """The runtime on the least work an input like `batch` allows (a one-node graph in `work`): its own cost
        per call, which no layer of any model can own. `cls(model file, precision, threads, trace)` by default."""
        return cls(_one_node_graph(batch, work), "fp32", threads, None)  # type: ignore[call-arg]


def _profiler(backend: str) -> type[ProfiledRun]:
    from edgecnn.export.backends import BACKENDS

    profiler = BACKENDS.lookup(backend).profiler
    if profiler is None:
        raise UserError(f"the {backend} backend has no per-layer profiler edgecnn reads here; profile "
                        f"{' or '.join(profiled_backends())} artifacts")
    return profiler


def _runner(run: ModelRun, threads: int | None, trace: Path | None = None) -> ProfiledRun:
    """`run` on its backend; profiled (its traces in `trace`) unless `trace` is None."""
    return _profiler(run.backend)(run.path, run.precision, threads, trace)


def profile_models(runs: Sequence[ModelRun], batch: np.ndarray, threads: int | None = None, rounds: int = 5,
                   iterations: int = 100, warmup: int = 10) -> list[Profile]:
    """Profile every model on `batch` in interleaved rounds (A B C A B C …, each with the profiler off, then on), so
    drift on a shared machine hits all alike and their latencies compare as ratios of one run. Each round also
    times, per backend, a one-node graph of the same input: the runtime's own cost per call."""
    with tempfile.TemporaryDirectory(prefix="edgecnn-profile-") as tmp:
        pairs = [(_runner(r, threads), _runner(r, threads, Path(tmp))) for r in runs]
        calls = {b: _profiler(b).per_call(batch, Path(tmp), threads) for b in dict.fromkeys(r.backend for r in runs)}
        for runner in [plain for plain, _ in pairs] + list(calls.values()):
            for _ in range(warmup):
                runner(batch)
        plain_ms: list[list[float]] = [[] for _ in runs]
        profiled_ms: list[list[float]] = [[] for _ in runs]
        call_ms: dict[str, list[float]] = {b: [] for b in calls}
        for _ in range(rounds):
            for k, (plain, profiled) in enumerate(pairs):
                plain_ms[k].append(statistics.median(_timed(plain, batch, iterations)))
                profiled_ms[k].extend(_timed(profiled, batch, iterations))
            for backend, runner in calls.items():
                call_ms[backend].append(statistics.median(_timed(runner, batch, iterations)))
        return [Profile(r.path, r.backend, threads, profiled.node_times(), statistics.median(plain_ms[k]),
                        statistics.median(profiled_ms[k]), plain_ms[k], rounds * iterations,
                        statistics.median(call_ms[r.backend]))
                for k, (r, (_, profiled)) in enumerate(zip(runs, pairs))]


def _one_node_graph(batch: np.ndarray, work: Path) -> Path:
    """An ONNX graph that only applies ReLU to an input like `batch` (both backends read it)."""
    import onnx
    from onnx import TensorProto, helper

    tensor = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "one_node",
                              [tensor("input", TensorProto.FLOAT, list(batch.shape))],
                              [tensor("output", TensorProto.FLOAT, list(batch.shape))])
    path = work / "one-node.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _timed(run: Callable[[np.ndarray], Any], batch: np.ndarray, iterations: int) -> list[float]:
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run(batch)
        times.append(1000 * (time.perf_counter() - start))
    return times


def model_runner(run: ModelRun, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The logits of a model file on its backend, as the runtime sessions compute them (for scoring candidates)."""
    runner = _runner(run, threads)
    return lambda batch: runner(batch)[0]


# ---------------------------------------------------------------- quantization error

def sqnr_db(signal_power: float, noise_power: float) -> float | None:
    """10·log10(signal power / noise power); None where it is not a number (identical outputs, or no signal)."""
    if noise_power == 0 or signal_power == 0:
        return None
    return round(10 * float(np.log10(signal_power / noise_power)), 2)


def layer_sqnr(fp32: ModelRun, int8: ModelRun, layers: LayerMap, quantized_layers: LayerMap, inputs: np.ndarray,
               batch: int, threads: int | None = None) -> dict[str, float | None]:
    """Per layer, the SQNR (dB) of its output in the INT8 model against the FP32 model on the same `inputs`: the
    value the next layer reads (after the INT8 graph's requantization), so error accumulates along the network.
    None: identical outputs (the layer and everything before it compute alike)."""
    taps = {layer: (layers.output[layer], _quantized_value(int8, quantized_layers, layers.output[layer]))
            for layer in layers.layers}
    taps = {k: v for k, v in taps.items() if v[1] is not None}
    with tempfile.TemporaryDirectory(prefix="edgecnn-sqnr-") as tmp:
        reference = _tapped(fp32, [a for a, _ in taps.values()], Path(tmp) / "fp32", threads)
        candidate = _tapped(int8, [b for _, b in taps.values()], Path(tmp) / "int8", threads)
        signal = dict.fromkeys(taps, 0.0)
        noise = dict.fromkeys(taps, 0.0)
        for start in range(0, len(inputs), batch):
            chunk = inputs[start:start + batch]
            if len(chunk) < batch:
                break
            for layer, a, b in zip(taps, reference(chunk), candidate(chunk)):
                a, b = a.astype(np.float64), b.astype(np.float64)
                signal[layer] += float(np.sum(a * a))
                noise[layer] += float(np.sum((a - b) ** 2))
    return {layer: sqnr_db(signal[layer], noise[layer]) for layer in taps}


def _quantized_value(run: ModelRun, layers: LayerMap, value: str) -> str | None:
    """Where the INT8 graph holds the FP32 graph's `value` as the next layer reads it: after the Q→DQ pair
    (ONNX) or the FakeQuantize (OpenVINO) that requantizes it, if one does; None if the graph lacks it."""
    if run.path.suffix == ".onnx":
        import onnx

        graph = onnx.load(str(run.path), load_external_data=False).graph
        readers: dict[str, list[Any]] = {}
        for node in graph.node:
            for i in node.input:
                readers.setdefault(i, []).append(node)
        if value not in readers and value not in {o for n in graph.node for o in n.output}:
            return None
        for q in readers.get(value, []):
            if q.op_type == "QuantizeLinear":
                dq = next((d for d in readers.get(q.output[0], []) if d.op_type == "DequantizeLinear"), None)
                if dq is not None:
                    return dq.output[0]
        return value
    import openvino as ov

    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(run.path)).get_ordered_ops()}
    if value not in ops:
        return None
    fq = next((t.get_node() for t in ops[value].output(0).get_target_inputs()
               if t.get_node().get_type_name() == "FakeQuantize"), None)
    return fq.get_friendly_name() if fq is not None else value


def _tapped(run: ModelRun, values: list[str], work: Path, threads: int | None) -> Callable[[np.ndarray], list]:
    """A runner of the model that returns `values` (tensor names in ONNX, node names in OpenVINO), in order."""
    work.mkdir()
    if run.path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(run.path))
        present = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=v) for v in dict.fromkeys(values) if v not in present)
        tapped = work / "tapped.onnx"
        onnx.save(model, str(tapped))
        runner = _runner(ModelRun(tapped, run.backend, run.precision), threads)
        index = {o.name: k for k, o in enumerate(runner._session.get_outputs())}
    else:
        import openvino as ov

        model = ov.Core().read_model(str(run.path))
        ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
        model.add_outputs([ops[v].output(0) for v in dict.fromkeys(values)])
        tapped = work / "tapped.xml"
        ov.save_model(model, str(tapped), compress_to_fp16=False)
        runner = _runner(ModelRun(tapped, run.backend, run.precision), threads)
        index = {}
        for k, port in enumerate(runner._compiled.outputs):  # a Result's source names the value it returns
            index.setdefault(port.get_node().input_value(0).get_node().get_friendly_name(), k)

    def outputs(batch: np.ndarray) -> list[np.ndarray]:
        values_out = runner(batch)
        return [values_out[index[v]] for v in values]
    return outputs


__all__ = ["LayerComparison", "LayerMap", "LayerTime", "ModelRun", "NodeTime", "Profile", "ProfiledRun", "compare",
           "counter_truncation_us", "graph_layers", "layer_sqnr", "model_runner", "profile_models", "profiled_backends",
           "profiled_targets", "runs_in_integers"]
