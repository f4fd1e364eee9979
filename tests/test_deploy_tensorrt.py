"""The TensorRT path made complete: batch profiles in both build scripts, precision flags, the engine record and
its check, the operator check naming nodes, and the files the build adds. Engine builds need TensorRT and a GPU
(marked `tensorrt`); everything else runs here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import edgecnn
from edgecnn.export import ExportError, export_model, export_registered, read_manifest, runtime, tensorrt
from edgecnn.export.manifest import ArtifactError
from edgecnn.export.tensorrt_build import ENGINE_RECORD, EngineMismatch, check_engine_record, engine_record

MODEL = "lenet5_fmnist"
ORIN = {"gpu": "Orin", "compute_capability": "8.7"}


@pytest.fixture(scope="module")
def dynamic_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_registered(MODEL, "tensorrt", "fp32", tmp_path_factory.mktemp("trt") / "a", dynamic_batch=True,
                             parity_samples=8).path


def test_trtexec_script_has_a_min_opt_max_profile_and_refuses_batch_above_max(dynamic_artifact: Path) -> None:
    script = (dynamic_artifact / "build_engine.sh").read_text()
    for piece in ('"--minShapes=input:${MIN_BATCH}x1x28x28"', '"--optShapes=input:${BATCH}x1x28x28"',
                  '"--maxShapes=input:${MAX_BATCH}x1x28x28"', "BATCH=${BATCH:-1}", "--timingCacheFile=timing.cache",
                  "engine.json", "Compute Capability", "TensorRT version"):
        assert piece in script
    assert 'typing=weak; set -- --onnx=model.onnx "$@"' in script and "--int8" not in script  # fp32 artifact
    assert subprocess.run(["bash", "-n", str(dynamic_artifact / "build_engine.sh")]).returncode == 0
    refused = subprocess.run(["sh", str(dynamic_artifact / "build_engine.sh")], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin", "BATCH": "8", "MAX_BATCH": "4"})
    assert refused.returncode == 2 and "BATCH 8 is larger than MAX_BATCH 4" in refused.stderr
    assert not (dynamic_artifact / "model.plan").exists()


@pytest.mark.parametrize("precision, flags", [("fp32", []), ("fp16", ["--fp16"]), ("int8", ["--int8", "--fp16"])])
def test_trtexec_precision_flags(precision: str, flags: list[str]) -> None:
    """Precision flags for weakly typed TensorRT (10.3-10.11) only; 10.12+ and 11 take the typed graph."""
    script = tensorrt.trtexec_script("model.onnx", "input", [1, 1, 28, 28], precision, typed_onnx_name="typed.onnx")
    assert f'typing=weak; set -- {" ".join(["--onnx=model.onnx", *flags])} "$@"' in script
    assert 'typing=strong; set -- --onnx=typed.onnx --stronglyTyped "$@"' in script
    assert "--minShapes" not in script  # a static batch has no profile


def test_build_engine_py_validates_its_profile_before_tensorrt(dynamic_artifact: Path) -> None:
    script = [sys.executable, str(dynamic_artifact / "build_engine.py")]
    help_text = subprocess.run(script + ["--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--batch", "--max-batch", "--dla-core", "--timing-cache", "--workspace-mib"):
        assert option in help_text
    for args, says in ((["--batch", "8", "--max-batch", "4"], "--batch 8 is larger than --max-batch 4"),
                       (["--dla-core", "-1"], "must be 0 or a positive integer"),
                       (["--workspace-mib", "0"], "must be a positive integer")):
        run = subprocess.run(script + args, capture_output=True, text=True)
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr
    source = (dynamic_artifact / "build_engine.py").read_text()
    for api in ("BuilderFlag.INT8", "BuilderFlag.GPU_FALLBACK", "DeviceType.DLA", "create_timing_cache",
                "profile.set_shape(input_name, *profile_shapes)"):
        assert api in source


def test_engine_record_is_checked_before_an_engine_is_used(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")
    with pytest.raises(EngineMismatch, match="has no readable engine.json beside it"):
        check_engine_record(plan, "10.3.0", ORIN)
    (tmp_path / ENGINE_RECORD).write_text(json.dumps(engine_record("10.3.0", ORIN, builder="test")))
    assert check_engine_record(plan, "10.3.0", ORIN)["gpu"] == "Orin"
    with pytest.raises(EngineMismatch, match=r"tensorrt '10.3.0' \(this device: '10.7.0'\).*rebuild it here"):
        check_engine_record(plan, "10.7.0", ORIN)
    with pytest.raises(EngineMismatch, match=r"gpu 'Orin' \(this device: 'NVIDIA H100'\), compute_capability "
                                             r"'8.7' \(this device: '9.0'\)"):
        check_engine_record(plan, "10.3.0", {"gpu": "NVIDIA H100", "compute_capability": "9.0"})


class _Det(nn.Module):
    """A graph with an operator TensorRT's ONNX parser lacks (Det)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(self.conv(x)[:, :, :2, :2]).reshape(x.shape[0], 4)


def test_operator_check_names_the_node_and_the_way_out(tmp_path: Path) -> None:
    model = _Det()
    model.config = edgecnn.get_config(MODEL)
    with pytest.raises(ExportError) as raised:
        export_model(model, "tensorrt", "fp32", tmp_path / "a", input_size=(6, 6))
    message = str(raised.value)
    assert "does not support Det (node '" in message and "(Det))" in message
    assert "plugin" in message and "--target onnx" in message
    assert not (tmp_path / "a").exists()
    assert "--precision int8" in tensorrt.way_out(["QLinearConv"])


def test_files_the_engine_build_adds_do_not_block_force(dynamic_artifact: Path, tmp_path: Path) -> None:
    """setup.sh / build_engine.* add model.plan, engine.json, timing.cache and build_engine.log: still edgecnn's."""
    import shutil

    out = tmp_path / "a"
    shutil.copytree(dynamic_artifact, out)
    for name in ("model.plan", "engine.json", "timing.cache", "build_engine.log"):
        (out / name).write_bytes(b"written by the build")
    read_manifest(out)
    export_registered(MODEL, "tensorrt", "fp32", out, parity_samples=8, overwrite=True)
    assert not (out / "timing.cache").exists() and not (out / "build_engine.log").exists()


# ---------------------------------------------------------------- where TensorRT and a GPU exist

needs_gpu = pytest.mark.skipif(not tensorrt.engine_buildable_here()[0], reason="needs tensorrt and a CUDA GPU")


@pytest.mark.tensorrt
@needs_gpu
def test_dynamic_engine_has_its_profile_and_record(tmp_path: Path) -> None:
    import numpy as np

    m = export_registered(MODEL, "tensorrt", "fp16", tmp_path / "a", dynamic_batch=True, parity_samples=16).manifest
    assert {"model.plan", ENGINE_RECORD} <= set(m["files"])
    record = json.loads((tmp_path / "a" / ENGINE_RECORD).read_text())
    assert record["build"]["profile"] == [[1, 1, 28, 28], [1, 1, 28, 28], [32, 1, 28, 28]]
    assert record["gpu"] == torch.cuda.get_device_name()
    with runtime.load(tmp_path / "a", backend="tensorrt") as session:
        assert session.run(np.zeros((8, 1, 28, 28), np.float32)).shape == (8, 10)


@pytest.mark.tensorrt
@needs_gpu
def test_session_refuses_an_engine_built_elsewhere(tmp_path: Path) -> None:
    import shutil

    export_registered(MODEL, "tensorrt", "fp16", tmp_path / "a", parity_samples=16)
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy)
    record = json.loads((copy / ENGINE_RECORD).read_text())
    record["gpu"] = "Orin"
    (copy / ENGINE_RECORD).write_text(json.dumps(record))
    m = json.loads((copy / "manifest.json").read_text())  # the session's own check, not the manifest's hashes
    with pytest.raises(ArtifactError, match="was built for gpu 'Orin'"):
        runtime.open_session(copy, m, "tensorrt")
