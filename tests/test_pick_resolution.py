"""`pick` refuses to recommend nonsense and says when it cannot tell (issue 25 point 5): a configuration near chance
for its class count is excluded as no trained model for the data; accuracy differences within the test's noise are
ties won by the faster; --max-drop never acts on less than one validation image."""
from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from edgecnn.benchmarks.pick import pick
from edgecnn.benchmarks.resolution import accuracy_resolution, binomial_tail, near_chance
from edgecnn.calibration import fallback_to_float, measurable_drop
from tests.test_pick import record, results

SHA = "ab" * 32
DATA = {"name": "digits", "path": "/data/digits", "origin": "checkpoint sidecar"}


def measured(model: str, precision: str, p50: float, top1: float, samples: int, agreement: float = 99.7,
             reference: float = 96.0, **extra: Any) -> dict[str, Any]:
    """A record as `edgecnn bench` now writes it: images counted, classes, weights and data named."""
    r = record(model, "onnxruntime", precision, p50, top1, reference=reference)
    r["accuracy"].update(samples=samples, classes=10, dataset="digits", agreement_vs_torch_fp32=agreement)
    return {**r, "weights_sha256": SHA, "dataset": DATA, **extra}


def test_a_model_near_chance_is_excluded_as_no_trained_model_for_this_data() -> None:
    answer = pick([results([measured("lenet5_fmnist", "int8", 0.08, 15.28, 360, reference=15.0),
                            measured("mine", "fp32", 0.3, 97.5, 360)])], budget_ms=0.5)
    assert [c.record["model"] for c in answer.chosen] == ["mine"]
    reason = answer.excluded[0].reason
    assert reason.startswith("not a trained model for this dataset: 15.28% top-1 on 360 digits images")
    assert "10.00% for 10 classes" in reason


def test_within_the_tests_noise_the_faster_wins_and_the_tie_is_said() -> None:
    # INT8 gets one image more of 360 right (+0.28 pt) but is slower: a tie, FP32 is the answer
    answer = pick([results([measured("mine", "int8", 0.079, 96.39, 360), measured("mine", "fp32", 0.041, 96.11, 360)])],
                  budget_ms=0.5)
    assert [c.record["precision"] for c in answer.chosen] == ["fp32", "int8"]
    assert answer.notes and "0.28 pt more accurate, within the test's resolution" in answer.notes[0]


def test_a_real_difference_still_ranks_the_more_accurate_first() -> None:
    answer = pick([results([measured("mine", "int8", 0.079, 97.0, 10000, agreement=98.0),
                            measured("mine", "fp32", 0.041, 95.0, 10000, agreement=99.0)])], budget_ms=0.5)
    assert [c.record["precision"] for c in answer.chosen] == ["int8", "fp32"] and not answer.notes


def test_latency_only_and_parity_failed_records_are_never_an_accuracy_answer() -> None:
    synthetic = {**measured("resnet50", "int8", 0.1, 50.0, 360), "accuracy": None, "latency_only": True}
    failed = measured("mine", "int8", 0.05, 97.0, 360)
    failed["artifact"] = {**failed["artifact"], "parity_passed": False}
    answer = pick([results([synthetic, failed])], budget_ms=0.5)
    assert answer.chosen == []
    reasons = sorted(c.reason for c in answer.excluded)
    assert reasons[0].startswith("its parity check failed") and reasons[1].startswith("latency only: INT8 calibrated")


def test_resolution_statistics() -> None:
    for n, p in ((12, 0.1), (30, 0.5)):
        for k in range(n + 2):
            brute = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))
            assert binomial_tail(k, n, p) == pytest.approx(brute, abs=1e-12)
    assert near_chance({"top1": 40.0, "samples": 20, "classes": 10, "dataset": "x"}) is None
    assert near_chance({"top1": 30.0, "samples": 10, "classes": 10, "dataset": "x"})  # 3 of 10: could be luck
    a, b = ({"top1": t, "samples": 360, "agreement_vs_torch_fp32": 99.7} for t in (96.39, 96.11))
    assert accuracy_resolution(a, b, paired=True) > 0.28 > 100 / 360 * 0.99
    assert accuracy_resolution(a, b, paired=False) > accuracy_resolution(a, b, paired=True)


def test_max_drop_is_acted_on_only_beyond_one_validation_image() -> None:
    one = 100 / 143
    assert measurable_drop(0.5, 143) == pytest.approx(one)   # 0.5 pt is less than an image: one image is within it
    assert measurable_drop(0.0, 143) == 0.0 and measurable_drop(2 * one, 143) == pytest.approx(2 * one)
    scores = iter(itertools.repeat(90.0))
    within = fallback_to_float(["a", "b"], lambda excluded: next(scores), 91.0, 91.0 - one, measurable_drop(0.5, 143))
    assert within.excluded == [], "a one-image drop against --max-drop 0.5 on 143 images is not acted on"
