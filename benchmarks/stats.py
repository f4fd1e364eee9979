"""Latency statistics of one configuration from its per-iteration times, and its drift across rounds; round medians
of configurations timed in interleaved rounds, and the paired per-round test of one against another."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np

PERCENTILES = (50, 90, 99)
SLOWER_IF_LOSING_FRACTION = 0.9   # of the paired rounds (see no_slower)


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """Mean, percentiles, min, max and std in milliseconds per call, and throughput in samples/s."""
    if len(seconds) == 0:
        raise ValueError("no timings to summarise")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    stats = {"mean": ms.mean(), **{f"p{q}": np.percentile(ms, q) for q in PERCENTILES},
             "min": ms.min(), "max": ms.max(), "std": ms.std(ddof=1) if len(ms) > 1 else 0.0}
    return {**{k: round(float(v), 4) for k, v in stats.items()},
            "throughput": round(float(batch * 1e3 / stats["mean"]), 2), "iterations": len(ms)}


def round_spread(rounds: Sequence[Sequence[float]]) -> dict[str, object]:
    """Median of each round (ms) and their spread, (max − min) / median of the medians, in percent.

    Rounds are interleaved with the other configurations, so drift on a shared machine shows up
    here rather than as a difference between configurations.
    """
    medians = [float(np.median(r)) * 1e3 for r in rounds if len(r)]
    if not medians:
        raise ValueError("no rounds to compare")
    centre = float(np.median(medians))
    return {"round_p50_ms": [round(m, 4) for m in medians],
            "spread_pct": round(100 * (max(medians) - min(medians)) / centre, 2) if centre > 0 else 0.0}


def round_medians(runners: dict[str, Callable[[], Any]], rounds: int, iters: int) -> dict[str, list[float]]:
    """Per configuration, the median ms of each interleaved round (A B C A B C …: drift hits all alike)."""
    times: dict[str, list[list[float]]] = {k: [] for k in runners}
    for fn in runners.values():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for key, fn in runners.items():
            samples = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                samples.append(1000 * (time.perf_counter() - t0))
            times[key].append(samples)
    return {k: [statistics.median(r) for r in v] for k, v in times.items()}


def no_slower(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    """Paired per-round comparison: ours is slower only if it loses nearly every round (sign test).

    Two flows that build the same graph time alike, and a strict `median <= median` would then pass or
    fail on noise; losing at least 9 of 10 rounds has p < 0.011 under "equally fast"."""
    ratios = [a / b for a, b in zip(ours, theirs)]
    losses = sum(r > 1 for r in ratios)
    needed = SLOWER_IF_LOSING_FRACTION * len(ratios)
    return {"median_ratio": round(statistics.median(ratios), 3), "rounds_lost": losses, "rounds": len(ratios),
            "no_slower": not (losses >= needed and statistics.median(ratios) > 1)}
