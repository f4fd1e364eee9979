"""The single-graph form of an early-exit artifact: every stage, its exit entropy and the exit decision in one graph.

Stage 1 runs in the main graph; the decision `entropy < thresholds[k]` is the condition of an `If` whose then-branch
returns the exit's logits and whose else-branch runs stage k+1 (and, nested, the decisions after it). One session
call therefore runs exactly the stages the sample needs: ONNX Runtime and OpenVINO's CPU plugin execute only the
taken branch (the measured cost of the untaken one is in docs/early_exit.md).

    inputs:  input (1×C×H×W, the stages' dtype), thresholds (N-1, float32: one per early exit)
    outputs: logits (1×classes: the exit's), exit (1, int64: the 0-based stage the sample left at)

The graph takes batch 1 only: each `If` decides for the whole batch, so a batch whose samples leave at different
stages runs through the staged loop instead (the early-exit session does this by itself).

The graph is composed from the stage graphs exactly as the export wrote them, at every precision: ONNX stage files
become `If` bodies by renaming (onnx.compose.add_prefix_graph), OpenVINO stage IRs become `If` bodies through
OpenVINO's own graph API. INT8 stages are therefore the ones the quantizers produced (the quantizers themselves
are not asked to see through `If`: see docs/early_exit.md for what each does with it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgecnn.export.graph_io import INPUT_NAME, OUTPUT_NAME

THRESHOLDS_INPUT = "thresholds"
EXIT_OUTPUT = "exit"
GRAPH_DIRECTORY = "graph"
GRAPH_BATCH = 1


# ---------------------------------------------------------------- ONNX (ONNX Runtime, TensorRT's parser)

def compose_onnx(stage_files: Sequence[Path], out: Path, input_shape: Sequence[int]) -> None:
    """Write the single graph composed from the stage ONNX files (stage k < N outputs logits, entropy, features;
    the last, logits) to `out`, for inputs of `input_shape` (C, H, W) at batch 1."""
    import onnx
    from onnx import TensorProto, helper

    models = [onnx.load(str(path)) for path in stage_files]
    stages = [_prefixed_stage(m.graph, k) for k, m in enumerate(models)]
    final = models[-1].graph.output[0].type.tensor_type
    logits_type, classes = final.elem_type, final.shape.dim[1].dim_value

    def typed(names: Sequence[str]) -> list[Any]:
        return [helper.make_tensor_value_info(names[0], logits_type, [GRAPH_BATCH, classes]),
                helper.make_tensor_value_info(names[1], TensorProto.INT64, [GRAPH_BATCH])]

    def leave_at(k: int, logits: str) -> tuple[list[Any], list[str]]:
        """The nodes giving exit k's outputs (its logits, its index), and their names."""
        names = [f"exit{k + 1}/{OUTPUT_NAME}", f"exit{k + 1}/{EXIT_OUTPUT}"]
        return [helper.make_node("Identity", [logits], [names[0]]),
                helper.make_node("Constant", [], [names[1]], value=helper.make_tensor("", TensorProto.INT64, [1], [k]))
                ], names

    def from_stage(k: int, features: str) -> tuple[list[Any], list[Any], list[str]]:
        """(nodes, initializers, output names) computing the outputs of the exit a sample takes, from the input
        `features` of stage k on."""
        nodes, initializers, names, entropy_type = stages[k]
        nodes = [_renamed_input(n, names["input"], features) for n in nodes]
        if k == len(stages) - 1:
            leave, outputs = leave_at(k, names[OUTPUT_NAME])
            return nodes + leave, initializers, outputs
        entropy, threshold, leaves = names["entropy"], f"stage{k + 1}/threshold", f"stage{k + 1}/leaves"
        if entropy_type != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [entropy], [f"{entropy}/float"], to=TensorProto.FLOAT))
            entropy = f"{entropy}/float"
        index = helper.make_tensor(f"stage{k + 1}/threshold_index", TensorProto.INT64, [], [k])
        leave, left = leave_at(k, names[OUTPUT_NAME])
        later_nodes, later_initializers, later = from_stage(k + 1, names["features"])
        outputs = [f"from_stage{k + 1}/{OUTPUT_NAME}", f"from_stage{k + 1}/{EXIT_OUTPUT}"]
        nodes += [helper.make_node("Gather", [THRESHOLDS_INPUT, index.name], [threshold], axis=0),
                  helper.make_node("Less", [entropy, threshold], [leaves]),
                  helper.make_node("If", [leaves], outputs,
                                   then_branch=helper.make_graph(leave, f"exit{k + 1}", [], typed(left)),
                                   else_branch=helper.make_graph(later_nodes, f"stage{k + 2}", [], typed(later),
                                                                 later_initializers))]
        return nodes, [*initializers, index], outputs

    nodes, initializers, outputs = from_stage(0, INPUT_NAME)
    nodes += [helper.make_node("Identity", [outputs[0]], [OUTPUT_NAME]),
              helper.make_node("Identity", [outputs[1]], [EXIT_OUTPUT])]
    input_type = models[0].graph.input[0].type.tensor_type.elem_type
    graph = helper.make_graph(
        nodes, "early_exit",
        [helper.make_tensor_value_info(INPUT_NAME, input_type, [GRAPH_BATCH, *input_shape]),
         helper.make_tensor_value_info(THRESHOLDS_INPUT, TensorProto.FLOAT, [len(stages) - 1])],
        typed([OUTPUT_NAME, EXIT_OUTPUT]), initializers)
    model = helper.make_model(graph, opset_imports=_merged_opsets(models),
                              ir_version=max(m.ir_version for m in models), producer_name="edgecnn early exit")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))


def _prefixed_stage(graph: Any, k: int) -> tuple[list[Any], list[Any], dict[str, str], int]:
    """Stage k's nodes and initializers with every name prefixed `stage{k+1}/`, the prefixed names of its input and
    outputs (by role: logits, entropy, features), and its entropy's element type."""
    import onnx.compose

    prefixed = onnx.compose.add_prefix_graph(graph, f"stage{k + 1}/")
    roles = dict(zip((OUTPUT_NAME, "entropy", "features"), (o.name for o in prefixed.output)))
    entropy_type = prefixed.output[1].type.tensor_type.elem_type if len(prefixed.output) > 1 else 0
    return list(prefixed.node), list(prefixed.initializer), {"input": prefixed.input[0].name, **roles}, entropy_type


def _renamed_input(node: Any, old: str, new: str) -> Any:
    for i, name in enumerate(node.input):
        if name == old:
            node.input[i] = new
    return node


def _merged_opsets(models: Sequence[Any]) -> list[Any]:
    from onnx import helper

    versions: dict[str, int] = {}
    for m in models:
        for opset in m.opset_import:
            versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    return [helper.make_opsetid(domain, version) for domain, version in versions.items()]


# ---------------------------------------------------------------- OpenVINO IR

def compose_openvino(stage_files: Sequence[Path], out: Path, input_shape: Sequence[int]) -> None:
    """Write the single graph composed from the stage IRs (.xml, weights beside) to `out` (.xml, .bin beside)."""
    import openvino as ov
    import openvino.opset8 as ops

    core = ov.Core()
    models = [core.read_model(str(path)) for path in stage_files]
    thresholds = ops.parameter([len(models) - 1], np.float32, name=THRESHOLDS_INPUT)

    def exit_index(k: int) -> Any:
        return ops.constant(np.array([k], dtype=np.int64))

    def from_stage(k: int, thresholds_value: Any) -> tuple[Any, list[Any]]:
        """(logits output, exit output) from stage k's parameter on; the parameters the body needs."""
        stage = models[k]
        produced = [r.input_value(0) for r in stage.get_results()]
        if k == len(models) - 1:
            return (produced[0], exit_index(k).output(0))
        logits, entropy, features = produced
        if entropy.get_element_type() != ov.Type.f32:
            entropy = ops.convert(entropy, ov.Type.f32).output(0)
        leaves = ops.less(entropy, ops.gather(thresholds_value, ops.constant(np.int64(k)), ops.constant(np.int64(0))))
        branch = ops.if_op(leaves.output(0))
        then_logits = ops.parameter(logits.get_partial_shape(), logits.get_element_type())
        then_body = ov.Model([ops.result(then_logits), ops.result(exit_index(k))], [then_logits], f"exit{k + 1}")
        next_stage = models[k + 1]
        else_thresholds = ops.parameter([len(models) - 1], np.float32)
        else_logits, else_exit = from_stage(k + 1, else_thresholds.output(0))
        else_body = ov.Model([ops.result(else_logits), ops.result(else_exit)],
                             [next_stage.get_parameters()[0], else_thresholds], f"stage{k + 2}")
        branch.set_then_body(then_body)
        branch.set_else_body(else_body)
        branch.set_input(logits, then_logits, None)
        branch.set_input(features, None, next_stage.get_parameters()[0])
        branch.set_input(thresholds_value, None, else_thresholds)
        return (branch.set_output(then_body.get_results()[0], else_body.get_results()[0]),
                branch.set_output(then_body.get_results()[1], else_body.get_results()[1]))

    logits, exit_ = from_stage(0, thresholds.output(0))
    main_input = models[0].get_parameters()[0]
    results = [ops.result(logits), ops.result(exit_)]
    for result, name in zip(results, (OUTPUT_NAME, EXIT_OUTPUT)):
        result.output(0).get_tensor().set_names({name})
    model = ov.Model(results, [main_input, thresholds], "early_exit")
    model.reshape({main_input.output(0): [GRAPH_BATCH, *input_shape]})
    ov.save_model(model, str(out), compress_to_fp16=False)


# ---------------------------------------------------------------- in an artifact

def graph_targets() -> dict[str, tuple[str, Callable[[Sequence[Path], Path, Sequence[int]], None], str]]:
    """Target → (the stage model format the graph is composed from, its composer, the graph's file name), as each
    backend declares it (`Backend.early_exit_graph`): {"onnx": ("onnx", compose_onnx, "model.onnx"), ...}."""
    from edgecnn.export.backends import BACKENDS

    return {b.target_name: b.early_exit_graph for b in BACKENDS.values() if b.early_exit_graph is not None}


def write_graph(target: str, stages: Sequence[dict[str, Any]], staging: Path, input_shape: Sequence[int],
                io_dtype: str) -> tuple[dict[str, Any], list[str]]:
    """Compose the single graph of a target's stages (the manifest's stage records) into `staging`/graph/: its
    manifest record and the files it wrote (relative to `staging`)."""
    fmt, compose, name = graph_targets()[target]
    (staging / GRAPH_DIRECTORY).mkdir()
    file = f"{GRAPH_DIRECTORY}/{name}"
    compose([staging / s["model_files"][fmt] for s in stages], staging / file, input_shape)
    files = [file, *([str(Path(file).with_suffix(".bin"))] if name.endswith(".xml") else [])]
    record = {"file": file, "model_files": {fmt: file},
              "input": {"name": INPUT_NAME, "shape": [GRAPH_BATCH, *input_shape], "dtype": io_dtype},
              "thresholds_input": {"name": THRESHOLDS_INPUT, "shape": [len(stages) - 1], "dtype": "float32"},
              "outputs": {"logits": OUTPUT_NAME, "exit": EXIT_OUTPUT},
              "composed_from": "the stage graphs as written (INT8: the quantized stages), later stages inside If "
                               "branches; batch 1 only (a larger batch runs through the stages)"}
    return record, files
