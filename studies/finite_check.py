"""What refusing NaN/inf inputs costs a runtime session: resnet18_fmnist, ONNX Runtime, batch 1.

Sessions check every float batch for non-finite values before the runtime sees it (OpenVINO turns an
all-NaN image into confident logits). The bar: the check costs under 1 % of a run. One session, the
check switched on and off run by run (A B B A A B …) so drift and load hit both alike; the overhead
is the median over adjacent pairs of their ratio, next to the ratio of the two medians, on the wall
clock and on the calling thread's CPU clock (one intra-op thread: immune to other processes' load);
the check alone is timed on the same input beside it. Writes benchmarks/results/finite_check.json.

    python studies/finite_check.py [--model resnet18_fmnist] [--threads 2] [--pairs 3000]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from edgecnn.export import export_registered, runtime
from edgecnn.export.passes import host_info, tool_versions
from edgecnn.export.runtime import refuse_non_finite

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "finite_check.json"
BUDGET_FRACTION = 0.01


def _interleaved(session: runtime.Session, x: np.ndarray, pairs: int, clock) -> dict[str, float]:
    """Median ms of session.run with and without the check, toggled run by run (ABBA), and the
    median over adjacent pairs of their ratio."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(pairs):
        for setting in (True, False) if i % 2 == 0 else (False, True):
            session.check_finite = setting
            t0 = clock()
            session.run(x)
            times[setting].append((clock() - t0) * 1e3)
    with_check, without = statistics.median(times[True]), statistics.median(times[False])
    return {"median_ms_with_check": round(with_check, 4), "median_ms_without_check": round(without, 4),
            "overhead_fraction": round(statistics.median(a / b for a, b in zip(times[True], times[False])) - 1, 5),
            "ratio_of_medians_minus_1": round(with_check / without - 1, 5)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18_fmnist")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads of the wall-clock run")
    p.add_argument("--pairs", type=int, default=3000, help="runs per setting, alternating")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_registered(args.model, "onnx", "fp32", Path(tmp) / "a", parity_samples=8).path
        # wall clock at the given threads; the calling thread's CPU clock at 1 thread, where ONNX Runtime
        # computes in that thread, so other processes' load cannot enter the figure
        for clock_name, threads, clock in (("wall", args.threads, time.perf_counter), ("thread_cpu", 1, time.thread_time)):
            with runtime.load(artifact, backend="onnxruntime", threads=threads) as session:
                shape = [d if isinstance(d, int) else 1 for d in session.manifest["input"]["shape"]]
                x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                for _ in range(20):  # warm-up
                    session.run(x)
                runs[clock_name] = {"clock": clock.__name__, "threads": threads,
                                    **_interleaved(session, x, args.pairs, clock)}
        check_times = []
        for _ in range(args.pairs):
            t0 = time.thread_time()
            refuse_non_finite(x)
            check_times.append((time.thread_time() - t0) * 1e3)
    check_alone_ms = statistics.median(check_times)
    check_fraction = check_alone_ms / runs["thread_cpu"]["median_ms_without_check"]
    result = {"benchmark": "finite_check", "model": args.model, "backend": "onnxruntime", "precision": "fp32",
              "input_shape": shape, "runs_per_setting": args.pairs, "runs": runs,
              "check_alone_ms": round(check_alone_ms, 5), "check_alone_fraction": round(check_fraction, 5),
              "budget_fraction": BUDGET_FRACTION,
              "within_budget": check_fraction < BUDGET_FRACTION
              and runs["thread_cpu"]["overhead_fraction"] < BUDGET_FRACTION,
              "machine": host_info(), "tools": tool_versions(),
              "measured_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "load_average_1m_before": round(load_before, 2),
              "load_average_1m_after": round(os.getloadavg()[0], 2),
              "note": "one session per clock; check_finite toggled run by run (ABBA order); overhead_fraction "
                      "is the median over adjacent (with, without) pairs of with / without - 1. The wall "
                      "figure carries the load of a shared machine (see the load averages); the thread_cpu "
                      "figure (1 intra-op thread, CPU time of the calling thread) does not, and decides "
                      "within_budget together with the check timed alone (thread CPU time) against it."}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(" · ".join(f"{name}: {r['median_ms_with_check']:.3f} ms with the check, {r['median_ms_without_check']:.3f} "
                     f"without ({r['overhead_fraction']:+.2%})" for name, r in runs.items())
          + f" · the check alone {check_alone_ms * 1e3:.1f} µs ({check_fraction:.3%}) → {args.out}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
