"""The measured float placements of issue 27, timed here and written as JSON under benchmarks/results/.

    .venv/bin/python studies/float_placement.py placement --threads 1    # --placement fast vs FP32 and INT8
    .venv/bin/python studies/float_placement.py fallback --threads 1     # --fallback cost vs sensitivity
    .venv/bin/python studies/float_placement.py table FILE [FILE ...]      # the Markdown tables of docs/explain.md

placement: per model, the FP32 artifact, the default INT8 one and the `--placement fast` one (`--target`, ONNX
Runtime by default; `--threads` for the placement's own timings too), loaded together and timed in interleaved
rounds (A B C A B C …);
the bar is `--placement fast` no slower than FP32 (the sign test of `edgecnn.benchmarks.stats.no_slower`) at
≤ 0.5 pt drop on the validation split (the test split's drop beside it where the export scored it).
fallback: per model, INT8 with `--calibrator entropy --max-drop PT` (a calibrator that drops more than PT here), once
with `--fallback sensitivity` and once with `--fallback cost` (ONNX Runtime; on OpenVINO sensitivity is NNCF's
accuracy control), timed with FP32 in one interleaved run; both must
meet the drop on the validation split, and the cost one is no slower.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
PLACEMENT_MODELS = ("lenet5_fmnist", "pyramidnet_fmnist", "bn_inception_fmnist", "inception_v3_fmnist")
FALLBACK_MODELS = ("resnet18_fmnist", "alexnet_fmnist", "vgg11_bn_fmnist", "googlenet_fmnist")
MAX_DROP_PT = 0.5   # the placement bar's accuracy bound
EARLY_EXIT_IMAGES = 2000  # test images an early-exit artifact is timed and scored on, one at a time


def _export(name: str, target: str, out: Path, precision: str, threads: int, **calibration: Any) -> dict[str, Any]:
    from edgecnn.calibration import CalibrationOptions
    from edgecnn.export.pipeline import export_registered

    options = CalibrationOptions(**calibration, profile_threads=threads) if precision == "int8" else None
    # a parity failure is recorded (the artifact is written), not raised: the bars are latency and drop
    return export_registered(name, target, precision, out, calibration=options, fail_on_parity=False).manifest


def _timed(name: str, artifacts: dict[str, Path], threads: int, rounds: int, iters: int) -> dict[str, Any]:
    """Round medians of every variant, loaded together, interleaved; each against FP32 by the sign test. An early-exit
    artifact runs its exit rule on test images one at a time (its exits are the data's): per-round mean ms per image,
    and its accuracy on those images."""
    import numpy as np

    from edgecnn.benchmarks.stats import no_slower, round_medians
    from edgecnn.export import read_manifest, runtime

    early_exit = "early_exit" in read_manifest(artifacts["fp32"], verify=False)
    sessions = {k: runtime.load(path, threads=threads, **({"backend": "early_exit"} if early_exit else {}))
                for k, path in artifacts.items()}
    accuracy = None
    if early_exit:
        from edgecnn.data import load_dataset, preprocess
        from edgecnn.export.early_exit import interleaved_per_sample_ms
        from edgecnn.registry import get_config

        images_u8, labels = load_dataset("fashion_mnist", "test").get_batch(range(EARLY_EXIT_IMAGES))
        images = preprocess(images_u8, get_config(name)).numpy()
        per_round = interleaved_per_sample_ms({k: s.run for k, s in sessions.items()}, images, rounds)
        accuracy = {k: round(float(100 * (np.concatenate([s.run(images[i:i + 1]) for i in range(len(images))])
                                          .argmax(1) == labels.numpy()).mean()), 2) for k, s in sessions.items()}
    else:
        batch, *rest = sessions["fp32"].input_spec.shape
        x = np.random.default_rng(0).standard_normal((batch or 1, *rest)).astype(np.float32)
        per_round = round_medians({k: (lambda s=s: s.run(x)) for k, s in sessions.items()}, rounds, iters)
    return {"median_ms": {k: round(statistics.median(v), 4) for k, v in per_round.items()},
            "rounds_median_ms": {k: [round(t, 4) for t in v] for k, v in per_round.items()},
            "versus_fp32": {k: no_slower(v, per_round["fp32"]) for k, v in per_round.items() if k != "fp32"},
            **({"early_exit_test_accuracy": accuracy, "early_exit_images": EARLY_EXIT_IMAGES} if early_exit else {})}


def _test_drop(manifest: dict[str, Any]) -> float | None:
    """The drop on the whole test split, where the export could score it."""
    return manifest["parity"][0].get("test_split", {}).get("drop")


def placement_model(name: str, target: str, work: Path, threads: int, rounds: int, iters: int) -> dict[str, Any]:
    manifests = {"fp32": _export(name, target, work / "fp32", "fp32", threads),
                 "int8": _export(name, target, work / "int8", "int8", threads),
                 "int8_fast": _export(name, target, work / "int8_fast", "int8", threads, placement="fast")}
    timing = _timed(name, {k: work / k for k in manifests}, threads, rounds, iters)
    placement = manifests["int8_fast"]["calibration"]["placement"]
    drop = manifests["int8_fast"]["calibration"]["validation_drop"]
    early_exit = {k: m["early_exit"]["per_precision"][m["precision"]]["accuracy"]
                  for k, m in manifests.items() if "early_exit" in m}
    if early_exit:   # what the device runs is the exit rule: its validation accuracy at the tuned thresholds
        drop = max(drop, round(early_exit["fp32"] - early_exit["int8_fast"], 2))
    return {"model": name, "target": target, **timing,
            **({"early_exit_validation_accuracy": early_exit,
                "stage_placements": [{k: v for k, v in stage["int8"]["placement"].items() if k != "machine"}
                                     for stage in manifests["int8_fast"]["early_exit"]["stages"]]}
               if early_exit else {}),
            "placement": {k: v for k, v in placement.items() if k != "machine"},
            "validation_drop_pt": {k: m["calibration"]["validation_drop"] for k, m in manifests.items() if k != "fp32"},
            "test_drop_pt": {k: _test_drop(m) for k, m in manifests.items() if k != "fp32"},
            "bars": {"int8_no_faster_than_fp32_without_placement": timing["versus_fp32"]["int8"]["median_ratio"] >= 1,
                     "fast_no_slower_than_fp32": timing["versus_fp32"]["int8_fast"]["no_slower"],
                     "fast_drop_within_0.5pt": drop <= MAX_DROP_PT}}


def fallback_model(name: str, target: str, work: Path, threads: int, rounds: int, iters: int, max_drop: float,
                   calibrator: str) -> dict[str, Any]:
    manifests = {"fp32": _export(name, target, work / "fp32", "fp32", threads)}
    for fallback in ("sensitivity", "cost"):
        started = time.perf_counter()
        manifests[fallback] = _export(name, target, work / fallback, "int8", threads, calibrator=calibrator,
                                      max_drop=max_drop, fallback=fallback)
        manifests[fallback]["seconds"] = round(time.perf_counter() - started, 1)
    timing = _timed(name, {k: work / k for k in manifests}, threads, rounds, iters)
    record = {"model": name, "target": target, **timing, "variants": {}}
    for fallback in ("sensitivity", "cost"):
        c = manifests[fallback]["calibration"]
        record["variants"][fallback] = {
            "validation_drop_pt": c["validation_drop"], "first_int8_drop_pt": round(
                c["fp32_validation_accuracy"] - c["scores_validation_accuracy"][calibrator], 2),
            "nodes_to_exclude": c["nodes_to_exclude"], "test_drop_pt": _test_drop(manifests[fallback]),
            "parity": {k: manifests[fallback]["parity"][0].get(k) for k in ("passed", "top1_agreement")},
            "export_seconds": manifests[fallback]["seconds"],
            "fallback": {k: v for k, v in (c["fallback"] or {}).items() if k not in ("machine",)}}
    ratio = statistics.median(a / b for a, b in zip(record["rounds_median_ms"]["cost"],
                                                    record["rounds_median_ms"]["sensitivity"]))
    record["cost_over_sensitivity_median_ratio"] = round(ratio, 3)
    record["bars"] = {"both_meet_max_drop": all(v["validation_drop_pt"] <= max_drop
                                                for v in record["variants"].values()),
                      "cost_no_slower_than_sensitivity": ratio <= 1.0}
    return record


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    from edgecnn.benchmarks.machine import all_tool_versions, machine_info

    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "threads": args.threads,
            "machine": machine_info(), "tools": all_tool_versions(), "models": []}


def _write(path: Path, payload: dict[str, Any]) -> None:
    from edgecnn.atomic import atomic_write

    atomic_write(path, json.dumps(payload, indent=1) + "\n")


def _host(machine: dict[str, Any]) -> str:
    """This machine as the results files name it: CPU, the speed-deciding flags that tell the project's hosts apart,
    logical cores."""
    flags = machine["cpu_flags"]
    tags = [tag for tag, flag in (("avxvnni", "avx_vnni"), ("amx", "amx_tile")) if flags.get(flag)]
    cpu = re.sub(r"\(r\)|\(tm\)|\bintel\b|\bprocessor\b|\bcpu\b", " ", machine["cpu"].lower())  # marks and filler
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu).strip("-")
    return "-".join([cpu, *tags, str(machine["logical_cores"])])


def run(args: argparse.Namespace) -> None:
    payload = _payload(args)
    out = args.out or RESULTS / f"{args.what}-{args.target}-{args.host or _host(payload['machine'])}-{args.threads}t.json"
    if args.append and out.exists():
        earlier = json.loads(out.read_text())
        if earlier["threads"] != args.threads or earlier.get("max_drop_pt") != payload.get("max_drop_pt") or \
                any(m.get("target", args.target) != args.target for m in earlier["models"]):
            sys.exit(f"float_placement: {out} was measured with other settings; --append keeps the same ones")
        payload["models"] = [m for m in earlier["models"] if m["model"] not in args.models]
        payload["command"] = f"{earlier['command']} ; {payload['command']}"
    if args.what == "fallback":
        payload.update(max_drop_pt=args.max_drop, calibrator=args.calibrator)
    from edgecnn.errors import UserError

    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="edgecnn-placement-") as tmp:
            try:
                record = (placement_model(name, args.target, Path(tmp), args.threads, args.rounds, args.iters)
                          if args.what == "placement" else
                          fallback_model(name, args.target, Path(tmp), args.threads, args.rounds, args.iters,
                                         args.max_drop, args.calibrator))
            except UserError as e:  # an export edgecnn refuses (e.g. no float fallback meets the drop) is a result
                record = {"model": name, "refused": str(e), "median_ms": None, "bars": None}
        payload["models"].append(record)
        _write(out, payload)
        print(json.dumps({"model": name, "median_ms": record["median_ms"], "bars": record["bars"]}), flush=True)


def _ratio(record: dict[str, Any], variant: str) -> str:
    versus = record["versus_fp32"][variant]
    return f"{versus['median_ratio']:.2f}× ({versus['rounds_lost']}/{versus['rounds']} rounds slower)"


def _placement_rows(payload: dict[str, Any]) -> list[str]:
    rows = ["| model | FP32 ms | INT8 ms (INT8/FP32) | `--placement fast` ms (…/FP32) | left in float | drop val · test pt |",
            "|---|---|---|---|---|---|"]
    for r in payload["models"]:
        if r.get("refused"):
            rows.append(f"| {r['model']} | refused: {r['refused']} |||||")
            continue
        ms, stages = r["median_ms"], r.get("stage_placements")
        left = _left_in_float(r["placement"])
        if stages:   # an early-exit artifact: what the device runs is its stages (per image, exit rule applied)
            left = "; ".join([f"trunk: {left}", *(f"stage {k}: {_left_in_float(p)}"
                                                   for k, p in enumerate(stages, 1))])
            accuracy = r["early_exit_test_accuracy"]
            drop = (f"{r['early_exit_validation_accuracy']['fp32'] - r['early_exit_validation_accuracy']['int8_fast']:+.2f}"
                    f" · {accuracy['fp32'] - accuracy['int8_fast']:+.2f} (exit rule, {r['early_exit_images']} images)")
        else:
            drop = f"{r['validation_drop_pt']['int8_fast']:+.2f} · {r['test_drop_pt']['int8_fast']:+.2f}"
        rows.append(f"| {r['model']}{' (early exit, ms per image)' if stages else ''} | {ms['fp32']:.4f} | "
                    f"{ms['int8']:.4f} ({_ratio(r, 'int8')}) | {ms['int8_fast']:.4f} ({_ratio(r, 'int8_fast')}) | "
                    f"{left} | {drop} |")
    return rows


def _left_in_float(placement: dict[str, Any]) -> str:
    left = placement["left_in_float"]
    return left if isinstance(left, str) else ", ".join(left) or "none"


def _fallback_rows(payload: dict[str, Any]) -> list[str]:
    rows = ["| model | FP32 ms | sensitivity ms (graph nodes in float, val · test drop pt) | cost ms (nodes, drop) | "
            "cost / sensitivity | cost chosen by |", "|---|---|---|---|---|---|"]
    for r in payload["models"]:
        if r.get("refused"):
            rows.append(f"| {r['model']} | refused: {r['refused']} |||||")
            continue
        ms, v = r["median_ms"], r["variants"]
        cells = [f"{ms[k]:.4f} ({len(v[k]['nodes_to_exclude'])}, {v[k]['validation_drop_pt']:+.2f} · "
                 f"{v[k]['test_drop_pt']:+.2f})" for k in ("sensitivity", "cost")]
        rows.append(f"| {r['model']} | {ms['fp32']:.4f} | {cells[0]} | {cells[1]} | "
                    f"**{r['cost_over_sensitivity_median_ratio']:.2f}×** | {v['cost']['fallback'].get('chosen_by')} |")
    return rows


def table(paths: list[Path]) -> None:
    """Print each results file as the Markdown table docs/explain.md shows."""
    for path in paths:
        payload = json.loads(path.read_text())
        what = "fallback" if "max_drop_pt" in payload else "placement"
        settings = (f", `--calibrator {payload['calibrator']} --max-drop {payload['max_drop_pt']}`"
                    if what == "fallback" else "")
        print(f"`{path.name}` ({payload['machine']['name']}, {payload['threads']} thread(s){settings}; "
              f"`{payload['command']}`):\n")
        print("\n".join(_placement_rows(payload) if what == "placement" else _fallback_rows(payload)) + "\n")


def main() -> None:
    if sys.argv[1:2] == ["table"]:
        table([Path(a) for a in sys.argv[2:]])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("placement", "fallback"))
    p.add_argument("--models", nargs="*")
    p.add_argument("--target", choices=("onnx", "openvino"), default="onnx")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--max-drop", type=float, default=0.3, help="fallback: --max-drop (default: %(default)s)")
    p.add_argument("--calibrator", default="entropy", help="fallback: --calibrator (default: %(default)s)")
    p.add_argument("--host", help="results file suffix (default: this machine's CPU, the flags that tell it from the "
                                  "project's other hosts and its cores, e.g. amd-epyc-avxvnni-2)")
    p.add_argument("--out", type=Path)
    p.add_argument("--append", action="store_true",
                   help="keep the models already in --out (same what, target and threads) and add these")
    args = p.parse_args()
    args.models = args.models or list(PLACEMENT_MODELS if args.what == "placement" else FALLBACK_MODELS)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    run(args)


if __name__ == "__main__":
    main()
