"""edgecnn.export: from a trained nn.Module to deployable artifacts, and sessions that run them.

    from edgecnn.export import export_registered, read_manifest, runtime
    result = export_registered("resnet18_fmnist", target="onnx", precision="fp32", out="artifacts/r18")
    manifest = read_manifest(result.path)            # validated; hashes checked
    with runtime.load(result.path, threads=2) as session:
        logits = session.run(batch)                  # float32 N×C×H×W

Stages (each its own module): `fold` (conv-BN folding, a torch.fx transform), `onnx_graph` (ONNX
export + checks, FP16), `targets` (the target writers' base and registry), `tensorrt` (operator check,
build scripts), `parity` (artifact vs PyTorch), `manifest` (the artifact contract: schema, validation), `staging`
(atomic writes, destination checks), `runtime` (the sessions' base and registry; `open_model` opens a bare model
file), `quantizers` (the quantizers' base and registry), `quantize` (the INT8 pass), `passes` (the context the
passes share, the `Pass` base, the `Pipeline`, the manifest they make), `pipeline` (the default passes,
`export_model`), `early_exit` (the early-exit pass), `early_exit_thresholds` (the threshold search), `early_exit_session` (the
early-exit session). Each runtime is one module of `backends` (torch, onnxruntime,
openvino, tensorrt): its target writer, sessions, quantizer, recorded tools and availability, in
`backends.BACKENDS`. OpenVINO and TensorRT are imported only when used; the public names below load on first use,
so importing the runtime (or reading a manifest) imports neither torch nor the quantizers' libraries.

The package itself is callable: `edgecnn.export(model_or_name_or_path, target, precision, out, ...)` is
`edgecnn.export.api.export`, which takes a zoo name, a checkpoint file, an ONNX file or an nn.Module.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# Public name → the module holding it, imported on first use (PEP 562), so `import edgecnn.export.runtime` and
# reading a manifest do not import torch: the export passes (api, pipeline, fold) load only when asked for.
_PUBLIC = {"ArtifactError": "edgecnn.export.manifest", "read_manifest": "edgecnn.export.manifest",
           "ExportError": "edgecnn.export.graph_io", "FoldReport": "edgecnn.export.fold",
           "fold_batchnorm": "edgecnn.export.fold", "export": "edgecnn.export.api",
           "ExportContext": "edgecnn.export.passes", "ExportResult": "edgecnn.export.pipeline",
           "ParityError": "edgecnn.export.pipeline", "Pass": "edgecnn.export.passes",
           "Pipeline": "edgecnn.export.passes", "export_model": "edgecnn.export.pipeline",
           "export_registered": "edgecnn.export.pipeline", "TARGETS": "edgecnn.export.targets",
           "register_target": "edgecnn.export.targets"}
_SUBMODULES = ("runtime",)   # `from edgecnn.export import runtime` and `edgecnn.export.runtime` as before


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC, *_SUBMODULES})


class _CallableModule(types.ModuleType):
    """`edgecnn.export(...)` calls `export`, while `edgecnn.export` stays the package it always was."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from edgecnn.export.api import export

        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["ArtifactError", "ExportContext", "ExportError", "ExportResult", "FoldReport", "ParityError", "Pass",
           "Pipeline", "TARGETS", "export", "export_model", "export_registered", "fold_batchnorm", "read_manifest",
           "register_target", "runtime"]
