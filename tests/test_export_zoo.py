"""Every registered model exports and matches PyTorch on ONNX Runtime and OpenVINO: a new family needs no
new test code.

Parity bars (export/parity.py): FP32 max |Δlogit| ≤ 1e-4 × max |logit| (or 1e-4) and 100 % top-1
agreement on 64 inputs (real Fashion-MNIST test images for models trained on it); FP16 ≥ 99 % top-1
(canonical models without trained weights may miss it only for a diagnosed reason: float16 overflow
or near-tied random logits).
Default suite: Fashion-MNIST-sized models at their own size (FP32 on both backends, FP16 on ONNX
Runtime), and each family's smallest canonical model at a reduced input size; the rest, FP16 on
OpenVINO and full sizes are `slow`.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edgecnn
from edgecnn.export import export_registered, read_manifest
from edgecnn.export.parity import default_samples

# By default each family's smallest canonical model runs (at a reduced size) if it is at most this big;
# the others, and full sizes, are slow: they write hundreds of MB per artifact.
FAST_CANONICAL_PARAMS = 12_000_000
# OpenVINO's shape inference rejects pooling windows larger than their input, which PyTorch's ceil-mode
# pooling accepts at GoogLeNet's smallest size (15 px); 32 px works for every ImageNet family.
MIN_IMAGENET_SIDE = 32


def _reduced_size(cfg: edgecnn.ModelConfig) -> tuple[int, int]:
    h, w = cfg.min_input_size or cfg.input_size[1:]
    floor = MIN_IMAGENET_SIDE if cfg.dataset == "imagenet" else 1
    return max(h, floor), max(w, floor)


def _fast_canonical() -> set[str]:
    smallest: dict[str, tuple[int, str]] = {}
    for name in edgecnn.list_models():
        cfg = edgecnn.get_config(name)
        if cfg.dataset != "fashion_mnist" and cfg.reference_params is not None:
            entry = (cfg.reference_params, name)
            smallest[cfg.family] = min(smallest.get(cfg.family, entry), entry)
    return {name for params, name in smallest.values() if params <= FAST_CANONICAL_PARAMS}


def _cases() -> list:
    fast_canonical = _fast_canonical()
    cases = []
    for name in edgecnn.list_models():
        cfg = edgecnn.get_config(name)
        small = cfg.dataset == "fashion_mnist"
        fast = small or name in fast_canonical
        size = None if small else _reduced_size(cfg)
        for target in ("onnx", "openvino"):
            cases.append(pytest.param(name, target, "fp32", size, id=f"{name}-{target}-fp32",
                                      marks=() if fast else pytest.mark.slow))
            cases.append(pytest.param(name, target, "fp16", size, id=f"{name}-{target}-fp16",
                                      marks=() if small and target == "onnx" else pytest.mark.slow))
        if not small:
            for target in ("onnx", "openvino"):
                cases.append(pytest.param(name, target, "fp32", None, id=f"{name}-{target}-fp32-full",
                                          marks=pytest.mark.slow))
    return cases


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo_artifacts")


@pytest.mark.parametrize("name,target,precision,size", _cases())
def test_export_parity(name: str, target: str, precision: str, size: tuple[int, int] | None,
                       artifacts: Path) -> None:
    out = artifacts / f"{name}-{target}-{precision}-{size}"
    try:
        result = export_registered(name, target, precision, out, input_size=size)
        manifest = read_manifest(out)
        assert manifest == result.manifest
        fold = next(p for p in manifest["passes"] if p["name"] == "fold_batchnorm")
        ops = manifest["target_info"]["onnx"]["ops"]
        assert "BatchNormalization" not in ops, f"{name}: BN left in the exported graph ({fold})"
        assert manifest["parity"], "parity was not checked"
        fmnist = edgecnn.get_config(name).dataset == "fashion_mnist"
        random_init = manifest["model"]["weights"]["source"] == "random_init"
        for check in manifest["parity"]:
            assert check["samples"] == default_samples(precision)
            if fmnist:
                assert check["inputs"].startswith("fashion_mnist test"), check["inputs"]
            if precision == "fp16" and random_init and not fmnist and not check["passed"]:
                # Random-init canonical nets can overflow float16 or have near-tied logits; parity
                # must then say so, and any other FP16 failure is a real one.
                assert "diagnosis" in check, f"{name} on {check['backend']} (fp16): {check}"
                continue
            assert check["passed"], f"{name} on {check['backend']} ({precision}): {check}"
    finally:
        shutil.rmtree(out, ignore_errors=True)
