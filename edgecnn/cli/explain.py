"""`edgecnn explain`: per-layer latency on each artifact's runtime, INT8's error per layer, and why INT8 is slow."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgecnn.validation import arg_type, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from edgecnn.export.placement import MAX_CANDIDATES

    p = sub.add_parser(
        "explain", help="where the time goes and what INT8 costs, layer by layer (runtime profilers)",
        description="Profile each artifact on its own runtime (ONNX Runtime session profiling, OpenVINO performance "
                    "counters) and name every runtime node by the model's layer (layer2.0.conv1): FP32 against INT8 "
                    "per layer, per runtime, in one interleaved run, with the share of the measured latency the "
                    "layers account for; for INT8, the SQNR of each layer's output against FP32 and the accuracy it "
                    "recovers alone in float; and why a layer is slower in INT8 here. An INT8 artifact is compared "
                    "with the FP32 artifact of the same model and target given beside it, or with one exported here. "
                    "Writes README.md, PNG charts and explain.json into --out.")
    p.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT", help="artifact directories")
    p.add_argument("--data", metavar="DIR",
                   help="the dataset the error part calibrates and scores on, in place of the weights' own (a folder "
                        "with train/ and test/, or a known name; default: the weights' own, as the export used)")
    p.add_argument("--threads", type=arg_type(positive_int, "--threads"), metavar="N",
                   help="threads each runtime runs with (default: the runtime's own)")
    p.add_argument("--candidates", type=arg_type(positive_int, "--candidates"), default=MAX_CANDIDATES, metavar="K",
                   help="layers of lowest SQNR re-quantized alone in float to measure the accuracy each recovers "
                        f"(default: {MAX_CANDIDATES})")
    p.add_argument("--out", type=Path, default=Path("explain"), metavar="DIR", help="report folder (default: explain)")
    p.add_argument("--force", action="store_true", help="replace an earlier explain report in --out")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from edgecnn.benchmarks.explain import explain

    result = explain(args.artifacts, data=args.data, threads=args.threads, out=args.out, force=args.force,
                     candidates=args.candidates)
    for model in result["models"]:
        for label, c in model["coverage"].items():
            print(f"{model['model']} {label}: {c['latency_ms']:.4f} ms, per-layer times cover "
                  f"{100 * c['coverage']:.0f}% of it ({100 * c['graph_coverage']:.0f}% less the runtime's "
                  f"{c['runtime_call_ms']:.4f} ms per call; {100 * c['mapped_fraction']:.0f}% mapped to layers)")
        for slow in model["slower_in_int8"]:
            print(f"  slower in INT8 on {slow['runtime']}: {' + '.join(slow['layers'])} "
                  f"({slow['int8_us']:.1f} µs against {slow['fp32_us']:.1f} µs)")
    print(f"explain → {result['index']}")
    return 0
