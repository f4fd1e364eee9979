"""Runtime sessions: one interface over torch / onnxruntime / openvino, and every input mistake is a clear
error before the runtime sees it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgecnn.errors import UserError
from edgecnn.export import export_model, export_registered, runtime
from edgecnn.export.runtime import BACKENDS
from edgecnn.registry import create_model

MODEL = "resnet18_fmnist"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runtime")
    return {
        "dynamic_onnx": export_registered(MODEL, "onnx", "fp32", root / "dyn", dynamic_batch=True,
                                          parity_samples=8).path,
        "static_openvino": export_registered(MODEL, "openvino", "fp32", root / "ov", batch=2, parity_samples=8).path,
    }


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def test_backends_registered_in_one_place() -> None:
    assert set(BACKENDS) == {"torch", "onnxruntime", "openvino", "tensorrt"}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "torch"])
def test_every_backend_agrees_with_the_reference(artifacts: dict[str, Path], backend: str) -> None:
    x = _batch(3)
    with runtime.load(artifacts["dynamic_onnx"], backend="torch") as reference:
        expected = reference.run(x)
    with runtime.load(artifacts["dynamic_onnx"], backend=backend, threads=1) as session:
        got = session.run(x)
        assert session.info()["backend"] == backend
    assert got.shape == (3, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_dynamic_batch_accepts_any_batch(artifacts: dict[str, Path]) -> None:
    with runtime.load(artifacts["dynamic_onnx"]) as session:
        assert [session.run(_batch(n)).shape[0] for n in (1, 5, 7)] == [1, 5, 7]


def test_openvino_session_options(artifacts: dict[str, Path]) -> None:
    with runtime.load(artifacts["static_openvino"], threads=1, performance_hint="throughput") as session:
        info = session.info()
        assert (info["performance_hint"], info["threads"], info["inference_precision"]) == ("THROUGHPUT", 1, "f32")
        assert session.run(_batch(2)).shape == (2, 10)
    with pytest.raises(UserError, match="LATENCY or THROUGHPUT"):
        runtime.load(artifacts["static_openvino"], performance_hint="fast")


@pytest.mark.parametrize("batch,message", [
    (_batch(2).astype(np.float64), r"float64.*astype\(np.float32\)"),
    (_batch(2).transpose(0, 2, 3, 1), r"looks like NHWC.*transpose\(0, 3, 1, 2\)"),
    (_batch(1)[0], r"no batch axis.*batch\[None\]"),
    (_batch(2)[:, :, :20], "does not match the model's 2×1×28×28"),
    (_batch(2)[None], "5 dimensions"),
    (torch.zeros(2, 1, 28, 28), r"numpy array.*tensor.numpy\(\)"),
    (_batch(3), "exported for batch 2: export with --batch 3 or --dynamic-batch"),
])
def test_bad_input_is_a_clear_error(artifacts: dict[str, Path], batch, message: str) -> None:
    with runtime.load(artifacts["static_openvino"]) as session:
        with pytest.raises(UserError, match=message) as info:
            session.run(batch)
        assert "\n" not in str(info.value)
        assert session.run(_batch(2)).shape == (2, 10), "a rejected input must leave the session usable"


def test_session_lifecycle_and_backend_errors(artifacts: dict[str, Path]) -> None:
    session = runtime.load(artifacts["dynamic_onnx"])
    session.close()
    with pytest.raises(UserError, match="closed"):
        session.run(_batch(1))
    with pytest.raises(UserError, match="unknown backend 'trt'.*onnxruntime"):
        runtime.load(artifacts["dynamic_onnx"], backend="trt")
    with pytest.raises(UserError, match="reads onnx models.*has openvino"):
        runtime.load(artifacts["static_openvino"], backend="onnxruntime")
    with pytest.raises(UserError, match="threads must be at least 1"):
        runtime.load(artifacts["dynamic_onnx"], threads=0)
    with pytest.raises(UserError, match="tensorrt"):
        runtime.load(artifacts["dynamic_onnx"], backend="tensorrt")


def test_torch_backend_needs_a_rebuildable_source(tmp_path: Path) -> None:
    model = create_model("lenet5_fmnist")
    path = export_model(model, "onnx", "fp32", tmp_path / "mem", parity_samples=4).path
    with runtime.load(path) as session:
        assert session.run(_batch(1)).shape == (1, 10)
    with pytest.raises(UserError, match="in-memory model"):
        runtime.load(path, backend="torch")
