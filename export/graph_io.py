"""What every exported graph is called, and how an export fails, without importing torch or onnx.

The names here are shared by the export (`onnx_graph`, which re-exports them), the artifact contract (`manifest`),
the sessions that load artifacts back (`runtime`, the backend modules, the early-exit session) and the composer of
the single early-exit graph, so that loading an artifact never imports the exporter's machinery.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgecnn.errors import UserError

if TYPE_CHECKING:
    import onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


class ExportError(UserError):
    """A model cannot be exported to the requested target: say which part and what to do."""


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph in it (the bodies of If, Loop, Scan), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from graphs(sub)


def _tensors(graph: onnx.GraphProto) -> Iterator[Any]:
    """Every tensor stored in `graph` itself (not its subgraphs): initializers, sparse ones, attribute constants."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            yield from ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)


def external_data_locations(path: Path) -> list[str]:
    """Where the ONNX graph at `path` says its external data lies (paths relative to its folder, as written), without
    reading that data. A file that does not parse as ONNX names none: its runtime refuses it on load, in one line."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf decode errors: not a graph at all
        return []
    return sorted({entry.value for graph in graphs(model.graph) for tensor in _tensors(graph)
                   if tensor.data_location == onnx.TensorProto.EXTERNAL
                   for entry in tensor.external_data if entry.key == "location"})


__all__ = ["BATCH_DIM", "ExportError", "INPUT_NAME", "OUTPUT_NAME", "external_data_locations", "graphs"]
