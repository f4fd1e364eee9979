"""Latency statistics, round spread and the Pareto front on synthetic numbers (no runtime involved)."""
from __future__ import annotations

import numpy as np
import pytest

from edgecnn.benchmarks.report import pareto_front
from edgecnn.benchmarks.stats import latency_stats, round_spread


def test_latency_stats_of_a_known_sample() -> None:
    seconds = [i / 1000 for i in range(1, 101)]  # 1 … 100 ms
    stats = latency_stats(seconds, batch=8)
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert (stats["min"], stats["max"]) == (pytest.approx(1.0), pytest.approx(100.0))
    assert stats["std"] == pytest.approx(np.std(np.arange(1, 101), ddof=1), rel=1e-4)
    assert stats["throughput"] == pytest.approx(8 * 1000 / 50.5, rel=1e-3)  # samples/s from the mean
    assert stats["iterations"] == 100


def test_outliers_move_the_mean_and_tail_not_the_median() -> None:
    steady = [0.002] * 99
    stats = latency_stats(steady + [0.2], batch=1)
    assert stats["p50"] == pytest.approx(2.0)
    assert stats["max"] == pytest.approx(200.0)
    assert stats["mean"] > 3.9 and stats["p99"] > stats["p90"]


def test_one_call_has_zero_std_and_empty_is_refused() -> None:
    assert latency_stats([0.001], 1)["std"] == 0.0
    with pytest.raises(ValueError):
        latency_stats([], 1)


def test_round_spread_is_relative_to_the_median_of_round_medians() -> None:
    rounds = [[0.010, 0.010, 0.011], [0.012, 0.012], [0.010]]
    spread = round_spread(rounds)
    assert spread["round_p50_ms"] == pytest.approx([10.0, 12.0, 10.0])
    assert spread["spread_pct"] == pytest.approx(100 * (12 - 10) / 10)


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = [(1.0, 90.0), (2.0, 89.0), (2.0, 92.0), (3.0, 92.0), (0.5, 80.0), (4.0, 93.0)]
    assert pareto_front(points) == [(0.5, 80.0), (1.0, 90.0), (2.0, 92.0), (4.0, 93.0)]
