"""How long exporting resnet50 to ONNX and OpenVINO IR (FP32) takes, end to end, on this machine.

The issue's bar: under 60 s for both on 2 cores, folding, checks, hashing and the 64-input parity
check included (one process: the PyTorch reference logits are computed once). Writes
benchmarks/results/export_time.json with the machine it ran on and its load.

    python studies/export_time.py [--model resnet50] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from edgecnn.export import export_registered
from edgecnn.export.passes import host_info, tool_versions

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "export_time.json"
TARGETS = ("onnx", "openvino")
BUDGET_S = 60.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        for target in TARGETS:
            t0 = time.perf_counter()
            m = export_registered(args.model, target, "fp32", Path(tmp) / target).manifest
            runs.append({"target": target, "seconds": round(time.perf_counter() - t0, 2),
                         "passes": {p["name"]: p["seconds"] for p in m["passes"]},
                         "bytes": sum(f["bytes"] for f in m["files"].values()),
                         "parity_passed": all(c["passed"] for c in m["parity"])})
        total = round(time.perf_counter() - started, 2)
    result = {"benchmark": "export_time", "model": args.model, "precision": "fp32", "input_shape": m["input"]["shape"],
              "threads": args.threads, "total_seconds": total, "budget_seconds": BUDGET_S,
              "within_budget": total < BUDGET_S, "runs": runs, "machine": host_info(), "tools": tool_versions(),
              "measured_utc": m["export"]["created_utc"], "load_average_1m_before": round(load_before, 2),
              "note": "each export includes folding, ONNX checks, hashing and the 64-input parity check; the "
                      "PyTorch reference logits are computed by the first export and reused by the second "
                      "(same weights, same inputs). The machine may be shared: see the load average."}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    per_target = ", ".join(f"{r['target']} {r['seconds']:.1f} s" for r in runs)
    print(f"{args.model}: ONNX + OpenVINO FP32 in {total:.1f} s ({per_target}); budget {BUDGET_S:.0f} s → {args.out}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
