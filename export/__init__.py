"""edgecnn.export: from a trained nn.Module to deployable artifacts, and sessions that run them.

    from edgecnn.export import export_registered, read_manifest, runtime
    result = export_registered("resnet18_fmnist", target="onnx", precision="fp32", out="artifacts/r18")
    manifest = read_manifest(result.path)            # validated; hashes checked
    with runtime.load(result.path, threads=2) as session:
        logits = session.run(batch)                  # float32 N×C×H×W

Stages (each its own module): `fold` (conv-BN folding, a torch.fx transform), `onnx_graph` (ONNX
export + checks, FP16), `targets` (the target writers' base and registry), `tensorrt` (operator check,
build scripts), `parity` (artifact vs PyTorch), `manifest` (the artifact contract, atomic writes),
`runtime` (the sessions' base and registry), `quantize` (the quantizers' base, registry and INT8 pass),
`pipeline` (the passes, `export_model`). Each runtime is one module of `backends` (torch, onnxruntime,
openvino, tensorrt): its target writer, sessions, quantizer, recorded tools and availability, in
`backends.BACKENDS`. OpenVINO and TensorRT are imported only when used.

The package itself is callable: `edgecnn.export(model_or_name_or_path, target, precision, out, ...)` is
`edgecnn.export.api.export`, which takes a zoo name, a checkpoint file, an ONNX file or an nn.Module.
"""
import sys
import types
from typing import Any

from edgecnn.export import runtime
from edgecnn.export.api import export
from edgecnn.export.fold import FoldReport, fold_batchnorm
from edgecnn.export.manifest import ArtifactError, read_manifest
from edgecnn.export.onnx_graph import ExportError
from edgecnn.export.pipeline import (ExportContext, ExportResult, ParityError, Pass, Pipeline, export_model,
                                     export_registered)
from edgecnn.export.targets import TARGETS, register_target


class _CallableModule(types.ModuleType):
    """`edgecnn.export(...)` calls `export`, while `edgecnn.export` stays the package it always was."""

    def __call__(self, *args: Any, **kwargs: Any) -> ExportResult:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["ArtifactError", "ExportContext", "ExportError", "ExportResult", "FoldReport", "ParityError", "Pass",
           "Pipeline", "TARGETS", "export", "export_model", "export_registered", "fold_batchnorm", "read_manifest",
           "register_target", "runtime"]
