"""`edgecnn export` (a zoo model → one artifact directory) and `edgecnn inspect` (read one back)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgecnn.cli.table import format_table
from edgecnn.text import printable
from edgecnn.validation import arg_type, non_negative_float, non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from edgecnn.export.onnx_graph import DEFAULT_OPSET, EXPORTERS
    from edgecnn.export.targets import PRECISIONS, TARGETS

    p = sub.add_parser(
        "export", help="export a zoo model to ONNX / OpenVINO IR / TensorRT-ready ONNX",
        description="Fold BatchNorm, write the target's model files and a manifest (hashes, parity against "
                    "PyTorch, tool versions) into one directory, atomically. Without --checkpoint a model's "
                    "committed Fashion-MNIST weights are used; a model without any exports its seeded random "
                    "init, and the manifest says so.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the committed weights, if any)")
    p.add_argument("--target", choices=list(TARGETS), default="onnx", help="default: onnx")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="default: fp32; int8 calibrates on data (options below); bf16: openvino, on CPUs with "
                        "AVX-512 BF16 or AMX")
    _add_calibration_arguments(p)
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=arg_type(positive_int, "--batch"), default=1,
                       help="static batch size of the graph (default: 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis instead")
    p.add_argument("--opset", type=arg_type(positive_int, "--opset"), default=DEFAULT_OPSET, help=f"ONNX opset, 17 or newer (default: {DEFAULT_OPSET})")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto", help="torch's ONNX exporter; auto tries torchscript, then dynamo (default: auto)")
    p.add_argument("--input-size", metavar="HxW", type=_parse_hw,
                   help="spatial input size, if not the model's (e.g. 112x112)")
    p.add_argument("--half-io", action="store_true",
                   help="FP16 ONNX only: take and return float16 (default keeps float32 at the ends)")
    p.add_argument("--parity-samples", type=arg_type(positive_int, "--parity-samples"),
                   help="inputs parity is checked on (default: 64 at fp32, 512 at fp16, int8 and bf16; "
                        "int8 and bf16 also score Fashion-MNIST models on the whole test split)")
    p.add_argument("--seed", type=arg_type(non_negative_int, "--seed"), default=0,
                   help="init seed when there are no weights (default: 0)")
    p.add_argument("--exit-budget", type=arg_type(non_negative_float, "--exit-budget"), metavar="PT",
                   help="multi-exit (BranchyNet) models: validation accuracy the exit thresholds may give up "
                        "against the final exit alone, in points (default: 0.5)")
    p.add_argument("--out", type=Path, help="artifact directory (default: artifacts/NAME-TARGET-PRECISION)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it is an earlier edgecnn artifact (nothing else is ever replaced)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", help="show an artifact's manifest and verify its file hashes",
                       description="Print the manifest of an export as tables and check every file's size "
                                   "and SHA-256; a missing or modified file is an error (exit 2).")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON instead")
    p.set_defaults(func=cmd_inspect)


def _add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    from edgecnn.calibration import CALIBRATOR_NAMES, DEFAULT_SAMPLES, UNLABELLED_CALIBRATOR
    from edgecnn.data import IMAGE_PIXELS_ENV

    g = p.add_argument_group("INT8 calibration (--precision int8)")
    g.add_argument("--calibrator", choices=CALIBRATOR_NAMES,
                   help="range calibrator of the target's quantizer ('default': the library's own defaults, as "
                        "quantize_static or nncf.quantize alone would run); auto tries the target's candidates and "
                        "keeps the first unless another is significantly more accurate on the validation split "
                        f"(default: auto; {UNLABELLED_CALIBRATOR} for a flat --calib-data folder, which has no labels "
                        "to choose on)")
    g.add_argument("--calib-samples", type=arg_type(positive_int, "--calib-samples"), metavar="N",
                   help=f"calibration images, class-balanced, from the training split minus validation "
                        f"(default: {DEFAULT_SAMPLES})")
    g.add_argument("--calib-data", type=Path, metavar="DIR",
                   help="calibrate on this folder instead of the model's dataset: one sub-folder per class, named "
                        "after the model's classes (any case; or by class number), in any order, every class for "
                        "auto and --max-drop, which score on it; or a flat folder of images, which calibrates only "
                        "(auto and --max-drop need labels and are refused). Entries that are not regular files are "
                        f"skipped and counted; images over {IMAGE_PIXELS_ENV} pixels (default: Pillow's limit) are "
                        "refused")
    g.add_argument("--max-drop", type=arg_type(non_negative_float, "--max-drop"), metavar="PT",
                   help="largest validation top-1 drop allowed, in points: ONNX returns the most sensitive nodes to "
                        "float, OpenVINO uses NNCF's accuracy control (default: no bound)")


def _calibration_options(args: argparse.Namespace) -> Any:
    """CalibrationOptions for int8; None otherwise (calibration flags on another precision are refused)."""
    from edgecnn.calibration import CalibrationOptions

    given = {k: v for k, v in (("calibrator", args.calibrator), ("samples", args.calib_samples),
                               ("data", args.calib_data), ("max_drop", args.max_drop)) if v is not None}
    if args.precision != "int8" and not given:
        return None
    options = CalibrationOptions(**given)
    if args.calibrator is None and options.unlabelled_default:
        print(f"edgecnn: note: --calib-data {options.data} has no class sub-folders, so no labelled validation "
              f"images to choose a calibrator on: using --calibrator {options.calibrator} (give another with "
              "--calibrator)", file=sys.stderr)
    return options


def _calibration_lines(m: dict[str, Any]) -> list[str]:
    c = m.get("calibration")
    if not c:
        return []
    samples = c["calibration_samples"]
    lines = [f"calibration: {c['calibrator']} ({c['library_calibrator']}, {c['tool']}) on {samples['samples']} "
             f"samples of {samples['source']}"]
    if c.get("fp32_validation_accuracy") is not None:
        scores = ", ".join(f"{k} {v:.2f}%" for k, v in (c["scores_validation_accuracy"] or {}).items())
        lines.append(f"validation top-1: FP32 {c['fp32_validation_accuracy']:.2f}% → INT8 "
                     f"{c['int8_validation_accuracy']:.2f}% (drop {c['validation_drop']:.2f} pt; tried {scores})")
    if c.get("nodes_to_exclude"):
        lines.append(f"returned to float for --max-drop: {', '.join(c['nodes_to_exclude'])}")
    returned = set(c.get("nodes_to_exclude") or [])
    kept = [n for n in c.get("float_nodes") or [] if n not in returned]
    if kept:
        more = f" and {len(kept) - 6} more" if len(kept) > 6 else ""
        lines.append(f"computing in float (the quantizer's placement, or no INT8 kernel): {', '.join(kept[:6])}{more}")
    for p in m["parity"]:
        if "test_split" in p:
            t = p["test_split"]
            lines.append(f"{p['backend']} test split ({t['inputs']}): FP32 {t['fp32_accuracy']:.2f}% → "
                         f"{m['precision'].upper()} {t['accuracy']:.2f}% (drop {t['drop']:.2f} pt)")
    return lines


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 112x112, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"input size must be positive, got {text!r}")
    return h, w


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def _parity_rows(manifest: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for p in manifest["parity"]:
        tol = f"≤ {p['tolerance']:.1e}" if "tolerance" in p else "—"
        diff = "—" if "max_abs_diff" not in p else "non-finite" if p["max_abs_diff"] is None else \
            f"{p['max_abs_diff']:.2e}"
        agree = f"{100 * p['top1_agreement']:.1f}%" if "top1_agreement" in p else "—"
        backend = f"{p['backend']} ({p['measures']})" if p.get("measures") else p["backend"]
        rows.append([backend, p["samples"], diff, tol, agree, "PASS" if p["passed"] else "FAIL"])
    return rows


PARITY_HEADERS = ["backend", "samples", "max |Δlogit|", "tolerance", "top-1 agree", "parity"]


def cmd_export(args: argparse.Namespace) -> int:
    from edgecnn.export.pipeline import export_registered

    out = args.out or Path("artifacts") / f"{args.name}-{args.target}-{args.precision}"
    result = export_registered(args.name, args.target, args.precision, out, checkpoint=args.checkpoint,
                               seed=args.seed, batch=args.batch, dynamic_batch=args.dynamic_batch,
                               opset=args.opset, exporter=args.exporter, input_size=args.input_size,
                               keep_io_types=not args.half_io, parity_samples=args.parity_samples,
                               overwrite=args.force, progress=not args.no_progress,
                               calibration=_calibration_options(args), exit_budget_pt=args.exit_budget)
    m = result.manifest
    fold = next(p for p in m["passes"] if p["name"] == "fold_batchnorm")
    print(f"{m['model']['name']} → {m['target']} {m['precision']}: {result.path}  "
          f"({m['export']['seconds']:.1f} s; {fold['bn_folded']} BN folded, {fold['bn_to_affine']} as affine)")
    print(format_table([[name, _size(f["bytes"]), f["sha256"][:16]] for name, f in m["files"].items()],
                       ["file", "size", "sha256"]))
    print()
    print(format_table(_parity_rows(m), PARITY_HEADERS))
    for line in _calibration_lines(m):
        print(line)
    for note in m["notes"] + [f"{p['backend']}: {p['diagnosis']}" for p in m["parity"] if "diagnosis" in p]:
        print(f"note: {note}")
    if not result.parity_passed:
        print("edgecnn: parity FAILED: the artifact was written but does not match PyTorch within tolerance",
              file=sys.stderr)
        return 1
    return 0


def _format_shape(spec: dict[str, Any]) -> str:
    return f"{spec['name']}: {'×'.join(str(d) for d in spec['shape'])} {spec['dtype']} {spec.get('layout', '')}".strip()


def _preprocessing_summary(pre: dict[str, Any]) -> str:
    method = pre.get("resize_method") or {"mode": "bilinear"}
    how = ", ".join(f"{k}={v}" for k, v in method.items() if k not in ("mode", "order"))
    return (f"/255, {pre['channels']} channel(s), resize {'×'.join(map(str, pre['resize']))} {method['mode']}"
            f"{f' ({how})' if how else ''}, then (x - mean) / std, mean {pre['mean']}, std {pre['std']}")


# What the early-exit summary line needs; an artifact tuned without a validation split has none of it.
_TUNING_SUMMARY = ("accuracy", "final_exit_accuracy", "accuracy_budget_pt", "expected_ms", "trunk_ms",
                   "expected_speedup_vs_trunk")


def _print_early_exit(m: dict) -> None:
    """The stages of a BranchyNet artifact, with what the validation split did at the tuned thresholds."""
    ee = m["early_exit"]
    tuning = ee["per_precision"].get(m["precision"], {})
    fractions, accuracy, costs = (tuning.get(k) or [None] * len(ee["stages"])
                                  for k in ("exit_fractions", "exit_accuracy", "stage_ms"))
    thresholds = [*ee["thresholds"], None]
    rows = [[str(k + 1), stage["file"], "×".join(map(str, stage["input"]["shape"])),
             ", ".join(n for n in stage["outputs"].values() if n),
             "—" if t is None else f"{t:.4g}", "—" if f is None else f"{100 * f:.1f}%",
             "—" if a is None else f"{a:.2f}%", "—" if c is None else f"{c:.4f}"]
            for k, (stage, t, f, a, c) in enumerate(zip(ee["stages"], thresholds, fractions, accuracy, costs))]
    print(format_table(rows, ["stage", "file", "input", "outputs", "threshold", "exit (val)", "exit alone acc",
                              "stage ms"]))
    if all(tuning.get(k) is not None for k in _TUNING_SUMMARY):
        print(f"early exit on the validation split ({tuning['runtime']}, {m['precision']}): accuracy "
              f"{tuning['accuracy']:.2f}% vs final exit {tuning['final_exit_accuracy']:.2f}% (budget "
              f"{tuning['accuracy_budget_pt']} pt), expected {tuning['expected_ms']:.4f} ms/sample at batch 1 "
              f"vs {tuning['trunk_ms']:.4f} ms for the trunk ({tuning['expected_speedup_vs_trunk']:.2f}× expected); "
              f"trunk: {ee['trunk']['file']}; "
              f"rule: {ee['exit_rule']} ({ee['exit_entropy']})")
    print()


def _escaped(value: Any) -> Any:
    """`value` with every string in it (keys too) made safe to print: names come from a file anyone can edit."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


def _warn_unlisted(directory: Path, manifest: dict[str, Any]) -> None:
    """Name what the artifact folder holds besides its listed files: nothing edgecnn reads, but worth knowing."""
    from edgecnn.export.manifest import shown, unlisted_entries

    extra = unlisted_entries(directory, manifest)
    if extra:
        print(f"edgecnn: warning: {printable(str(directory))} also holds {shown([printable(e) for e in extra])}, "
              "which its manifest does not list: not part of the artifact, never loaded", file=sys.stderr)


def cmd_inspect(args: argparse.Namespace) -> int:
    from edgecnn.export.manifest import read_manifest

    m = read_manifest(args.directory)
    _warn_unlisted(args.directory, m)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    m = _escaped(m)
    model, weights, pre = m["model"], m["model"]["weights"], m["preprocessing"]
    source = weights["source"]
    if source == "checkpoint":
        path, acc = weights.get("path"), weights.get("test_accuracy")
        source = (f"checkpoint {path}" if path else "checkpoint") + \
            (f" (test accuracy {acc:.2f}%)" if acc is not None else "")
    classes = m["class_names"]
    rows = [
        ["model", f"{model['name']} ({model['family']}, zoo v{model['zoo_version']}, {model['params']:,} params)"],
        ["weights", source],
        ["target / precision", f"{m['target']} / {m['precision']} (default backend: {m['default_backend']})"],
        ["input", _format_shape(m["input"])],
        ["output", _format_shape(m["output"])],
        ["preprocessing", _preprocessing_summary(pre)],
        ["classes", f"{len(classes)}: {', '.join(classes[:5])}{', …' if len(classes) > 5 else ''}" if classes
         else f"{model['num_classes']} (no names recorded)"],
        ["calibration", json.dumps(m["calibration"]) if m["calibration"] else "—"],
        ["exported", f"{m['export']['created_utc']} on {m['export']['host']} ({m['export']['cpu']}) "
                     f"in {m['export']['seconds']} s"],
        ["tools", ", ".join(f"{k} {v}" for k, v in m["tools"].items() if v)],
        ["schema", str(m["schema_version"])],
    ]
    if "engine_built" in m.get("target_info", {}):
        rows.insert(3, ["TensorRT engine", "built" if m["target_info"]["engine_built"] else
                        f"not built: {m['target_info'].get('engine_not_built_because', '')}"])
    print(format_table(rows, ["field", "value"]))
    print()
    print(format_table([[name, _size(f["bytes"]), f["sha256"][:16], "ok"] for name, f in m["files"].items()],
                       ["file", "size", "sha256", "hash verified"]))
    print()
    print(format_table(_parity_rows(m), PARITY_HEADERS))
    print()
    if "early_exit" in m:
        _print_early_exit(m)
    print(format_table([[p["name"], f"{p['seconds']:.2f}"] for p in m["passes"]], ["pass", "seconds"]))
    for note in m.get("notes", []):
        print(f"note: {note}")
    return 0
