"""What refusing NaN/inf inputs costs a runtime session: resnet18_fmnist, ONNX Runtime, batch 1.

Sessions check every float batch for non-finite values before the runtime sees it (OpenVINO turns an
all-NaN image into confident logits). The bar: the check costs under 1 % of a run. One session, the
check switched on and off in alternating rounds (A B B A A B …) so drift and load hit both alike;
each round's median run time is taken, the overhead is the median over round pairs of their ratio,
and the check alone is timed on the same input beside it. Writes benchmarks/results/finite_check.json.

    python benchmarks/finite_check.py [--model resnet18_fmnist] [--threads 2] [--rounds 100]
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
from edgecnn.export.pipeline import host_info, tool_versions
from edgecnn.export.runtime import refuse_non_finite

RESULTS = Path(__file__).parent / "results" / "finite_check.json"
BUDGET_FRACTION = 0.01


def _round_median_ms(fn, x: np.ndarray, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18_fmnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=100, help="rounds per setting, alternating")
    p.add_argument("--runs", type=int, default=15, help="runs per round")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_registered(args.model, "onnx", "fp32", Path(tmp) / "a", parity_samples=8).path
        with runtime.load(artifact, backend="onnxruntime", threads=args.threads) as session:
            shape = [d if isinstance(d, int) else 1 for d in session.manifest["input"]["shape"]]
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            for _ in range(20):  # warm-up
                session.run(x)
            checked, unchecked = [], []
            for i in range(args.rounds):
                order = ((True, checked), (False, unchecked))
                for setting, times in order if i % 2 == 0 else order[::-1]:
                    session.check_finite = setting
                    times.append(_round_median_ms(session.run, x, args.runs))
            check_alone_ms = _round_median_ms(refuse_non_finite, x, 2000)
    with_check, without = statistics.median(checked), statistics.median(unchecked)
    overhead = statistics.median(a / b for a, b in zip(checked, unchecked)) - 1
    result = {"benchmark": "finite_check", "model": args.model, "backend": "onnxruntime", "precision": "fp32",
              "input_shape": shape, "threads": args.threads, "rounds_per_setting": args.rounds,
              "runs_per_round": args.runs,
              "median_ms_with_check": round(with_check, 4), "median_ms_without_check": round(without, 4),
              "overhead_fraction": round(overhead, 5), "check_alone_ms": round(check_alone_ms, 5),
              "check_alone_fraction": round(check_alone_ms / without, 5), "budget_fraction": BUDGET_FRACTION,
              "within_budget": check_alone_ms / without < BUDGET_FRACTION and overhead < BUDGET_FRACTION,
              "machine": host_info(), "tools": tool_versions(),
              "measured_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "load_average_1m_before": round(load_before, 2),
              "note": "one session; check_finite toggled between alternating rounds (ABBA order); each "
                      "round's median; overhead_fraction is the median over round pairs of with/without - 1 "
                      "(end to end, so load noise of a shared machine shows in it and it can come out "
                      "negative); check_alone_fraction times the check by itself on the same input against "
                      "the median run without it. See the load average."}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.model} ORT batch 1: {with_check:.3f} ms with the check, {without:.3f} ms without "
          f"({overhead:+.2%}); the check alone {check_alone_ms * 1e3:.1f} µs ({check_alone_ms / without:.3%}) → {args.out}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
