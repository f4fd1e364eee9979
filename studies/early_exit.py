"""BranchyNet early exit vs the same network's trunk: mean per-sample latency at batch 1, accuracy, exits.

For each B-model with committed weights, export it (the early-exit pass writes one graph per stage and the single
graph, and tunes each form's thresholds on the validation split, on the artifact's own runtime and precision), then
on the Fashion-MNIST test split, at each thread count:

- accuracy and exit fractions of each early-exit form (the single graph one image at a time, the stage loop),
  each exit's accuracy alone, the trunk's accuracy;
- mean per-sample latency at batch 1 of the single graph, the stage loop and the trunk, measured in interleaved
  rounds (same images, same runtime, same threads) so machine load hits all alike;
- what an untaken `If` branch costs: the single graph with every sample leaving at stage 1 against stage 1 alone
  (the same stage graph at the same static batch 1, called directly), median of many calls in interleaved rounds;
- each form's per-stage costs at these threads (what `pick` predicts from);
- the session-call overhead of the runtime (an Identity graph on 1×10), which every extra stage call pays;
- a sweep along the validation Pareto front: measured test accuracy and latency per threshold setting.

Bars (issue 28): b_resnet_fmnist's single graph ≥ 1.9× its trunk at the same threads (1 and 2) on ONNX Runtime and
on OpenVINO FP32 at ≤ 0.5 pt loss; INT8 early exit faster than the INT8 trunk (b_resnet, b_alexnet) on both
runtimes; b_lenet_fmnist ≥ 1.0× on ONNX Runtime. Writes --out (JSON) and the PNG beside it.

    python studies/early_exit.py [--models b_resnet_fmnist ...] [--configs onnx:fp32 openvino:fp32] [--threads 1 2]
    python studies/early_exit.py --table [--out FILE]     # the README block from the results
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgecnn.data import load_dataset, preprocess
from edgecnn.export import export_registered, runtime
from edgecnn.export.early_exit import interleaved_per_sample_ms
from edgecnn.export.early_exit_session import FORMS, form_thresholds, median_call_ms
from edgecnn.export.early_exit_thresholds import exit_indices
from edgecnn.export.passes import host_info, tool_versions
from edgecnn.registry import get_config

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
PAPER_GAIN = {"b_lenet_fmnist": 5.4, "b_alexnet_fmnist": 1.5, "b_resnet_fmnist": 1.9}
MODELS = tuple(PAPER_GAIN)
CONFIGS = ("onnx:fp32", "onnx:fp16", "onnx:int8", "openvino:fp32", "openvino:fp16", "openvino:int8")


def interleaved(runs: dict[str, Callable[[np.ndarray], Any]], images: np.ndarray, rounds: int) -> dict[str, Any]:
    """Mean per-sample ms of each callable over `rounds` alternating passes over `images` (after a warm-up)."""
    samples = interleaved_per_sample_ms(runs, images, rounds)
    return {name: {"mean_ms": statistics.mean(v), "median_round_ms": statistics.median(v),
                   "rounds_ms": [round(x, 5) for x in v]} for name, v in samples.items()}


def call_overhead_ms(runtime_name: str, threads: int, repeats: int = 2000) -> float:
    """Median ms of one call to the runtime on an Identity graph: what every extra stage call costs at least."""
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
    section = manifest["early_exit"]
    tuning = section["per_precision"][manifest["precision"]]
    backend, default_form = tuning["runtime"], section.get("form", "stages")
    forms = [f for f in FORMS if f == "stages" or "graph" in section]
    with contextlib.ExitStack() as stack:
        sessions = {f: stack.enter_context(runtime.load(artifact, backend="early_exit", threads=threads, form=f))
                    for f in forms}
        trunk = stack.enter_context(runtime.load(artifact, backend=backend, threads=threads, trunk=True))
        staged = sessions["stages"]
        entropies, logits = zip(*(staged.exit_outputs(images[i:i + 500]) for i in range(0, len(images), 500)))
        entropies, logits = np.concatenate(entropies, axis=1), np.concatenate(logits, axis=1)
        predictions = logits.argmax(2)
        index = np.arange(len(labels))
        # what each form decides at batch 1 (the single graph one image at a time: the way it runs)
        exits = {f: np.concatenate([s.classify(images[i:i + 1]).exits for i in range(len(images))]) for f, s in
                 sessions.items()}
        trunk_pred = np.concatenate([trunk.run(images[i:i + 1]).argmax(1) for i in range(len(images))])
        sample = images[:timed]
        timing = interleaved({**{f: s.run for f, s in sessions.items()}, "trunk": trunk.run}, sample, rounds)
        costs = {f: s.stage_costs(images[:1]) for f, s in sessions.items()}
        untaken = untaken_branch_cost(sessions["graph"], artifact, images[:1], rounds) if "graph" in sessions else None
        # Sweep: settings along the validation Pareto front, measured on the test images in the default form.
        ee = sessions[default_form]
        front = tuning["sweep"]
        picks = sorted({int(round(i)) for i in np.linspace(0, len(front) - 1, min(sweep_points, len(front)))})
        sweep, kept = [], ee.thresholds
        for i in picks:
            ee.thresholds = front[i]["thresholds"]
            at = exit_indices(ee.thresholds, entropies)
            ms = interleaved({"early_exit": ee.run}, sample[: max(50, timed // 4)], 1)["early_exit"]["mean_ms"]
            sweep.append({"thresholds": front[i]["thresholds"], "val_accuracy": front[i]["accuracy"],
                          "val_expected_ms": front[i]["expected_ms"],
                          "test_accuracy": float(100 * (predictions[at, index] == labels).mean()), "test_mean_ms": ms,
                          "exit_fractions": [float(f) for f in np.bincount(at, minlength=len(logits)) / len(at)]})
        ee.thresholds = kept
        info = {f: s.info() for f, s in sessions.items()}
    trunk_acc = float(100 * (trunk_pred == labels).mean())
    trunk_ms = timing["trunk"]["mean_ms"]
    by_form = {}
    for f in forms:
        acc = float(100 * (predictions[exits[f], index] == labels).mean())
        by_form[f] = {"thresholds": info[f]["thresholds"], "mean_ms": round(timing[f]["mean_ms"], 5),
                      "speedup_vs_trunk": round(trunk_ms / timing[f]["mean_ms"], 3),
                      "accuracy": round(acc, 3), "loss_pt": round(trunk_acc - acc, 3),
                      "exit_fractions": [round(float(x), 4) for x in np.bincount(exits[f], minlength=len(logits))
                                         / len(labels)],
                      "same_exits_as_the_rule": round(float((exits[f] == exit_indices(info[f]["thresholds"],
                                                                                      entropies)).mean()), 5),
                      "stage_ms_batch1": [round(c, 5) for c in costs[f]],
                      "threads": info[f]["threads"], "stage_threads": info[f]["stage_threads"]}
    chosen = by_form[default_form]
    return {
        "model": name, "target": manifest["target"], "precision": manifest["precision"], "runtime": backend,
        "executed_precision": info[default_form]["executed_precision"], "threads": threads,
        "form": default_form, "form_chosen_by": tuning.get("form_chosen_by"), "forms": by_form,
        "thresholds": chosen["thresholds"], "tuned_on": tuning["tuned_on"],
        "test_images": len(labels), "timed_images": timed, "rounds": rounds,
        "accuracy": {"early_exit": chosen["accuracy"], "trunk": round(trunk_acc, 3), "loss_pt": chosen["loss_pt"],
                     "each_exit_alone": [round(float(100 * (p == labels).mean()), 3) for p in predictions]},
        "exit_fractions": chosen["exit_fractions"],
        "val": {k: tuning.get(k) for k in ("accuracy", "final_exit_accuracy", "exit_fractions", "expected_ms",
                                           "stage_ms", "exit_accuracy", "trunk_ms", "expected_speedup_vs_trunk",
                                           "forms")},
        "latency_ms": {"early_exit": chosen["mean_ms"], "trunk": round(trunk_ms, 5), "rounds": timing},
        "stage_ms_batch1": chosen["stage_ms_batch1"],
        "untaken_branch": untaken,
        "speedup_vs_trunk": chosen["speedup_vs_trunk"], "paper_gain": PAPER_GAIN.get(name),
        "meets_paper_gain": bool(chosen["speedup_vs_trunk"] >= PAPER_GAIN.get(name, float("inf"))),
        "within_0_5_pt": bool(chosen["loss_pt"] <= 0.5 + 1e-9),
        "sweep": sweep,
    }


def untaken_branch_cost(graph: Any, artifact: Path, sample: np.ndarray, rounds: int,
                        calls: int = 500) -> dict[str, Any]:
    """The single graph with the sample sent out at stage 1 (every later stage in the untaken branch) against stage 1
    alone at the same static batch 1 on the same runtime and threads, both called directly: medians of `calls`
    calls per round, interleaved, then the median over rounds."""
    section = graph.manifest["early_exit"]
    stage = section["stages"][0]
    fmt = graph._graph.model_format
    with tempfile.TemporaryDirectory() as tmp:
        static = f"stage1{Path(stage['model_files'][fmt]).suffix}"
        shape = [1, *stage["input"]["shape"][1:]]
        _static_batch1(artifact / stage["model_files"][fmt], Path(tmp) / static, fmt, shape)
        plain = {k: v for k, v in graph.manifest.items() if k != "early_exit"}
        plain.update(input={**stage["input"], "shape": shape, "layout": "NCHW"}, model_files={fmt: static})
        with runtime.open_session(tmp, plain, graph.runtime, graph.threads) as alone:
            kept = graph.thresholds
            graph.thresholds = [math.log(graph.manifest["model"]["num_classes"]) + 1.0] * len(kept)
            x = graph.input_spec.validate(sample)
            runs = {"graph_exit_at_stage1": lambda: graph._run_graph(x), "stage1_alone": lambda: alone._run_all(x)}
            medians: dict[str, list[float]] = {k: [] for k in runs}
            for r in range(rounds):
                for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
                    medians[name].append(median_call_ms(runs[name], calls, warmup=20))
            graph.thresholds = kept
    graph_ms, alone_ms = (statistics.median(medians[k]) for k in runs)
    return {"graph_exit_at_stage1_ms": round(graph_ms, 5), "stage1_alone_ms": round(alone_ms, 5),
            "cost_us": round(1000 * (graph_ms - alone_ms), 2), "calls_per_round": calls, "rounds": rounds,
            "measures": "the If with the later stages untaken, the threshold Gather and the comparison, against "
                        "stage 1's graph alone (both batch 1, static)"}


# The staged loop on ONNX Runtime with each stage's own one-thread pool (what the early-exit session does) or with
# one process-wide intra-op pool of THREADS shared by the stage sessions (`set_global_thread_pool_sizes` +
# `use_per_session_threads = False`): run in a fresh process, since the global pool must exist before the first
# session and then every session of the process must use it. Prints the mean ms per sample.
_POOL_SCRIPT = """
import json, sys, time
import numpy as np, onnxruntime as ort
files, thresholds, threads, shared, images = json.loads(sys.argv[1])
if shared:
    ort.set_global_thread_pool_sizes(threads, 1)
def session(path):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if shared:
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
stages, x = [session(f) for f in files], np.load(images)
def classify(image):
    for k, stage in enumerate(stages):
        outputs = stage.run(None, {"input": image})
        if k == len(stages) - 1 or outputs[1][0] < thresholds[k]:
            return outputs[0]
        image = outputs[2]
for i in range(20):
    classify(x[i:i + 1])
t0 = time.perf_counter()
for i in range(len(x)):
    classify(x[i:i + 1])
print(1000 * (time.perf_counter() - t0) / len(x))
"""


def staged_thread_pools(artifact: Path, threads: int, images: np.ndarray, rounds: int) -> dict[str, Any]:
    """ONNX Runtime's staged loop at `threads`: one pool per stage session of one thread each (edgecnn's choice)
    against one shared intra-op pool of `threads`, each mode a fresh process per round, the modes alternating."""
    manifest = runtime.read_manifest(artifact)
    section = manifest["early_exit"]
    thresholds = form_thresholds(manifest, "stages") or section["thresholds"]
    files = [str(artifact / s["model_files"]["onnx"]) for s in section["stages"]]
    means: dict[str, list[float]] = {"per_stage_one_thread": [], "shared_pool": []}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", images)
        for r in range(rounds):
            for mode in (list(means) if r % 2 == 0 else list(reversed(means))):
                spec = json.dumps([files, thresholds, threads, mode == "shared_pool", str(Path(tmp) / "x.npy")])
                out = subprocess.run([sys.executable, "-c", _POOL_SCRIPT, spec], capture_output=True, text=True,
                                     check=True)
                means[mode].append(float(out.stdout.split()[-1]))
    summary = {mode: round(statistics.mean(v), 5) for mode, v in means.items()}
    return {"threads": threads, "mean_ms": summary, "rounds_ms": means,
            "faster": min(summary, key=summary.get), "images": len(images), "thresholds": thresholds}


def _static_batch1(source: Path, out: Path, fmt: str, shape: list[int]) -> None:
    """A copy of a stage graph with its input fixed at `shape` (batch 1, as the single graph's), for a like-for-like
    timing."""
    if fmt == "onnx":
        import onnx
        model = onnx.load(str(source))
        for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim, shape):
            dim.dim_value = size
        onnx.save(model, str(out))
    else:
        import openvino as ov
        model = ov.Core().read_model(str(source))
        model.reshape({model.inputs[0]: shape})
        ov.save_model(model, str(out), compress_to_fp16=False)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in results}, key=list(PAPER_GAIN).index)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for r in (r for r in results if r["model"] == model):
            label = f"{r['target']} {r['precision']}" + (f" t{r['threads']} {r['form']}" if "form" in r else "")
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
    print("| model | runtime precision | threads | form | early exit ms | trunk ms | speed-up | other form | paper "
          "| accuracy EE · trunk (loss) | exit fractions | each exit alone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in record["results"]:
        acc, form = r["accuracy"], r.get("form", "stages")
        other = [f"{f} {v['speedup_vs_trunk']:.2f}×" for f, v in r.get("forms", {}).items() if f != form]
        print(f"| {r['model']} | {r['runtime']} {r['precision']} | {r['threads']} | {form} | "
              f"{r['latency_ms']['early_exit']:.3f} | {r['latency_ms']['trunk']:.3f} | "
              f"**{r['speedup_vs_trunk']:.2f}×** | "
              f"{', '.join(other) or '—'} | {r['paper_gain']}× | "
              f"{acc['early_exit']:.2f} · {acc['trunk']:.2f} ({acc['loss_pt']:+.2f}) | "
              f"{' / '.join(f'{100 * f:.0f} %' for f in r['exit_fractions'])} | "
              f"{' / '.join(f'{a:.1f}' for a in acc['each_exit_alone'])} |")
    untaken = [r for r in record["results"] if r.get("untaken_branch")]
    if untaken:
        print("\nWhat an untaken `If` branch costs: the single graph with the sample leaving at stage 1 against "
              "stage 1 alone (batch 1, static, called directly; median of interleaved rounds):\n")
        print("| runtime | model | precision | threads | stage 1 alone ms | graph, exit at stage 1 ms "
              "| difference µs |")
        print("|---|---|---|---|---|---|---|")
        for r in untaken:
            u = r["untaken_branch"]
            print(f"| {r['runtime']} | {r['model']} | {r['precision']} | {r['threads']} | {u['stage1_alone_ms']:.4f} | "
                  f"{u['graph_exit_at_stage1_ms']:.4f} | {u['cost_us']:+.1f} |")
    overhead = record["session_call_overhead_ms"]
    print("\nSession-call overhead (an Identity graph, batch 1): "
          + ", ".join(f"{rt} {1000 * ms:.0f} µs" for rt, ms in sorted(overhead.items())) + ".")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), help="TARGET:PRECISION pairs")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts, each timed (default: 1)")
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
    torch.set_num_threads(min(args.threads))
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
                for threads in args.threads:
                    r = bench_artifact(art, name, threads, images, labels.numpy(), args.timed, args.rounds,
                                       args.sweep_points)
                    if r["runtime"] == "onnxruntime" and threads > 1:
                        r["staged_thread_pools"] = staged_thread_pools(art, threads, images[:args.timed],
                                                                       args.rounds)
                    r["export_s"] = round(export_s, 1)
                    r["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: how busy
                    results.append(r)
                    print(f"{name} {config} threads {threads}: " + ", ".join(
                        f"{f} {v['speedup_vs_trunk']:.2f}× ({v['mean_ms']:.4f} ms, {v['accuracy']:.2f}%)"
                        for f, v in r["forms"].items()) + f" vs trunk {r['latency_ms']['trunk']:.4f} ms "
                        f"{r['accuracy']['trunk']:.2f}%; default {r['form']}, exits {r['exit_fractions']}",
                        flush=True)
    for rt in sorted({r["runtime"] for r in results}):
        overhead[rt] = round(call_overhead_ms(rt, min(args.threads)), 5)
    # Runs of other models/configs already in the file stay (one run per model × target × precision × threads).
    if args.out.is_file():
        earlier = json.loads(args.out.read_text())
        key = lambda r: (r["model"], r["target"], r["precision"], r["threads"])  # noqa: E731
        fresh = {key(r) for r in results}
        results = [r for r in earlier.get("results", []) if key(r) not in fresh] + results
        overhead = {**earlier.get("session_call_overhead_ms", {}), **overhead}
    record = {"benchmark": "early_exit", "last_command": "python studies/early_exit.py " +
              " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                       for k, v in vars(args).items() if k not in ("out", "table")),
              "bars": {"paper_gain": PAPER_GAIN, "b_resnet_fmnist_single_graph_min": 1.9, "max_loss_pt": 0.5,
                       "int8_early_exit_faster_than_int8_trunk": ["b_resnet_fmnist", "b_alexnet_fmnist"],
                       "b_lenet_fmnist_onnxruntime_min": 1.0},
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
