"""`edgecnn bench` (time artifacts against accuracy), `edgecnn report` (Markdown + PNG) and `edgecnn pick`.

The heavy modules (the harness, runtimes, matplotlib) are imported inside the command functions, so
building the parser stays cheap.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from edgecnn.cli.args import add_calibration, add_description, add_output, calibration_options, list_of
from edgecnn.validation import arg_type, non_negative_float, positive_float, positive_int


def _backend_runtimes() -> list[str]:
    """Every backend's runtime, the eager reference (torch) first, then by name, as edgecnn.export.backends loads
    them: the module names of export/backends/ (each is named as its runtime), read from the folder rather than
    imported, so that `edgecnn report` and `edgecnn pick`, registered here too, do not load the export stage
    (tests/test_backend_conformance.py holds this to the registry)."""
    import importlib.util
    import pkgutil

    folders = [str(Path(p) / "backends") for p in importlib.util.find_spec("edgecnn.export").submodule_search_locations]
    return sorted((m.name for m in pkgutil.iter_modules(folders) if not m.name.startswith("_")),
                  key=lambda name: (name != "torch", name))


DEFAULT_RUNTIMES = ",".join(_backend_runtimes())   # "torch,onnxruntime,openvino,tensorrt"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="time models on runtimes × precisions against their accuracy",
        description="Export (or reuse) each model's artifact per runtime, precision and batch, time every "
                    "configuration after warm-up in interleaved rounds (A B C A B C …) with threads pinned "
                    "through each runtime's own option, measure test accuracy and top-1 agreement with PyTorch "
                    "FP32, and write one results JSON (rewritten after every model and batch, so Ctrl-C keeps "
                    "what finished). Combinations a runtime cannot do here are listed as skipped with the reason. "
                    "A multi-exit (BranchyNet) model runs its exit loop at the stored thresholds, timed beside its "
                    "own trunk in the same rounds.")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="zoo names or shell patterns such as '*_fmnist', edgecnn checkpoints (runs/x/x.safetensors), "
                        "ONNX files and artifact folders (timed as they are, never exported again), side by side")
    p.add_argument("--runtimes", "--targets", dest="runtimes", type=list_of(), default=DEFAULT_RUNTIMES.split(","),
                   metavar="LIST", help=f"runtimes, comma-separated: {DEFAULT_RUNTIMES} (torch is the eager FP32 "
                                        "reference; default: all of them; --targets: the old name, kept for one "
                                        "release)")
    p.add_argument("--precisions", type=list_of(), metavar="LIST",
                   help="comma-separated (default: every precision some target exports)")
    p.add_argument("--batch", type=list_of(arg_type(positive_int, "--batch")), default=[1], metavar="LIST",
                   help="batch sizes, comma-separated (one static-batch artifact each; default: 1)")
    p.add_argument("--threads", type=list_of(arg_type(positive_int, "--threads")), metavar="LIST",
                   help=f"intra-op threads, comma-separated (default: all {os.cpu_count()} logical cores)")
    p.add_argument("--warmup-s", type=arg_type(non_negative_float, "--warmup-s"), default=2.0,
                   help="seconds of untimed calls per configuration before the rounds (default: 2)")
    timing = p.add_mutually_exclusive_group()
    timing.add_argument("--duration-s", type=arg_type(positive_float, "--duration-s"),
                        help="timed seconds per configuration, split over the rounds (default: 10)")
    timing.add_argument("--iters", type=arg_type(positive_int, "--iters"),
                        help="timed calls per configuration instead of a duration")
    p.add_argument("--rounds", type=arg_type(positive_int, "--rounds"), default=5,
                   help="interleaved rounds the timing is split into (default: 5)")
    p.add_argument("--peers", action="store_true",
                   help="also time what a user would pick instead, built from the same FP32 ONNX: "
                        "ONNX Runtime quantize_static and NNCF defaults, OpenVINO reading the ONNX")
    add_description(p, data_help="accuracy dataset, instead of each model's own (default: the weights' own test "
                                 "split and, for INT8, their training split to calibrate on: a checkpoint's sidecar "
                                 "says which, Fashion-MNIST for the zoo's committed weights; models without a dataset "
                                 "are timed only). Every record says which dataset it was measured on")
    p.add_argument("--data-root", help="where the named dataset lives")
    p.add_argument("--accuracy-samples", type=arg_type(positive_int, "--accuracy-samples"),
                   help="test images for accuracy (default: the whole test split)")
    p.add_argument("--peer-calib-samples", "--calibration-samples", dest="peer_calib_samples",
                   type=arg_type(positive_int, "--peer-calib-samples"), default=300,
                   help="train images the --peers calibrate on (300 is NNCF's default subset; --calibration-samples: "
                        "the old name)")
    add_calibration(p, profile_threads=False)
    p.add_argument("--cache", type=Path, default=Path("artifacts/bench"),
                   help="artifact cache; an artifact whose manifest matches is reused (default: artifacts/bench)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.json", help="results file to write")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (same settings and machine): its finished "
                        "(model, batch) groups are kept, the rest measured; more models may be added. A file edited "
                        "since edgecnn wrote it, or whose artifacts changed, is refused")
    add_output(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "report", help="turn benchmark results into Markdown + PNG plots",
        description="Merge results files (from any machines; the machine becomes a column) into DIR/README.md "
                    "with latency-vs-accuracy plots and their Pareto fronts per architecture, latency bars with "
                    "their spread, FP16/BF16/INT8 speed-up and accuracy-drop tables and the peers beside edgecnn.")
    p.add_argument("results", nargs="+", type=Path, metavar="RESULTS.json")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="report directory")
    p.add_argument("--force", action="store_true", help="replace an earlier report in DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "pick", help="which configuration meets a latency budget with the least accuracy lost",
        description="Rank the measured configurations within --budget-ms (per call at --batch) by accuracy, "
                    "and say why every other one is excluded. Without --results it reads the committed results "
                    "for this machine's CPU.")
    p.add_argument("--budget-ms", type=arg_type(positive_float, "--budget-ms"), required=True,
                   help="latency budget per call, in milliseconds")
    p.add_argument("--max-test-drop", "--max-drop", dest="max_test_drop",
                   type=arg_type(non_negative_float, "--max-test-drop"), metavar="PT",
                   help="most test top-1 (points) a candidate may lose against its model's PyTorch FP32 (default: no "
                        "limit; --max-drop: the old name, which export uses for the validation drop INT8 may cost)")
    p.add_argument("--batch", type=arg_type(positive_int, "--batch"), default=1, help="batch size (default: 1)")
    p.add_argument("--statistic", choices=("mean", "p50", "p90", "p99"), default="p50",
                   help="latency statistic held to the budget (default: p50)")
    p.add_argument("--results", type=Path, nargs="+", metavar="FILE", help="results files (default: committed)")
    p.add_argument("--any-machine", action="store_true",
                   help="use results measured on another machine (otherwise they are refused or excluded)")
    p.add_argument("--top", type=arg_type(positive_int, "--top"), default=10, help="candidates to list (default: 10)")
    p.set_defaults(func=cmd_pick)


def cmd_bench(args: argparse.Namespace) -> int:
    from edgecnn.benchmarks.harness import run_sweep
    from edgecnn.benchmarks.settings import SweepSettings

    calibration = calibration_options(args, int8=True)  # as `edgecnn export --precision int8` reads the flags
    settings = SweepSettings(
        models=args.models, runtimes=args.runtimes, precisions=args.precisions, batches=args.batch,
        threads=args.threads, warmup_s=args.warmup_s,
        duration_s=None if args.iters else (args.duration_s or 10.0), iters=args.iters, rounds=args.rounds,
        peers=args.peers, data=args.data, data_root=args.data_root, accuracy_samples=args.accuracy_samples,
        mean=args.mean, std=args.std, classes=args.classes, calibration_samples=args.peer_calib_samples,
        calibrator=calibration.calibrator, calib_samples=args.calib_samples, calib_data=args.calib_data,
        max_drop=args.max_drop, placement=args.placement, fallback=args.fallback, quantizer=args.quantizer,
        cache_dir=args.cache)
    results = run_sweep(settings, args.out, force=args.force, resume=args.resume,
                        progress=not args.no_progress)
    _print_records(results)
    print(f"{len(results['records'])} configurations measured, {len(results['skipped'])} skipped → {args.out}")
    return 0


def _print_records(results: dict[str, Any]) -> None:
    from edgecnn.benchmarks.harness import RECORD_EXTENSIONS
    from edgecnn.benchmarks.schema import flow_name
    from edgecnn.cli.table import format_table

    rows = []
    for r in results["records"]:
        acc, lat = r["accuracy"], r["latency_ms"]
        rows.append([r["model"], flow_name(r), r["runtime"], r["precision"], r["executed_precision"] or "?",
                     r["batch"], r["threads"], f"{lat['mean']:.3f}", f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                     f"{r['spread_pct']:.1f}%", f"{r['throughput']:.0f}",
                     f"{acc['top1']:.2f}%" if acc else "—",
                     f"{acc['agreement_vs_torch_fp32']:.1f}%" if acc and acc.get("agreement_vs_torch_fp32") is not None
                     else "—"])
    if rows:
        print(format_table(rows, ["model", "flow", "runtime", "precision", "executed", "batch", "threads",
                                  "mean ms", "p50 ms", "p90 ms", "spread", "samples/s", "top-1", "agree"]))
    for extension in RECORD_EXTENSIONS.values():
        headers, extra = extension.table(results["records"])
        if extra:
            print()
            print(format_table(extra, headers))
    for line in weights_and_data(results["records"]):
        print(line)
    for s in results["skipped"]:
        print(f"skipped: {s['model']} {s['runtime']} {s['precision']}: {s['reason']}")


def measured_on(record: dict[str, Any]) -> str:
    """' on DATA test (N images; weights sha256 …)': which data and weights a record's top-1 belongs to."""
    from edgecnn.model_ref import WeightsData
    from edgecnn.text import printable

    accuracy = record["accuracy"]
    data = WeightsData.from_record(record.get("dataset") or {})
    sha = record.get("weights_sha256")
    return printable(f" on {data.label if data else accuracy.get('dataset', '?')} {accuracy.get('split', 'test')} "
                     f"({accuracy.get('samples', '?')} images{f'; weights sha256 {sha[:16]}' if sha else ''})")


def weights_and_data(records: list[dict[str, Any]]) -> list[str]:
    """One line per model: which weights (SHA-256) and which data its records' accuracy was measured on."""
    from edgecnn.model_ref import WeightsData
    from edgecnn.text import printable

    lines: dict[str, str] = {}
    for r in records:
        if r["flow"] != "edgecnn" or r["model"] in lines and r.get("dataset") is None:
            continue
        data = WeightsData.from_record(r.get("dataset") or {})
        sha = r.get("weights_sha256")
        said = data.said if data else ("accuracy unknown: latency only (synthetic calibration)" if r.get("latency_only")
                                       else "no dataset known for these weights: timed only (pass --data)")
        lines[r["model"]] = printable(f"{r['model']}: weights {r.get('weights') or '?'}"
                                      f"{f' sha256 {sha[:16]}' if sha else ''}; data: {said}")
    return list(lines.values())


def cmd_report(args: argparse.Namespace) -> int:
    from edgecnn.benchmarks.report import write_report
    from edgecnn.benchmarks.schema import read_results

    results = [read_results(p) for p in args.results]
    index = write_report(results, args.out, force=args.force)
    print(f"report → {index}")
    return 0


def _confirmation_line(best: Any, budget_ms: float) -> str:
    """What the one measurement of a predicted early-exit setting found, against its prediction and the budget."""
    measured = best.confirmation
    if "not_measured" in measured:
        return f"predicted, not measured: {measured['not_measured']}"
    off = 100 * (measured["latency_ms"] / best.latency_ms - 1)
    drift = measured["machine_drift"]
    verdict = "within the budget" if measured["latency_ms"] <= budget_ms else "OVER the budget"
    return (f"confirmed by one measurement: {measured['latency_ms']:.3f} ms per sample ({off:+.1f} % against the "
            f"prediction; {verdict}), {measured['top1']:.2f}% top-1 (predicted {best.accuracy:.2f}%) over "
            f"{measured['images']} images, {measured['timed_images']} timed one at a time in {measured['rounds']} "
            f"rounds; the record's own thresholds, timed in the same rounds, ran {100 * (drift - 1):+.1f} % against "
            f"the record (the machine's load then and now): against the prediction moved by as much, "
            f"{100 * (measured['latency_ms'] / (best.latency_ms * drift) - 1):+.1f} %")


def cmd_pick(args: argparse.Namespace) -> int:
    from edgecnn.benchmarks.pick import confirm, load_for_pick, pick
    from edgecnn.cli.table import format_table
    from edgecnn.text import printable

    results = load_for_pick(args.results, any_machine=args.any_machine)
    answer = pick(results, args.budget_ms, args.max_test_drop, args.batch, args.statistic, args.any_machine)
    drop = f", at most {answer.max_drop:g} pt below FP32" if answer.max_drop is not None else ""
    # names, paths and reasons come from the results files: escaped, so none can drive the terminal
    print(printable(f"budget {answer.budget_ms:g} ms ({answer.statistic} per call, batch {answer.batch}){drop}; "
                    f"results: {', '.join(answer.sources)}"))
    if answer.chosen:
        rows = [[i + 1, c.record["model"], c.record["runtime"],
                 " ".join(filter(None, (c.record["precision"], c.record.get("variant"))))
                 + (f" at [{', '.join(f'{t:.3g}' for t in c.thresholds)}], predicted" if c.predicted else ""),
                 f"{c.record['threads']}{' (over)' if c.oversubscribed else ''}",
                 f"{c.latency_ms:.3f}" + ("" if c.statistic == answer.statistic else f" ({c.statistic})"),
                 f"{c.accuracy:.2f}%", f"{c.drop:+.2f}" if c.drop is not None else "—",
                 c.machine] for i, c in enumerate(answer.chosen[:args.top])]
        print(format_table([[printable(str(cell)) for cell in row] for row in rows],
                           ["rank", "model", "runtime", "precision", "threads", f"{answer.statistic} ms", "top-1",
                            "drop pt", "machine"]))
        best = confirm(answer.chosen[0])
        over = (f"; timed with {best.record['threads']} threads, more than its machine's logical cores "
                "(oversubscribed): its timings are distorted, measure it again with fewer") if best.oversubscribed else ""
        print(f"pick: {best.label}, {best.latency_ms:.3f} ms, {best.accuracy:.2f}% top-1{measured_on(best.record)}{over}")
        for note in answer.notes:
            print(f"tie: {note}")
        if best.predicted:
            print(printable(_confirmation_line(best, answer.budget_ms)))
    else:
        print("nothing meets the budget: raise --budget-ms or --max-drop, or measure a smaller model")
    if answer.excluded:
        print(f"\nexcluded ({len(answer.excluded)}):")
        for c in answer.excluded:
            print(f"  {c.label}: {printable(c.reason)}")
    return 0 if answer.chosen else 1
