"""`edgecnn export` (a MODEL → one artifact directory) and `edgecnn inspect` (read one back).

A MODEL is a zoo name, an edgecnn checkpoint, an ONNX file or an artifact folder (`edgecnn.model_ref`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgecnn.cli.args import (MODEL_HELP, add_batch, add_calibration, add_description, add_export, add_output,
                              calibration_options, description_options, export_options)
from edgecnn.cli.table import format_table
from edgecnn.model_ref import data_said, weights_line, weights_said
from edgecnn.text import printable


def register(sub: argparse._SubParsersAction) -> None:
    from edgecnn.export.targets import PRECISIONS, TARGETS

    p = sub.add_parser(
        "export", help="export a model (zoo name, checkpoint, ONNX file) to ONNX / OpenVINO IR / TensorRT-ready ONNX",
        description="Fold BatchNorm, write the target's model files and a manifest (hashes, parity against "
                    "the source model, tool versions) into one directory, atomically. MODEL is a zoo name (its "
                    "committed Fashion-MNIST weights, or --checkpoint; a model without any exports its seeded random "
                    "init, and the manifest says so), an edgecnn checkpoint (its sidecar says the architecture, "
                    "classes, preprocessing and training data) or an ONNX file (say its --mean, --std, --classes and "
                    "--data, or put them in its metadata_props). Parity, test accuracy and INT8 calibration use the "
                    "weights' own dataset; --data names another one, and the output says so.")
    p.add_argument("name", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--checkpoint", help="weights for a zoo name: an edgecnn or timm .safetensors file or a "
                                        "torchvision-style .pth state dict (default: the committed weights, if any)")
    add_description(p)
    p.add_argument("--target", choices=list(TARGETS), default="onnx", help="export format (default: onnx)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="default: fp32; int8 calibrates on data (options below); bf16: openvino, on CPUs with "
                        "AVX-512 BF16 or AMX")
    add_calibration(p)
    add_batch(p, "symbolic batch axis instead")
    add_export(p)
    p.add_argument("--out", type=Path, help="artifact directory (default: artifacts/NAME-TARGET-PRECISION)")
    add_output(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", help="show an artifact's manifest and verify its file hashes",
                       description="Print the manifest of an export as tables and check every file's size "
                                   "and SHA-256; a missing or modified file is an error (exit 2), an artifact whose "
                                   "parity check failed exits 1.")
    p.add_argument("directory", type=Path, metavar="ARTIFACT", help="an artifact folder (or a deploy bundle)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON instead")
    p.set_defaults(func=cmd_inspect)


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
    resolution = c.get("resolution")
    if resolution:
        bound = (f"; --max-drop {c['max_drop']:g} pt acted on as {resolution['max_drop_as_measured_pt']:.2f} pt "
                 "(a whole number of images)" if c.get("max_drop") is not None else "")
        lines.append(f"resolution: {resolution['validation_images']} validation images, one image = "
                     f"{resolution['one_image_pt']:.2f} pt; a calibrator is switched only on a significant gain "
                     f"(McNemar, 5 %){bound}")
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


def _placement_lines(m: dict[str, Any]) -> list[str]:
    """What --placement fast and --fallback cost measured and chose."""
    c = m.get("calibration") or {}
    lines = []
    placement = c.get("placement")
    if placement:
        ratios = ", ".join(f"{k} {v:.2f}×" for k, v in placement["ratio_to_fp32"].items())
        left = placement["left_in_float"]
        lines.append(f"--placement fast: {placement['chosen']} (latency against FP32, same run: {ratios}); left in "
                     f"float for speed: {left if isinstance(left, str) else ', '.join(left) or 'none'}")
    fallback = c.get("fallback") or {}
    for layer in fallback.get("chosen") or []:
        lines.append(f"--fallback cost: {layer['layer']} back to float: +{layer['accuracy_gain_pt']:.2f} pt, "
                     f"{layer['latency_cost_us']:+.1f} µs")
    return lines


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
    from edgecnn.export.api import export

    result = export(args.name, args.target, args.precision, args.out, checkpoint=args.checkpoint,
                    batch=args.batch, dynamic_batch=args.dynamic_batch, overwrite=args.force,
                    progress=not args.no_progress, fail_on_parity=False,
                    calibration=calibration_options(args, args.precision == "int8"), **export_options(args),
                    **description_options(args))
    m = result.manifest
    fold = next(p for p in m["passes"] if p["name"] == "fold_batchnorm")
    print(f"{m['model']['name']} → {m['target']} {m['precision']}: {result.path}  "
          f"({m['export']['seconds']:.1f} s; {fold['bn_folded']} BN folded, {fold['bn_to_affine']} as affine)")
    print(weights_line(m))
    print(format_table([[name, _size(f["bytes"]), f["sha256"][:16]] for name, f in m["files"].items()],
                       ["file", "size", "sha256"]))
    print()
    print(format_table(_parity_rows(m), PARITY_HEADERS))
    for line in _calibration_lines(m) + _placement_lines(m):
        print(line)
    for note in m["notes"] + [f"{p['backend']}: {p['diagnosis']}" for p in m["parity"] if "diagnosis" in p]:
        print(f"note: {note}")
    if not result.parity_passed:
        print("edgecnn: parity FAILED: the artifact was written but does not match its source model within "
              "tolerance; do not deploy it", file=sys.stderr)
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
    if "graph" in ee:
        print(f"single graph: {ee['graph']['file']} (batch 1); default form: {ee.get('form', 'stages')}")
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
    from edgecnn.export.manifest import unlisted_entries
    from edgecnn.export.staging import shown

    extra = unlisted_entries(directory, manifest)
    if extra:
        print(f"edgecnn: warning: {printable(str(directory))} also holds {shown([printable(e) for e in extra])}, "
              "which its manifest does not list: not part of the artifact, never loaded", file=sys.stderr)


def cmd_inspect(args: argparse.Namespace) -> int:
    from edgecnn.export.manifest import read_manifest

    m = read_manifest(args.directory)
    _warn_unlisted(args.directory, m)
    failed = [p["backend"] for p in m["parity"] if not p["passed"]]
    verdict = 1 if failed else 0
    if args.json:
        print(json.dumps(m, indent=2))
        return verdict
    m = _escaped(m)
    model, weights, pre = m["model"], m["model"]["weights"], m["preprocessing"]
    acc = weights.get("test_accuracy")
    source = weights_said(m) + (f", test accuracy {acc:.2f}% at training" if acc is not None else "")
    classes = m["class_names"]
    rows = [
        ["model", f"{model['name']} ({model['family']}, zoo v{model['zoo_version']}, {model['params']:,} params)"],
        ["weights", source],
        ["data", data_said(m)],
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
    if failed:
        print(f"edgecnn: parity FAILED on {', '.join(failed)}: this artifact does not compute what its source model "
              "computes; do not deploy it", file=sys.stderr)
    return verdict
