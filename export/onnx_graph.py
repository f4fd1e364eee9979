"""ONNX export and checks: one graph from a folded module, checked, shape-inferred, constant-folded.

Two torch exporters are supported. The TorchScript exporter (`torch.onnx.export(..., dynamo=False)`)
exports a zoo model 10-30× faster than the torch.export-based one on these machines and writes
opset 17 (TensorRT 8.x on JetPack 5 reads nothing newer); `exporter="dynamo"` uses torch.export
(opset ≥ 18, the onnxscript optimizer). The default, "auto", tries the first and falls back to the
second. Both fold constants.

FP16 graphs keep float32 inputs and outputs unless asked: the module runs in half behind a cast at
each end, so weights and compute are half and callers feed the same arrays as for FP32.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx
import torch
import torch.nn as nn

from edgecnn.errors import UserError
# The graph's names and ExportError live in graph_io (no torch), so sessions and manifests use them without this.
from edgecnn.export.graph_io import BATCH_DIM, INPUT_NAME, OUTPUT_NAME, ExportError
from edgecnn.export.graph_io import graphs as _graphs
from edgecnn.quiet import silenced

DEFAULT_OPSET = 19
MIN_OPSET = 17
EXPORTERS = ("auto", "torchscript", "dynamo")
DYNAMO_MIN_OPSET = 18


class HalfPrecision(nn.Module):
    """Runs `module` in float16; the ends cast unless `keep_io_types` is False."""

    def __init__(self, module: nn.Module, keep_io_types: bool = True) -> None:
        super().__init__()
        self.module = copy.deepcopy(module).half()
        self.keep_io_types = keep_io_types

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if not self.keep_io_types:
            return self.module(x)
        out = self.module(x.half())
        return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx prints progress, deprecation notes and (from C++, on failure) whole IR graphs to stdout;
    keep the CLI readable: the failure itself is raised as an ExportError."""
    sys.stdout.flush()
    saved_fd = os.dup(1)
    try:
        with silenced("torch.onnx", stdout=True), open(os.devnull, "w") as devnull, warnings.catch_warnings():
            os.dup2(devnull.fileno(), 1)
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith(("Torch IR graph", "graph(")):
            return f"{type(e).__name__}: {line.strip()}"
    return type(e).__name__


def _run_exporter(module: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool,
                  exporter: str, output_names: Sequence[str]) -> None:
    min_opset = DYNAMO_MIN_OPSET if exporter == "dynamo" else MIN_OPSET
    if not min_opset <= opset <= onnx.defs.onnx_opset_version():
        raise UserError(f"opset {opset} is outside what the {exporter} exporter writes "
                        f"({min_opset}..{onnx.defs.onnx_opset_version()}); pick one in that range")
    try:
        with _quiet_exporter(), torch.no_grad():
            if exporter == "torchscript":
                axes = {name: {0: BATCH_DIM} for name in (INPUT_NAME, *output_names)} if dynamic_batch else None
                torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=list(output_names), dynamic_axes=axes,
                                  do_constant_folding=True)
            else:
                shapes = ({0: torch.export.Dim(BATCH_DIM)},) if dynamic_batch else None
                if dynamic_batch and example.shape[0] == 1:
                    example = example.expand(2, *example.shape[1:]).contiguous()  # torch.export pins size-1 dims
                torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=list(output_names), dynamic_shapes=shapes,
                                  external_data=False, optimize=True)
    except UserError:
        raise
    except Exception as e:  # the exporters raise many types; each means "this model does not export"
        raise ExportError(f"torch.onnx ({exporter}) could not export the model: {_first_line(e)}") from e


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, *, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, exporter: str = "auto",
                output_names: Sequence[str] = (OUTPUT_NAME,)) -> dict[str, Any]:
    """Write `module` (eval mode) as ONNX at `path`, check it fully and store the shape-inferred graph.

    `output_names` names the graph's outputs in order (a BranchyNet stage returns several).

    `exporter="auto"` tries the TorchScript exporter and falls back to torch.export's for graphs the
    former cannot express (e.g. adaptive pooling to a size that does not divide its input).
    """
    if exporter not in EXPORTERS:
        raise UserError(f"unknown ONNX exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    module = module.eval()
    started = time.perf_counter()
    report: dict[str, Any] = {}
    if exporter == "auto":
        try:
            _run_exporter(module, example, path, opset, dynamic_batch, "torchscript", output_names)
            exporter = "torchscript"
        except ExportError as e:
            if opset < DYNAMO_MIN_OPSET:
                raise
            report["torchscript_failed"] = str(e)
            exporter = "dynamo"
            _run_exporter(module, example, path, opset, dynamic_batch, exporter, output_names)
    else:
        _run_exporter(module, example, path, opset, dynamic_batch, exporter, output_names)
    exported = time.perf_counter() - started
    model = check_onnx(path)
    if len(model.graph.input) != 1 or len(model.graph.output) != len(output_names):
        raise ExportError(f"the exported graph has {len(model.graph.input)} inputs and {len(model.graph.output)} "
                          f"outputs, not 1 and {len(output_names)}; an edgecnn model takes one image batch and "
                          "returns logits only in eval mode")
    if dynamic_batch:
        _name_batch_dim(model)
    onnx.save(model, str(path))
    opset_written = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset_written != opset:
        raise ExportError(f"the {exporter} exporter wrote opset {opset_written}, not the requested {opset}; "
                          f"use --opset {opset_written}")
    return {"exporter": exporter, **report, "opset": opset_written, "dynamic_batch": dynamic_batch,
            "seconds_export": round(exported, 3), "ops": dict(sorted(op_histogram(model).items()))}


def check_onnx(path: Path) -> onnx.ModelProto:
    """Full checker pass and strict shape inference; returns the model with inferred shapes."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported ONNX graph {path.name} fails onnx.checker: {_first_line(e)}") from e
    except Exception as e:  # protobuf decode errors: a corrupt or truncated file
        raise ExportError(f"{path} is not a readable ONNX model ({_first_line(e)}); the file is corrupt or "
                          "truncated: export again") from e


def _name_batch_dim(model: onnx.ModelProto) -> None:
    """Inputs and outputs share one symbolic batch dimension named 'batch', whichever exporter ran."""
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = BATCH_DIM


def op_histogram(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
                   for graph in _graphs(model.graph) for node in graph.node)
