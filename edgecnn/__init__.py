"""edgecnn: which architecture, at which precision, on which runtime, meets the latency budget.

The public names load on first use (PEP 562), so `edgecnn --help` and other light imports of the
package do not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
ZOO_VERSION = "1"

_PUBLIC = {"UserError": "edgecnn.errors", "count_params": "edgecnn.layers", "ModelConfig": "edgecnn.registry",
           "create_model": "edgecnn.registry", "get_config": "edgecnn.registry", "list_models": "edgecnn.registry",
           "register_model": "edgecnn.registry", "count_macs": "edgecnn.stats"}


def __getattr__(name: str) -> Any:
    if name == "export":  # the export stage, imported on first use; callable: edgecnn.export(model, ...)
        return importlib.import_module("edgecnn.export")
    if name == "bench":  # edgecnn.bench(models, out, ...): `edgecnn bench` in Python
        return importlib.import_module("edgecnn.benchmarks.harness").bench
    if name == "quantize":  # edgecnn.quantize(model_file, data, backend=...): an FP32 model file to INT8
        return importlib.import_module("edgecnn.export.quantize_api").quantize
    if name not in _PUBLIC:
        raise AttributeError(f"module 'edgecnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC, "export", "bench", "quantize"])


__all__ = ["ModelConfig", "UserError", "ZOO_VERSION", "bench", "count_macs", "count_params", "create_model", "export",
           "get_config", "list_models", "quantize", "register_model", "__version__"]
