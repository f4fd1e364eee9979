"""Latency statistics of one configuration from its per-iteration times, and its drift across rounds."""
from __future__ import annotations

from typing import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


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
