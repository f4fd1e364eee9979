"""Every registered model exports and matches PyTorch on ONNX Runtime and OpenVINO: a new family needs no
new test code.

Parity bars (export/parity.py): FP32 max |Δlogit| ≤ 1e-4 × max |logit| (or 1e-4) and 100 % top-1
agreement on 64 inputs (real Fashion-MNIST test images for models trained on it); FP16 ≥ 99 % top-1
(canonical models without trained weights may miss it only for a diagnosed reason: float16 overflow
or near-tied random logits). Beyond the manifest's own verdict, every case re-runs the exported file
in its runtime on inputs made here and compares with logits of a PyTorch model built here.

Default suite: one export per family, FP32 ONNX (its smallest Fashion-MNIST model, else its smallest canonical
model at its smallest input size on 16 parity inputs), and LeNet-5 on every target and precision (OpenVINO FP16
on 128 parity inputs in dynamic batches). `slow` has the rest: every Fashion-MNIST model at FP32 and FP16 on
ONNX Runtime and OpenVINO, the smallest canonical models on OpenVINO (up to 12M parameters), full sizes and
the multi-exit (BranchyNet) models.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import edgecnn
from edgecnn.checkpoint import committed_checkpoint, load_checkpoint
from edgecnn.export import export_registered, read_manifest, runtime
from edgecnn.export.parity import default_samples
from edgecnn.export.source import reestimate_batchnorm

# Each family's smallest canonical model runs by default at its smallest input; up to this size on both
# targets, above it on ONNX only (an FP32 VGG artifact is 530 MB, converting it again to IR doubles the time).
BOTH_TARGETS_PARAMS = 12_000_000
# OpenVINO's shape inference rejects pooling windows larger than their input, which PyTorch's ceil-mode
# pooling accepts at GoogLeNet's smallest size (15 px); 32 px works for every ImageNet family.
MIN_IMAGENET_SIDE = 32
# Canonical models at their smallest input check parity on fewer (random) inputs: at 64 batch-1 runs,
# VGG's parity alone took 27 s on 2 cores.
REDUCED_SIZE_SAMPLES = 16
EARLY_EXIT_FAMILY = "branchynet"
EVERY_TARGET = "lenet5_fmnist"  # the default suite's model exported on every target and precision
OPENVINO_FP16 = {"dynamic_batch": True, "parity_samples": 128}
# The independent check: a few inputs, a bar looser than parity's own (which the manifest records).
CHECK_SAMPLES = 4
CHECK_RELATIVE = {"fp32": 1e-3, "fp16": 5e-2}


def _reduced_size(cfg: edgecnn.ModelConfig) -> tuple[int, int]:
    h, w = cfg.min_input_size or cfg.input_size[1:]
    floor = MIN_IMAGENET_SIDE if cfg.dataset == "imagenet" else 1
    return max(h, floor), max(w, floor)


def _smallest_canonical() -> dict[str, int]:
    """Each family's smallest canonical model (no Fashion-MNIST variant), with its parameter count."""
    smallest: dict[str, tuple[int, str]] = {}
    for name in edgecnn.list_models():
        cfg = edgecnn.get_config(name)
        if cfg.dataset != "fashion_mnist" and cfg.reference_params is not None:
            entry = (cfg.reference_params, name)
            smallest[cfg.family] = min(smallest.get(cfg.family, entry), entry)
    return {name: params for params, name in smallest.values()}


def _one_per_family(canonical: dict[str, int]) -> set[str]:
    """The default suite's model of each family: its smallest Fashion-MNIST model, else its smallest canonical."""
    chosen: dict[str, tuple[int, int, str]] = {}
    for name in edgecnn.list_models():
        cfg = edgecnn.get_config(name)
        if cfg.family == EARLY_EXIT_FAMILY or (cfg.dataset != "fashion_mnist" and name not in canonical):
            continue
        entry = (cfg.dataset != "fashion_mnist", edgecnn.count_params(edgecnn.create_model(name)), name)
        chosen[cfg.family] = min(chosen.get(cfg.family, entry), entry)
    return {name for _, _, name in chosen.values()}


def _cases() -> list:
    canonical = _smallest_canonical()
    default_suite = _one_per_family(canonical)
    cases = []

    def case(name: str, target: str, precision: str, fast: bool, suffix: str = "", **options: object) -> None:
        fast = fast and (name == EVERY_TARGET or (name in default_suite and target == "onnx" and precision == "fp32"))
        cases.append(pytest.param(name, target, precision, options, id=f"{name}-{target}-{precision}{suffix}",
                                  marks=() if fast else pytest.mark.slow))

    for name in edgecnn.list_models():
        cfg = edgecnn.get_config(name)
        # Multi-exit artifacts tune their exit thresholds at export (36–107 s each): tests/test_early_exit.py
        # covers them by default, here they are slow.
        small = cfg.dataset == "fashion_mnist" and cfg.family != EARLY_EXIT_FAMILY
        reduced = {} if cfg.dataset == "fashion_mnist" else {"input_size": _reduced_size(cfg),
                                                             "parity_samples": REDUCED_SIZE_SAMPLES}
        for target in ("onnx", "openvino"):
            both = target == "onnx" or canonical.get(name, BOTH_TARGETS_PARAMS + 1) <= BOTH_TARGETS_PARAMS
            case(name, target, "fp32", small or (name in canonical and both), **reduced)
            # OpenVINO's CPU plugin computes an FP16 IR in FP32 (the weights are what is halved), and its 512
            # default parity inputs took 15–40 s a model: 128 (99 % still allows one flip) in batches of 16
            case(name, target, "fp16", small, **reduced, **(OPENVINO_FP16 if target == "openvino" and small else {}))
        if reduced:
            for target in ("onnx", "openvino"):
                case(name, target, "fp32", False, "-full")
    return cases


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo_artifacts")


def _torch_model_built_here(manifest: dict) -> torch.nn.Module:
    """The model as the manifest says it was made, built without the export's code path."""
    model_section, weights = manifest["model"], manifest["model"]["weights"]
    with torch.random.fork_rng():
        torch.manual_seed(weights["seed"])
        model = edgecnn.create_model(model_section["name"])
    if weights["source"] == "checkpoint":
        assert Path(weights["path"]) == committed_checkpoint(model_section["name"]).absolute()
        load_checkpoint(model, weights["path"])
    else:
        bn = weights["batchnorm_reestimation"]
        reestimate_batchnorm(model, tuple(bn["input_size"]), bn["seed"], bn["batches"], bn["batch_size"])
    return model.eval()


def _check_independently(out: Path, manifest: dict, precision: str) -> None:
    shape = [CHECK_SAMPLES if isinstance(d, str) else d for d in manifest["input"]["shape"]]
    batch = shape[0]
    x = np.random.default_rng(7).standard_normal((CHECK_SAMPLES, *shape[1:])).astype(np.float32)
    model = _torch_model_built_here(manifest)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
        # Random-init deep nets amplify FP32 rounding (Inception v4: ~4e-4 of the logit scale vs FP64)
        noise = float(np.abs(model.double()(torch.from_numpy(x).double()).numpy() - expected).max()) \
            if manifest["model"]["weights"]["source"] == "random_init" else 0.0
    with runtime.load(out, **({"trunk": True} if "early_exit" in manifest else {})) as session:
        got = np.concatenate([session.run(x[i:i + batch]) for i in range(0, CHECK_SAMPLES, batch)])
    scale = float(np.abs(expected).max())
    assert np.isfinite(got).all() and got.shape == expected.shape
    assert np.abs(got - expected).max() <= max(CHECK_RELATIVE[precision] * scale, 4 * noise) + 1e-4, \
        f"{manifest['model']['name']}: runtime logits differ from PyTorch's by {np.abs(got - expected).max():.3g}"


@pytest.mark.parametrize("name,target,precision,options", _cases())
def test_export_parity(name: str, target: str, precision: str, options: dict, artifacts: Path) -> None:
    out = artifacts / f"{name}-{target}-{precision}-{len(options)}"
    try:
        result = export_registered(name, target, precision, out, **options)
        manifest = read_manifest(out)
        fold = next(p for p in manifest["passes"] if p["name"] == "fold_batchnorm")
        ops = manifest["target_info"]["onnx"]["ops"]
        assert "BatchNormalization" not in ops, f"{name}: BN left in the exported graph ({fold})"
        assert manifest["parity"], "parity was not checked"
        fmnist = edgecnn.get_config(name).dataset == "fashion_mnist"
        random_init = manifest["model"]["weights"]["source"] == "random_init"
        diagnosed_fp16 = False
        for check in manifest["parity"]:
            assert check["samples"] == options.get("parity_samples", default_samples(precision))
            if fmnist:
                assert check["inputs"].startswith("fashion_mnist test"), check["inputs"]
            if precision == "fp16" and random_init and not fmnist and not check["passed"]:
                # Random-init canonical nets can overflow float16 or have near-tied logits; parity
                # must then say so, and any other FP16 failure is a real one.
                assert "diagnosis" in check, f"{name} on {check['backend']} (fp16): {check}"
                diagnosed_fp16 = True
                continue
            assert check["passed"], f"{name} on {check['backend']} ({precision}): {check}"
        assert result.parity_passed == all(c["passed"] for c in manifest["parity"])
        if not diagnosed_fp16:
            _check_independently(out, manifest, precision)
    finally:
        shutil.rmtree(out, ignore_errors=True)
