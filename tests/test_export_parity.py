"""The parity verdicts themselves, on synthetic logits: the bars of the issue and the diagnoses."""
from __future__ import annotations

import numpy as np

from edgecnn.export.parity import compare, run_in_batches

REFERENCE = np.array([[4.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 3.0], [2.0, 1.0, 0.5]], np.float32)


def test_fp32_bar_is_relative_with_an_absolute_floor() -> None:
    assert compare(REFERENCE, REFERENCE + 3e-4, "fp32")["passed"]          # ≤ 1e-4 × 4
    assert not compare(REFERENCE, REFERENCE + 5e-4, "fp32")["passed"]
    small = REFERENCE / 100
    assert compare(small, small + 9e-5, "fp32")["passed"]                  # the 1e-4 floor


def test_top1_must_agree() -> None:
    flipped = REFERENCE.copy()
    flipped[3] = [0.0, 3.0, 0.0]
    result = compare(REFERENCE, flipped, "fp16")
    assert result["top1_agreement"] == 0.75 and not result["passed"] and "diagnosis" not in result


def test_fp16_failures_are_diagnosed() -> None:
    tied = np.array([[1.0, 1.001, 0.0]] * 4, np.float32)
    swapped = tied[:, [1, 0, 2]]
    result = compare(tied, swapped, "fp16")
    assert not result["passed"] and result["near_tie_disagreements"] == 4 and "near-tie" in result["diagnosis"]
    huge = REFERENCE * 1e6
    result = compare(huge, np.full_like(huge, np.inf), "fp16")
    assert not result["passed"] and result["max_abs_diff"] is None and "overflow" in result["diagnosis"]


def test_shape_mismatch_and_batching() -> None:
    assert not compare(REFERENCE, REFERENCE[:2], "fp32")["passed"]
    calls = []
    out = run_in_batches(lambda b: calls.append(len(b)) or b * 2, np.arange(10.0).reshape(5, 2), batch=2)
    assert calls == [2, 2, 2] and np.array_equal(out, np.arange(10.0).reshape(5, 2) * 2)


def test_fp32_bar_allows_the_references_own_rounding_noise() -> None:
    """A chaotic random-init net's FP32 logits are off its FP64 ones by `noise`: 4× that is still parity."""
    assert not compare(REFERENCE, REFERENCE + 3e-3, "fp32")["passed"]
    result = compare(REFERENCE, REFERENCE + 3e-3, "fp32", noise=1e-3)
    assert result["passed"] and result["tolerance"] == 4e-3 and result["reference_fp32_noise"] == 1e-3
    assert not compare(REFERENCE, REFERENCE + 5e-3, "fp32", noise=1e-3)["passed"]


def test_fp32_noise_is_measured_against_float64() -> None:
    import copy

    import torch

    from edgecnn.export.parity import fp32_noise

    torch.manual_seed(0)
    deep = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(40)])
    x = torch.randn(8, 64)
    noise = fp32_noise(deep, x)
    assert next(deep.parameters()).dtype == torch.float32, "the model itself must stay float32"
    with torch.no_grad():
        expected = (deep(x[:4]).double() - copy.deepcopy(deep).double()(x[:4].double())).abs().max()
    assert 0 < noise == float(expected)
