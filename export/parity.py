"""Parity: does an artifact compute what the PyTorch model computes?

Inputs are the first N test images of the dataset the weights travel with (`edgecnn.model_ref.WeightsData`:
the checkpoint sidecar's record, the data stated for an ONNX file or module, or --data; Fashion-MNIST for the
zoo's committed weights), preprocessed as the manifest says, and seeded standard-normal tensors, said as such,
when there is none or it is not readable here. A
backend passes at FP32 when the largest logit difference is within 1e-4 × max |logit| (or 1e-4,
whichever is larger) and every top-1 class agrees on 64 inputs; at FP16 when ≥ 99 % of top-1 classes
agree on 512 inputs (enough for the 1 % to be more than zero flips).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from edgecnn.data import preprocess
from edgecnn.errors import DatasetError, UserError
from edgecnn.model_ref import WeightsData, aligned_labels
from edgecnn.registry import ModelConfig

PARITY_SAMPLES = 64
# A top-1 bar below 100 % needs enough samples for one flip to fit under it: 99 % of 64 samples is all
# 64, so a single near-tie flipped by half precision would fail a trained model. 512 allows 5.
DEFAULT_SAMPLES = {"fp32": PARITY_SAMPLES, "fp16": 512, "int8": 512, "bf16": 512}
PARITY_SEED = 0
FP32_RELATIVE_TOL = 1e-4
# Randomly initialised deep nets (BatchNorm statistics re-estimated) are numerically chaotic: PyTorch's own
# FP32 logits of Inception v4 differ from its FP64 ones by ~4e-4 of their scale. For them the FP32 bar is
# at least this multiple of that rounding noise, measured on a few parity inputs; an export bug is far above.
FP32_NOISE_MULTIPLE = 4.0
NOISE_SAMPLES = 4
FP32_ABSOLUTE_TOL = 1e-4
MIN_TOP1_AGREEMENT = {"fp32": 1.0, "fp16": 0.99, "int8": 0.98, "bf16": 0.98}
# Precisions that cannot meet FP32's logits: parity also records test-split accuracy, FP32 beside them.
QUANTIZED = ("int8", "bf16")
FLOAT16_MAX = float(np.finfo(np.float16).max)
LATENCY_ONLY_BAR = ("not applied: the artifact is latency-only (INT8 calibrated on synthetic inputs, accuracy "
                    "unknown); its outputs were only checked to be finite")
# A reference top-2 margin below this fraction of the logit scale is within FP16's accumulated error.
NEAR_TIE_RELATIVE = 1e-2


def default_samples(precision: str) -> int:
    return DEFAULT_SAMPLES.get(precision, PARITY_SAMPLES)


def parity_inputs(config: ModelConfig, input_size: tuple[int, int, int], samples: int = PARITY_SAMPLES,
                  data: WeightsData | None = None) -> tuple[torch.Tensor, str]:
    """The inputs parity runs on, and a line saying what they are (for the manifest).

    `data` is the dataset of the weights (`edgecnn.model_ref.weights_data`): its test split when it is readable
    here; otherwise seeded standard-normal inputs, and the line says why.
    """
    if data is None:
        why = "no dataset is known for these weights: pass --data DIR to check on real images"
    else:
        try:
            ds = data.load("test")
            n = min(samples, len(ds))
            images, _ = ds.get_batch(range(n), size=input_size[1:])
        except DatasetError as e:
            why = str(e)
        else:
            return preprocess(images, replace(config, input_size=input_size)), f"{data.label} test[0:{n}]"
    generator = torch.Generator().manual_seed(PARITY_SEED)
    return (torch.randn(samples, *input_size, generator=generator),
            f"random inputs: standard normal, seed {PARITY_SEED}, {samples} samples ({why})")


@torch.no_grad()
def run_in_batches(fn: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int | None) -> np.ndarray:
    """Run `fn` over `inputs` in chunks of `batch` (None: all at once); a short last chunk is padded."""
    if batch is None:
        return fn(inputs)
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        short = batch - len(chunk)
        if short:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short, axis=0)])
        outputs.append(fn(chunk)[:batch - short])
    return np.concatenate(outputs)


# Reference logits of recent (weights, inputs) pairs: exporting one model to several targets in one
# process runs the PyTorch reference once (for resnet50 at 224 px that is most of an export's time).
_REFERENCE_CACHE: dict[tuple[str, str, str], np.ndarray] = {}
_REFERENCE_CACHE_SIZE = 4


def _digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in named:
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def torch_logits(model: nn.Module, inputs: torch.Tensor, chunk: int = 16) -> np.ndarray:
    """Eval-mode logits of `model` on `inputs`, memoised on the exact weights and inputs."""
    model.eval()
    key = (type(model).__qualname__, _digest(model.state_dict().items()), _digest([("inputs", inputs)]))
    if key not in _REFERENCE_CACHE:
        while len(_REFERENCE_CACHE) >= _REFERENCE_CACHE_SIZE:
            _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
        _REFERENCE_CACHE[key] = torch.cat([model(inputs[i:i + chunk])
                                           for i in range(0, len(inputs), chunk)]).float().numpy()
    return _REFERENCE_CACHE[key].copy()


@torch.no_grad()
def fp32_noise(model: nn.Module, inputs: torch.Tensor) -> float:
    """How far PyTorch's own FP32 logits are from FP64's on a few inputs: the rounding the model amplifies."""
    x = inputs[:NOISE_SAMPLES]
    double = copy.deepcopy(model).double().eval()
    return float((model.eval()(x).double() - double(x.double())).abs().max())


def compare(reference: np.ndarray, candidate: np.ndarray, precision: str, noise: float = 0.0,
            latency_only: bool = False) -> dict[str, Any]:
    """Max abs difference, top-1 agreement and the verdict against this precision's bar.

    A failure carries a `diagnosis` when the cause is visible in the numbers: reference logits beyond
    float16's range, or disagreements only where the reference's top two classes are within 1 % of the
    logit scale of each other (near-ties, typical of randomly initialised models). `noise` is the
    reference's own FP32 rounding noise (`fp32_noise`, measured for random-init weights): the FP32 bar
    is at least FP32_NOISE_MULTIPLE times it. A `latency_only` artifact (INT8 calibrated on synthetic inputs)
    is not held to the top-1 bar, and the result says so: its outputs must only be finite.
    """
    if candidate.shape != reference.shape:
        return {"passed": False, "error": f"output shape {candidate.shape} != reference {reference.shape}"}
    candidate = candidate.astype(np.float32)
    finite = bool(np.isfinite(candidate).all())
    max_abs_logit = float(np.abs(reference).max())
    max_abs_diff = float(np.abs(candidate - reference).max()) if finite else None  # JSON has no infinity
    disagree = candidate.argmax(1) != reference.argmax(1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    near_ties = int((disagree & (top2[:, 1] - top2[:, 0] <= NEAR_TIE_RELATIVE * max_abs_logit)).sum())
    result: dict[str, Any] = {"max_abs_diff": max_abs_diff, "max_abs_logit": max_abs_logit,
                              "top1_agreement": float(1 - disagree.mean()),
                              "required_top1_agreement": MIN_TOP1_AGREEMENT.get(precision, 1.0),
                              "all_finite": finite, "near_tie_disagreements": near_ties}
    passed = finite and (latency_only or result["top1_agreement"] >= result["required_top1_agreement"])
    if latency_only:
        result["top1_bar"] = LATENCY_ONLY_BAR
    if precision == "fp32":
        result["tolerance"] = max(FP32_RELATIVE_TOL * max_abs_logit, FP32_ABSOLUTE_TOL, FP32_NOISE_MULTIPLE * noise)
        if noise:
            result["reference_fp32_noise"] = noise
        passed = passed and max_abs_diff <= result["tolerance"]
    result["passed"] = bool(passed)
    if not passed and precision == "fp16" and max_abs_logit > FLOAT16_MAX:
        result["diagnosis"] = (f"reference logits reach {max_abs_logit:.3g}, beyond float16's {FLOAT16_MAX:.0f}: "
                               "activations overflow in half precision (usual for random initial weights)")
    elif not passed and disagree.any() and near_ties == disagree.sum():
        result["diagnosis"] = ("every top-1 disagreement is a near-tie (reference top-2 margin ≤ 1 % of the "
                               "largest logit), usual for random initial weights")
    return result


def test_split_accuracy(reference: nn.Module, run: Callable[[np.ndarray], np.ndarray], config: ModelConfig,
                        input_size: tuple[int, int, int], batch: int | None, precision: str,
                        data: WeightsData | None = None) -> dict[str, Any]:
    """For quantized precisions: FP32 (the reference) and artifact top-1 on the whole test split of the weights'
    dataset, when it is readable here and labelled with the model's classes."""
    if precision not in QUANTIZED or data is None:
        return {}
    try:
        ds = data.load("test")
        if len(ds.class_names) != config.num_classes:
            return {}
        order = aligned_labels(ds.class_names, config)
    except (DatasetError, UserError):
        return {}
    images, labels = ds.get_batch(range(len(ds)), size=input_size[1:])
    labels = labels.numpy() if order is None else np.asarray(order)[labels.numpy()]
    inputs = preprocess(images, replace(config, input_size=input_size))
    fp32 = torch_logits(reference, inputs, chunk=256).argmax(1)
    ours = run_in_batches(run, inputs.numpy(), batch or 256).argmax(1)
    fp32_acc, acc = (float(100 * (p == labels).mean()) for p in (fp32, ours))
    return {"test_split": {"inputs": f"{data.label} test[0:{len(ds)}]", "fp32_accuracy": fp32_acc,
                           "accuracy": acc, "drop": round(fp32_acc - acc, 4)}}
