"""An ONNX file as the model to export: the user's own graph is the FP32 reference, nothing is re-exported.

A network edgecnn did not build enters as the ONNX file torch.onnx (or any exporter) wrote. What a checkpoint's
sidecar would say, the user states (`Description`: input size, mean, std, classes, data) or the file's
`metadata_props` do (keys `mean`, `std`, `class_names`/`classes`, `dataset`/`data`, `input_size`; stated values
win). The pipeline then runs as for a zoo model, with `OnnxModel` in the place of the PyTorch module:

- the reference every check compares with is the source ONNX itself, run by ONNX Runtime (unfolded);
- folding is ONNX Runtime's basic graph optimizer (constant folding, Conv+BatchNormalization/Add/Mul fusions:
  standard ONNX ops only, so every runtime reads the result), saved as the FP32 graph;
- each target writes that graph with edgecnn's input and output names (`input`, `logits`) and the export's
  batch; FP16 converts it with ONNX Runtime's float16 converter, INT8 quantizes it like any FP32 graph.

Parity is therefore "the artifact against the ONNX file it came from", in ONNX Runtime.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.export.manifest import sha256_file
from edgecnn.export.graph_io import BATCH_DIM, INPUT_NAME, OUTPUT_NAME, ExportError
from edgecnn.export.onnx_graph import check_onnx, op_histogram
from edgecnn.model_ref import Description, WeightsData, parse_classes, parse_floats
from edgecnn.registry import ModelConfig

# metadata_props keys read as a description, by the Description field they fill
METADATA_KEYS = {"mean": ("mean",), "std": ("std",), "classes": ("class_names", "classes", "labels"),
                 "data": ("dataset", "data"), "input_size": ("input_size",)}
FOLDED_BY = "onnxruntime GraphOptimizationLevel.ORT_ENABLE_BASIC (constant folding, Conv+BN/Add/Mul fusions)"
REFERENCE = "the source ONNX in ONNX Runtime (unfolded)"


def _load(path: Path) -> Any:
    import onnx

    try:
        onnx.checker.check_model(str(path))
        return onnx.load(str(path))
    except Exception as e:  # protobuf decode errors, checker errors: a file that is not a valid ONNX model
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is not a valid ONNX model ({first}); export it again with torch.onnx.export") from e


def metadata_description(model: Any) -> Description:
    """What the ONNX file's metadata_props say about it (see METADATA_KEYS); values that do not parse are refused."""
    props = {p.key: p.value for p in model.metadata_props}
    found: dict[str, Any] = {}
    for field_name, keys in METADATA_KEYS.items():
        key = next((k for k in keys if k in props), None)
        if key is None:
            continue
        value = props[key]
        try:
            if field_name in ("mean", "std"):
                found[field_name] = parse_floats(f"metadata_props {key}", value)
            elif field_name == "classes":
                found[field_name] = parse_classes(_json_list(value) if value.lstrip().startswith("[") else
                                                  value.split(","))  # never read as a file name
            elif field_name == "input_size":
                found[field_name] = tuple(int(v) for v in parse_floats(f"metadata_props {key}", value))
            else:
                found[field_name] = value
        except UserError as e:
            raise UserError(f"the ONNX file's metadata_props {key}={value[:60]!r} does not parse: {e}") from e
    return Description(**found)


def _json_list(text: str) -> list[str]:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise UserError(f"{text[:60]!r} is not a JSON list of names") from None
    return value


def _real_inputs(graph: Any) -> list[Any]:
    """The graph's inputs that are not initializers (old exporters list the weights as inputs too)."""
    weights = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in weights]


def _dims(value: Any) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]


class OnnxModel(nn.Module):
    """An ONNX graph run by ONNX Runtime behind an nn.Module's call: the pipeline's reference for an ONNX source.

    Its float initializers are (frozen) parameters, so parameter counts and the reference cache's weight digest
    see the graph's weights; `fold` returns the graph ONNX Runtime's basic optimizer makes of it; `write` stores it
    as a target's graph."""

    reference_label = REFERENCE

    def __init__(self, model: Any, config: ModelConfig, static_batch: int | None) -> None:
        super().__init__()
        from onnx import numpy_helper

        self.proto, self.config, self.static_batch = model, config, static_batch
        self.input_name = _real_inputs(model.graph)[0].name
        for k, tensor in enumerate(model.graph.initializer):
            array = numpy_helper.to_array(tensor)
            if np.issubdtype(array.dtype, np.floating):
                self.register_parameter(f"initializer_{k}", nn.Parameter(torch.from_numpy(array.copy()),
                                                                         requires_grad=False))
        self._session: Any = None

    def __deepcopy__(self, memo: dict) -> OnnxModel:
        return OnnxModel(copy.deepcopy(self.proto, memo), self.config, self.static_batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(self.proto.SerializeToString(), options,
                                                 providers=["CPUExecutionProvider"])
        return self._session.run(None, {self.input_name: batch})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from edgecnn.export.parity import run_in_batches

        batch = x.detach().float().contiguous().numpy()
        return torch.from_numpy(np.asarray(run_in_batches(self._run, batch, self.static_batch), dtype=np.float32))

    def fold(self) -> tuple[OnnxModel, dict[str, Any]]:
        """The graph as ONNX Runtime's basic optimizer leaves it, and what that folded."""
        import tempfile

        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="edgecnn-onnx-fold-") as tmp:
            out = Path(tmp) / "folded.onnx"
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(out)
            options.log_severity_level = 3
            ort.InferenceSession(self.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
            folded = onnx.load(str(out))
        before, after = (op_histogram(m)["BatchNormalization"] for m in (self.proto, folded))
        return OnnxModel(folded, self.config, self.static_batch), {
            "bn_folded": before - after, "bn_folded_into_producer": before - after, "bn_folded_into_consumer": 0,
            "bn_to_affine": 0, "bn_left_as_batchnormalization": after, "untraceable_submodules": [],
            "folded_by": FOLDED_BY, "nodes_before": len(self.proto.graph.node), "nodes_after": len(folded.graph.node)}

    def write(self, path: Path, batch: int, dynamic_batch: bool, half: bool, keep_io_types: bool,
              input_size: tuple[int, int, int]) -> dict[str, Any]:
        """Store the graph as a target's: edgecnn's input/output names, the export's batch and input size; FP16
        through ONNX Runtime's float16 converter. Returns the report `export_onnx` gives for a torch export."""
        import onnx

        if self.static_batch is not None and (dynamic_batch or batch != self.static_batch):
            asked = "--dynamic-batch" if dynamic_batch else f"--batch {batch}"
            raise ExportError(f"the ONNX file has a fixed batch of {self.static_batch}, so it cannot be exported with "
                              f"{asked}: export it again with a dynamic batch axis (torch.onnx.export dynamic_axes "
                              "or dynamic_shapes), or keep its batch")
        model = copy.deepcopy(self.proto)
        graph = model.graph
        _rename_value(graph, self.input_name, INPUT_NAME)
        _rename_value(graph, graph.output[0].name, OUTPUT_NAME)
        del graph.value_info[:]   # shapes inferred again for the export's batch and size
        first = BATCH_DIM if dynamic_batch else batch
        _set_dims(next(i for i in graph.input if i.name == INPUT_NAME), [first, *input_size])
        _set_dims(graph.output[0], [first, self.config.num_classes])
        if half:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            from onnxruntime.transformers.onnx_model import OnnxModel as Graph

            model = convert_float_to_float16(model, keep_io_types=keep_io_types, disable_shape_infer=True)
            Graph(model).topological_sort()  # the converter appends its input casts after their consumers
        onnx.save(model, str(path))
        checked = check_onnx(path)
        onnx.save(checked, str(path))
        opset = next(o.version for o in checked.opset_import if o.domain in ("", "ai.onnx"))
        return {"exporter": f"none: the source ONNX file, folded by {FOLDED_BY.split(' (')[0]}",
                "opset": opset, "dynamic_batch": dynamic_batch, "seconds_export": 0.0,
                "ops": dict(sorted(op_histogram(checked).items()))}


def _rename_value(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _set_dims(value: Any, dims: list[int | str]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        entry = shape.dim.add()
        if isinstance(d, str):
            entry.dim_param = d
        else:
            entry.dim_value = d


def load_onnx_source(path: Path | str, stated: Description | None = None,
                     ) -> tuple[OnnxModel, dict[str, Any], list[str]]:
    """The reference module of an ONNX file, its weight record (with its dataset) and notes for the manifest.

    One line for a file that is not a one-input NCHW float32 image classifier, or whose input size is unknown."""
    path = Path(path)
    model = _load(path)
    metadata = metadata_description(model)
    said = stated or Description()
    described = said.merged_over(metadata)
    from_metadata = [f for f in ("input_size", "mean", "std", "classes", "data")
                     if getattr(said, f) is None and getattr(metadata, f) is not None]
    inputs, outputs = _real_inputs(model.graph), list(model.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; edgecnn exports image "
                        "classifiers with one input (an N×C×H×W float32 batch) and one output (the logits)")
    if inputs[0].type.tensor_type.elem_type != 1:  # TensorProto.FLOAT
        raise UserError(f"{path}'s input {inputs[0].name!r} is not float32; edgecnn feeds float32 N×C×H×W images")
    dims = _dims(inputs[0])
    if len(dims) != 4:
        raise UserError(f"{path}'s input {inputs[0].name!r} has {len(dims)} dimensions; edgecnn feeds N×C×H×W")
    size = _input_size(path, dims, described.input_size)
    num_classes = _num_classes(path, model, outputs[0], size, dims[0])
    classes = described.classes
    if classes is not None and len(classes) != num_classes:
        raise UserError(f"{len(classes)} class names for {path}, whose output has {num_classes} classes; give one "
                        "name per output")
    notes = []
    if described.mean is None or described.std is None:
        if described.data is not None:
            raise UserError(f"say how {path}'s inputs are normalised before scoring it on data: --mean and --std "
                            "(mean=, std= in Python; on the [0, 1] scale) or metadata_props mean/std")
        notes.append("no mean/std stated for the ONNX file: its inputs are taken as pixels / 255 (mean 0, std 1)")
    data = None
    if described.data is not None:
        data = WeightsData.named(described.data, origin="ONNX metadata" if "data" in from_metadata else "stated")
    if from_metadata:
        notes.append(f"read from the ONNX file's metadata_props: {', '.join(from_metadata)}")
    config = ModelConfig(
        name=path.stem, family="onnx", input_size=size, num_classes=num_classes,
        mean=described.mean or (0.0,) * size[0], std=described.std or (1.0,) * size[0],
        dataset=data.name if data else "unknown", class_names=classes,
        description=f"the ONNX file {path.name}")
    weights = {"source": "onnx", "path": str(path.absolute()), "sha256": sha256_file(path),
               "dataset": data.record() if data else None}
    return OnnxModel(model, config, dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None), weights, notes


def _input_size(path: Path, dims: list[Any], stated: tuple[int, ...] | None) -> tuple[int, int, int]:
    """(C, H, W): the graph's, with what the user stated filling symbolic dimensions; a contradiction is refused."""
    graph = [d if isinstance(d, int) and d > 0 else None for d in dims[1:]]
    if stated is not None:
        stated = tuple(stated)
        full = stated if len(stated) == 3 else (graph[0], *stated)
        clash = [(g, s) for g, s in zip(graph, full) if g is not None and s is not None and g != s]
        if clash:
            raise UserError(f"the input size stated for {path} ({'×'.join(map(str, full))}) contradicts the graph's "
                            f"fixed {'×'.join(str(g or '?') for g in graph)}: state the graph's size or leave it out")
        graph = [g if g is not None else s for g, s in zip(graph, full)]
    if None in graph:
        raise UserError(f"{path}'s input is {'×'.join(str(d) for d in dims)} with symbolic sizes: state them with "
                        "--input-size HxW (input_size=(C, H, W) in Python) or metadata_props input_size")
    return tuple(graph)  # type: ignore[return-value]


def _num_classes(path: Path, model: Any, output: Any, size: tuple[int, int, int], batch: Any) -> int:
    """The output's class count: its last dimension, or one run on zeros when that is symbolic."""
    dims = _dims(output)
    if len(dims) != 2:
        raise UserError(f"{path}'s output has {len(dims)} dimensions; edgecnn exports classifiers whose output is "
                        "N×classes logits")
    if isinstance(dims[1], int) and dims[1] > 0:
        return dims[1]
    import onnxruntime as ort

    rows = batch if isinstance(batch, int) and batch > 0 else 1
    feed = {_real_inputs(model.graph)[0].name: np.zeros((rows, *size), np.float32)}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return int(session.run(None, feed)[0].shape[1])


__all__ = ["METADATA_KEYS", "OnnxModel", "load_onnx_source", "metadata_description"]
