"""BranchyNet early exit vs the same network's trunk: mean per-sample latency at batch 1, accuracy, exits.

For each B-model with committed weights, export it (the early-exit pass tunes the thresholds on the
validation split, on the artifact's own runtime and precision), then on the Fashion-MNIST test split:

- accuracy and exit fractions of the early-exit session, each exit's accuracy alone, the trunk's accuracy;
- mean per-sample latency at batch 1, early exit vs trunk, measured in interleaved rounds (same images,
  same runtime, same threads) so machine load hits both alike;
- the session-call overhead of the runtime (an Identity graph on 1×10), which every extra stage pays;
- a sweep along the validation Pareto front: measured test accuracy and latency per threshold setting.

Bars (BranchyNet's CPU gains): B-LeNet 5.4×, B-AlexNet 1.5×, B-ResNet 1.9×; b_resnet_fmnist must reach
1.9× on ONNX Runtime at ≤ 0.5 pt accuracy loss vs the trunk. Writes benchmarks/results/early_exit.json and
early_exit.png.

    python benchmarks/early_exit.py [--models b_resnet_fmnist ...] [--configs onnx:fp32 openvino:fp32]
    python benchmarks/early_exit.py --table      # the README block from the results
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgecnn.data import load_dataset, preprocess
from edgecnn.export import export_registered, runtime
from edgecnn.export.pipeline import host_info, tool_versions
from edgecnn.registry import get_config

RESULTS = Path(__file__).parent / "results"
PAPER_GAIN = {"b_lenet_fmnist": 5.4, "b_alexnet_fmnist": 1.5, "b_resnet_fmnist": 1.9}
MODELS = tuple(PAPER_GAIN)
CONFIGS = ("onnx:fp32", "onnx:fp16", "onnx:int8", "openvino:fp32", "openvino:fp16", "openvino:int8")
RUNTIME_OF = {"onnx": "onnxruntime", "openvino": "openvino"}


def _per_sample_ms(run: Callable[[np.ndarray], Any], images: np.ndarray) -> float:
    t0 = time.perf_counter()
    for i in range(len(images)):
        run(images[i:i + 1])
    return 1000 * (time.perf_counter() - t0) / len(images)


def interleaved(runs: dict[str, Callable[[np.ndarray], Any]], images: np.ndarray, rounds: int) -> dict[str, Any]:
    """Mean per-sample ms of each callable over `rounds` alternating passes over `images` (after a warm-up)."""
    for run in runs.values():
        _per_sample_ms(run, images[:20])
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            samples[name].append(_per_sample_ms(runs[name], images))
    return {name: {"mean_ms": statistics.mean(v), "median_round_ms": statistics.median(v),
                   "rounds_ms": [round(x, 5) for x in v]} for name, v in samples.items()}


def call_overhead_ms(runtime_name: str, threads: int, repeats: int = 2000) -> float:
    """Median ms of one call to the runtime on an Identity graph: what every extra stage call costs at least."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["input"], ["y"])], "id", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    data, feed = model.SerializeToString(), np.zeros((1, 10), np.float32)
    if runtime_name == "onnxruntime":
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        call = lambda: session.run(None, {"input": feed})  # noqa: E731
    else:
        import openvino as ov
        compiled = ov.Core().compile_model(ov.convert_model(io.BytesIO(data)), "CPU",
                                           {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        call = lambda: request.infer({"input": feed}, share_inputs=True, share_outputs=True)  # noqa: E731  as the session
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times[100:]))


def bench_artifact(artifact: Path, name: str, threads: int, images: np.ndarray, labels: np.ndarray,
                   timed: int, rounds: int, sweep_points: int) -> dict[str, Any]:
    manifest = runtime.read_manifest(artifact)
    tuning = manifest["early_exit"]["per_precision"][manifest["precision"]]
    backend = tuning["runtime"]
    with runtime.load(artifact, backend="early_exit", threads=threads) as ee, \
            runtime.load(artifact, backend=backend, threads=threads, trunk=True) as trunk:
        result = np.concatenate([ee.classify(images[i:i + 500]).exits for i in range(0, len(images), 500)])
        entropies, logits = zip(*(ee.exit_outputs(images[i:i + 500]) for i in range(0, len(images), 500)))
        entropies, logits = np.concatenate(entropies, axis=1), np.concatenate(logits, axis=1)
        predictions = logits.argmax(2)
        ee_pred = predictions[result, np.arange(len(labels))]
        trunk_pred = np.concatenate([trunk.run(images[i:i + 1]).argmax(1) for i in range(len(images))])
        sample = images[:timed]
        timing = interleaved({"early_exit": ee.run, "trunk": trunk.run}, sample, rounds)
        stage_ms = ee.stage_costs(images[:1])
        # Sweep: settings along the validation Pareto front, measured on the test images.
        front = tuning["sweep"]
        picks = sorted({int(round(i)) for i in np.linspace(0, len(front) - 1, min(sweep_points, len(front)))})
        sweep = []
        for i in picks:
            thresholds = front[i]["thresholds"]
            ee.thresholds = list(thresholds)
            exits = np.concatenate([ee.classify(images[j:j + 500]).exits for j in range(0, len(images), 500)])
            acc = float(100 * (predictions[exits, np.arange(len(labels))] == labels).mean())
            ms = interleaved({"early_exit": ee.run}, sample[: max(50, timed // 4)], 1)["early_exit"]["mean_ms"]
            sweep.append({"thresholds": thresholds, "val_accuracy": front[i]["accuracy"],
                          "val_expected_ms": front[i]["expected_ms"], "test_accuracy": acc, "test_mean_ms": ms,
                          "exit_fractions": [float(f) for f in np.bincount(exits, minlength=len(stage_ms))
                                             / len(exits)]})
        info = ee.info()
    n_exits = predictions.shape[0]
    ee_acc, trunk_acc = (float(100 * (p == labels).mean()) for p in (ee_pred, trunk_pred))
    speedup = timing["trunk"]["mean_ms"] / timing["early_exit"]["mean_ms"]
    return {
        "model": name, "target": manifest["target"], "precision": manifest["precision"], "runtime": backend,
        "executed_precision": info["executed_precision"], "threads": threads,
        "thresholds": manifest["early_exit"]["thresholds"], "tuned_on": tuning["tuned_on"],
        "test_images": len(labels), "timed_images": timed, "rounds": rounds,
        "accuracy": {"early_exit": round(ee_acc, 3), "trunk": round(trunk_acc, 3),
                     "loss_pt": round(trunk_acc - ee_acc, 3),
                     "each_exit_alone": [round(float(100 * (p == labels).mean()), 3) for p in predictions]},
        "exit_fractions": [round(float(f), 4) for f in np.bincount(result, minlength=n_exits) / len(result)],
        "val": {k: tuning.get(k) for k in ("accuracy", "final_exit_accuracy", "exit_fractions", "expected_ms",
                                           "stage_ms", "exit_accuracy", "trunk_ms", "expected_speedup_vs_trunk")},
        "latency_ms": {"early_exit": round(timing["early_exit"]["mean_ms"], 5),
                       "trunk": round(timing["trunk"]["mean_ms"], 5), "rounds": timing},
        "stage_ms_batch1": [round(c, 5) for c in stage_ms],
        "speedup_vs_trunk": round(speedup, 3), "paper_gain": PAPER_GAIN.get(name),
        "meets_paper_gain": bool(speedup >= PAPER_GAIN.get(name, float("inf"))),
        "within_0_5_pt": bool(trunk_acc - ee_acc <= 0.5 + 1e-9),
        "sweep": sweep,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in results}, key=list(PAPER_GAIN).index)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for r in (r for r in results if r["model"] == model):
            label = f"{r['target']} {r['precision']}"
            pts = sorted(r["sweep"], key=lambda s: s["val_expected_ms"])  # the validation Pareto order
            line, = ax.plot([s["test_mean_ms"] for s in pts], [s["test_accuracy"] for s in pts], "o-", ms=3,
                            label=f"{label}: sweep")
            ax.plot(r["latency_ms"]["trunk"], r["accuracy"]["trunk"], "s", color=line.get_color(), ms=8,
                    mfc="none", label=f"{label}: trunk")
            ax.plot(r["latency_ms"]["early_exit"], r["accuracy"]["early_exit"], "*", color=line.get_color(), ms=12,
                    label=f"{label}: tuned ({r['speedup_vs_trunk']:.2f}×)")
        ax.set_title(f"{model} (paper gain {PAPER_GAIN[model]}×)")
        ax.set_xlabel("mean per-sample latency at batch 1 (ms)")
        ax.set_ylabel("Fashion-MNIST test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("BranchyNet early exit vs trunk, thresholds tuned on validation", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def print_table(path: Path) -> None:
    """The README's early-exit block, from the committed results (never hand-copied numbers)."""
    record = json.loads(path.read_text())
    print("| model | runtime precision | early exit ms | trunk ms | speed-up | paper | accuracy EE · trunk (loss) "
          "| exit fractions | each exit alone |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in record["results"]:
        acc = r["accuracy"]
        print(f"| {r['model']} | {r['runtime']} {r['precision']} | {r['latency_ms']['early_exit']:.3f} | "
              f"{r['latency_ms']['trunk']:.3f} | **{r['speedup_vs_trunk']:.2f}×** | {r['paper_gain']}× | "
              f"{acc['early_exit']:.2f} · {acc['trunk']:.2f} ({acc['loss_pt']:+.2f}) | "
              f"{' / '.join(f'{100 * f:.0f} %' for f in r['exit_fractions'])} | "
              f"{' / '.join(f'{a:.1f}' for a in acc['each_exit_alone'])} |")
    overhead = record["session_call_overhead_ms"]
    print("\nSession-call overhead (an Identity graph, batch 1): "
          + ", ".join(f"{rt} {1000 * ms:.0f} µs" for rt, ms in sorted(overhead.items())) + ".")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help="TARGET:PRECISION pairs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--test-images", type=int, default=10000)
    p.add_argument("--timed", type=int, default=400, help="test images timed per round at batch 1")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--sweep-points", type=int, default=8)
    p.add_argument("--out", type=Path, default=RESULTS / "early_exit.json",
                   help="results JSON (runs of other models/configs already in it are kept); the PNG goes next to it")
    p.add_argument("--table", action="store_true", help="print the README block from --out and stop")
    args = p.parse_args()
    if args.table:
        print_table(args.out)
        return 0
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    ds = load_dataset("fashion_mnist", "test")
    images_u8, labels = ds.get_batch(range(min(args.test_images, len(ds))))
    results, overhead = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            images = preprocess(images_u8, get_config(name)).numpy()
            for config in args.configs:
                target, precision = config.split(":")
                t0 = time.perf_counter()
                art = export_registered(name, target, precision, Path(tmp) / f"{name}-{target}-{precision}").path
                export_s = time.perf_counter() - t0
                r = bench_artifact(art, name, args.threads, images, labels.numpy(), args.timed, args.rounds,
                                   args.sweep_points)
                r["export_s"] = round(export_s, 1)
                r["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: say how busy
                results.append(r)
                print(f"{name} {config}: {r['speedup_vs_trunk']:.2f}× (early exit {r['latency_ms']['early_exit']:.4f} "
                      f"ms vs trunk {r['latency_ms']['trunk']:.4f} ms), accuracy {r['accuracy']['early_exit']:.2f}% "
                      f"vs trunk {r['accuracy']['trunk']:.2f}%, exits {r['exit_fractions']}", flush=True)
    for rt in sorted({r["runtime"] for r in results}):
        overhead[rt] = round(call_overhead_ms(rt, args.threads), 5)
    # Runs of other models/configs already in the file stay (one run per model × target × precision).
    if args.out.is_file():
        earlier = json.loads(args.out.read_text())
        fresh = {(r["model"], r["target"], r["precision"]) for r in results}
        results = [r for r in earlier.get("results", []) if (r["model"], r["target"], r["precision"]) not in fresh] \
            + results
        overhead = {**earlier.get("session_call_overhead_ms", {}), **overhead}
    record = {"benchmark": "early_exit", "last_command": "python benchmarks/early_exit.py " +
              " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                       for k, v in vars(args).items() if k not in ("out", "table")),
              "bars": {"paper_gain": PAPER_GAIN, "b_resnet_fmnist_onnxruntime_min": 1.9, "max_loss_pt": 0.5},
              "session_call_overhead_ms": overhead, "results": results,
              "machine": {**host_info(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "tools": tool_versions()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
