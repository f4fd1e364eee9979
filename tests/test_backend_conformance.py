"""What every backend must pass (Polygraphy's per-backend runner tests): one test parametrized over the backend
registry, on the real runtimes only. A backend not available here says why in one line and is skipped with it.

A new runtime is one module in export/backends/; these tests take it up without being edited."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecnn.export import export_registered, read_manifest, runtime
from edgecnn.export.backends import BACKENDS, Backend, module_names, recorded_tools, target_runtimes
from edgecnn.export.quantizers import QUANTIZERS
from edgecnn.export.source import DEFAULT_SEED, load_source_model
from edgecnn.export.targets import TARGETS

MODEL = "lenet5_fmnist"
MAX_ABS_DIFF = 1e-4   # FP32 logits against the eager PyTorch model
BATCH = 4


def _artifact_target(backend: Backend) -> str:
    """The target to export for `backend`: its own, or for the reference (which runs any), the first target."""
    return backend.target_name or next(iter(TARGETS))


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_declaration(name: str) -> None:
    """A backend's module is named as it, and files its target, sessions and quantizers in their registries."""
    backend = BACKENDS[name]
    module = sys.modules[f"edgecnn.export.backends.{name}"]
    assert backend.sessions and backend.tools and backend.description
    for session in backend.sessions:
        assert session.__module__ == module.__name__ and runtime.BACKENDS[session.name] is session
    if backend.target is not None:
        assert backend.target.__module__ == module.__name__ and type(TARGETS[backend.target_name]) is backend.target
        assert backend.precisions == backend.target.precisions and "fp32" in backend.precisions
    for quantizer in backend.quantizers:
        assert quantizer.__module__ == module.__name__ and quantizer.target == backend.target_name
        assert type(QUANTIZERS[quantizer.name]) is quantizer
    if backend.quantizers:
        assert type(backend.quantizer) is backend.quantizers[0]


@pytest.mark.parametrize("name", list(BACKENDS))
def test_backend_runs_its_artifact(name: str, tmp_path: Path) -> None:
    backend = BACKENDS[name]
    reason = backend.unavailable()
    if reason is not None:
        assert isinstance(reason, str) and reason.strip() and "\n" not in reason, reason
        pytest.skip(f"{name} is not available here: {reason}")
    result = export_registered(MODEL, _artifact_target(backend), "fp32", tmp_path / name, dynamic_batch=True,
                               parity_samples=8)
    manifest = read_manifest(result.path)
    installed = backend.tool_versions()   # the manifest records the versions of the backend's tools
    assert installed and None not in installed.values()
    assert {tool: manifest["tools"].get(tool) for tool in installed} == installed

    model, _ = load_source_model(MODEL, None, DEFAULT_SEED)
    batch = np.random.default_rng(0).standard_normal((BATCH, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(batch)).numpy()
    for session_name in backend.session_names:
        with runtime.load(result.path, backend=session_name, threads=1) as session:
            logits = session.run(batch)
            assert session.info()["backend"] == session_name
            assert session.executed_precision == "fp32"
        assert logits.shape == expected.shape == (BATCH, 10) and logits.dtype == np.float32
        assert float(np.abs(logits - expected).max()) <= MAX_ABS_DIFF, session_name


def test_what_is_derived_from_the_registry() -> None:
    """Bench's runtimes and their default, the manifest's tools and the target → runtime mapping are the
    registry's, the eager reference first."""
    from edgecnn.benchmarks.settings import RUNTIMES
    from edgecnn.benchmarks.models import TARGET_RUNTIMES
    from edgecnn.cli.bench import DEFAULT_RUNTIMES
    from edgecnn.export.passes import TOOLS

    assert list(BACKENDS) == module_names() == list(RUNTIMES) == DEFAULT_RUNTIMES.split(",")
    assert list(BACKENDS)[0] == "torch" and BACKENDS["torch"].target is None
    assert {n: (r.target, r.unavailable) for n, r in RUNTIMES.items()} == \
        {b.name: (b.target_name, b.unavailable) for b in BACKENDS.values()}
    assert TARGET_RUNTIMES == target_runtimes() == {"onnx": "onnxruntime", "openvino": "openvino",
                                                    "tensorrt": "tensorrt"}
    assert set(recorded_tools()) <= set(TOOLS)
    assert sorted(b.target_name for b in BACKENDS.values() if b.target is not None) == sorted(TARGETS)
