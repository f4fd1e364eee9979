"""The argument groups every command shares, defined once so one flag means one thing everywhere.

Vocabulary: `--target` is an export format (export); `--runtimes` the runtimes bench times; `--device` the device
kind a bundle is for (deploy); `--batch` the batch (an int, or a list on bench); `--precision` one precision,
`--precisions` several; `--calibrator`, `--calib-samples`, `--calib-data`, `--max-drop` (a validation drop, in
points) calibrate edgecnn's INT8 wherever it exports; the export group (`--opset`, `--input-size`, `--parity-samples`,
`--exit-budget`, ...) shapes the graph on every command that exports (export, deploy); `--out`, `--force`,
`--no-progress` mean the same on every command that writes.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from edgecnn.validation import arg_type, non_negative_float, non_negative_int, positive_int

MODEL_HELP = ("a zoo name (`edgecnn list`), an edgecnn checkpoint (runs/x/x.safetensors with its .json sidecar) or an "
              "ONNX file (my.onnx)")


def list_of(check: Callable[[str], Any] | None = None) -> Callable[[str], list[Any]]:
    """An argparse type for comma-separated values, each parsed by `check` (e.g. `--batch 1,8`)."""
    def parse(text: str) -> list[Any]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [check(t) for t in items] if check else items

    parse.__name__ = f"list of {check.__name__}" if check else "list"
    return parse


def add_description(p: argparse.ArgumentParser, data_help: str | None = None) -> None:
    """--data (any MODEL) and what a sidecar would say about an ONNX file (--mean, --std, --classes)."""
    p.add_argument("--data", metavar="DIR", help=data_help or (
        "the dataset to score and calibrate on: by default the weights' own (the checkpoint's sidecar; Fashion-MNIST "
        "for the zoo's committed weights). For an ONNX file, the dataset it was trained on (train/ and test/, one "
        "sub-folder per class). Another dataset is said in the output and recorded in the manifest"))
    g = p.add_argument_group("ONNX file: what a checkpoint's sidecar would say (default: its metadata_props mean, "
                             "std, class_names, dataset, input_size)")
    g.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean on the [0, 1] scale (after /255)")
    g.add_argument("--std", metavar="S[,S,S]", help="per-channel std on the [0, 1] scale")
    g.add_argument("--classes", metavar="FILE|a,b,c",
                   help="class names in output order: a file (one per line) or comma-separated")


def description_options(args: argparse.Namespace) -> dict[str, Any]:
    """The export keywords of --data, --mean, --std and --classes (edgecnn.export.api.export's)."""
    return {"data": args.data, "mean": args.mean, "std": args.std, "classes": args.classes}


def add_calibration(p: argparse.ArgumentParser, profile_threads: bool = True) -> None:
    """edgecnn's INT8 calibration and float placement (export, deploy, bench's INT8 exports)."""
    from edgecnn.calibration import (CALIBRATOR_NAMES, DEFAULT_SAMPLES, DEPRECATED_CALIBRATORS, FALLBACKS, PLACEMENTS,
                                     UNLABELLED_CALIBRATOR)
    from edgecnn.data import IMAGE_PIXELS_ENV

    def calibrator(text: str) -> str:
        """A calibrator name; a deprecated one parses (calibration_options says what it is now) but is not offered."""
        if text not in CALIBRATOR_NAMES and text not in DEPRECATED_CALIBRATORS:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                             f"{', '.join(map(repr, CALIBRATOR_NAMES))})")
        return text

    g = p.add_argument_group("INT8 calibration (--precision int8)")
    g.add_argument("--calibrator", type=calibrator, metavar="{" + ",".join(CALIBRATOR_NAMES) + "}",
                   help="range calibrator of the target's quantizer (library: the quantizer library's own defaults, "
                        "as quantize_static or nncf.quantize alone would run); auto tries the target's candidates and "
                        "keeps the first unless another is significantly more accurate on the validation split "
                        f"(default: auto; {UNLABELLED_CALIBRATOR} for a flat --calib-data folder, which has no labels "
                        "to choose on)")
    g.add_argument("--calib-samples", type=arg_type(positive_int, "--calib-samples"), metavar="N",
                   help=f"calibration images, class-balanced, from the training split minus validation "
                        f"(default: {DEFAULT_SAMPLES})")
    g.add_argument("--calib-data", metavar="DIR|synthetic",
                   help="synthetic: calibrate on generated inputs, for a model without data (an INT8 latency answer, "
                        "as trtexec --int8 without a calibrator gives; the artifact is marked latency-only, accuracy "
                        "unknown). Or calibrate on this folder instead of the weights' dataset: one sub-folder per "
                        "class, named after the model's classes (any case; or by class number), in any order, every "
                        "class for auto and --max-drop, which score on it; or a flat folder of images, which "
                        "calibrates only (auto and --max-drop need labels and are refused). Entries that are not "
                        f"regular files are skipped and counted; images over {IMAGE_PIXELS_ENV} pixels (default: "
                        "Pillow's limit) are refused")
    from edgecnn.export.quantizers import QUANTIZERS, quantizers_for

    targets = dict.fromkeys(q.target for q in QUANTIZERS.values())
    g.add_argument("--quantizer", choices=list(QUANTIZERS), metavar="NAME",
                   help="which registered quantizer makes the INT8 model, by name: "
                        + "; ".join(f"{t}: {', '.join(q.name for q in quantizers_for(t))}" for t in targets)
                        + " (default: each target's first)")
    g.add_argument("--max-drop", type=arg_type(non_negative_float, "--max-drop"), metavar="PT",
                   help="largest validation top-1 drop allowed, in points: ONNX returns the most sensitive nodes to "
                        "float, OpenVINO uses NNCF's accuracy control (default: no bound)")
    g = p.add_argument_group("INT8 layers left in float, by measurement on the target's runtime (--precision int8)")
    g.add_argument("--placement", choices=PLACEMENTS,
                   help="fast: leave in float the layers whose INT8 kernel the runtime's profiler measures slower than "
                        "their float one, and every layer if no INT8 placement beats FP32 here (default: accuracy, "
                        "INT8 wherever the quantizer can)")
    g.add_argument("--fallback", choices=FALLBACKS,
                   help="with --max-drop, which layers go back to float: sensitivity, the most sensitive first "
                        "(default); cost, the set that meets the drop with the least latency lost, from the accuracy "
                        "each recovers and the latency each adds (measured), confirmed by scoring it")
    if profile_threads:
        g.add_argument("--threads", dest="profile_threads", type=arg_type(positive_int, "--threads"), metavar="N",
                       help="threads the runtime is timed with for --placement fast and --fallback cost (default: "
                            "the runtime's own)")


def calibration_options(args: argparse.Namespace, int8: bool) -> Any:
    """CalibrationOptions from the calibration group; None when nothing calibrates (`int8` False and no flag given:
    a flag on another precision is refused where the options meet the export)."""
    from edgecnn.calibration import DEPRECATED_CALIBRATORS, SYNTHETIC, CalibrationOptions

    old = args.calibrator
    if old in DEPRECATED_CALIBRATORS:  # said once: the namespace holds the current name from here on
        args.calibrator = DEPRECATED_CALIBRATORS[old]
        print(f"edgecnn: note: --calibrator {old} is now --calibrator {args.calibrator}", file=sys.stderr)
    given = {k: v for k, v in (("calibrator", args.calibrator), ("samples", args.calib_samples),
                               ("data", args.calib_data), ("max_drop", args.max_drop), ("placement", args.placement),
                               ("fallback", args.fallback), ("profile_threads", getattr(args, "profile_threads", None)),
                               ("quantizer", args.quantizer))
             if v is not None}
    if not int8 and not given:
        return None
    if given.get("data") == SYNTHETIC:
        given["synthetic"] = bool(given.pop("data"))
    options = CalibrationOptions(**given)
    if args.calibrator is None and options.unlabelled_default:
        print(f"edgecnn: note: --calib-data {options.data} has no class sub-folders, so no labelled validation "
              f"images to choose a calibrator on: using --calibrator {options.calibrator} (give another with "
              "--calibrator)", file=sys.stderr)
    return options


def add_export(p: argparse.ArgumentParser) -> None:
    """How a MODEL becomes a graph (export, and deploy, which exports): every flag defaults to the export's own."""
    from edgecnn.export.onnx_graph import DEFAULT_OPSET, EXPORTERS

    g = p.add_argument_group("export")
    g.add_argument("--opset", type=arg_type(positive_int, "--opset"),
                   help=f"ONNX opset, 17 or newer (default: {DEFAULT_OPSET})")
    g.add_argument("--exporter", choices=EXPORTERS,
                   help="torch's ONNX exporter; auto tries torchscript, then dynamo (default: auto)")
    g.add_argument("--input-size", metavar="HxW", type=parse_hw,
                   help="spatial input size, if not the model's (e.g. 112x112)")
    g.add_argument("--half-io", action="store_true",
                   help="FP16 ONNX only: take and return float16 (default keeps float32 at the ends)")
    g.add_argument("--parity-samples", type=arg_type(positive_int, "--parity-samples"),
                   help="inputs parity is checked on (default: 64 at fp32, 512 at fp16, int8 and bf16; "
                        "int8 and bf16 also score Fashion-MNIST models on the whole test split)")
    g.add_argument("--seed", type=arg_type(non_negative_int, "--seed"),
                   help="init seed of a zoo model without weights (default: 0)")
    g.add_argument("--exit-budget", type=arg_type(non_negative_float, "--exit-budget"), metavar="PT",
                   help="multi-exit (BranchyNet) models: validation accuracy the exit thresholds may give up "
                        "against the final exit alone, in points (default: 0.5)")
    g.add_argument("--early-exit", choices=("auto", "graph", "stages"),
                   help="multi-exit models: also write the single graph (stages, entropy and exit decision in one "
                        "graph, later stages inside If branches; ONNX and OpenVINO targets) and run it by default "
                        "(graph), keep one graph per stage only (stages), or write both and default to the one "
                        "measured faster here (auto, the default)")


# The export group's flags → edgecnn.export.api.export's keywords.
_EXPORT_KEYWORDS = {"opset": "opset", "exporter": "exporter", "input_size": "input_size", "parity_samples":
                    "parity_samples", "seed": "seed", "exit_budget": "exit_budget_pt", "early_exit": "early_exit_form"}


def export_options(args: argparse.Namespace) -> dict[str, Any]:
    """The export keywords of the flags given (the export's own defaults for the rest)."""
    options = {keyword: getattr(args, flag) for flag, keyword in _EXPORT_KEYWORDS.items()
               if getattr(args, flag) is not None}
    if args.half_io:
        options["keep_io_types"] = False
    return options


def parse_hw(text: str) -> tuple[int, int]:
    """An argparse type for a spatial size, HxW (e.g. --input-size 112x112)."""
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 112x112, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"input size must be positive, got {text!r}")
    return h, w


def add_batch(p: argparse.ArgumentParser, dynamic_help: str) -> None:
    """--batch (the graph's static batch) or --dynamic-batch."""
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=arg_type(positive_int, "--batch"), default=1,
                       help="static batch size of the graph (default: 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help=dynamic_help)


def add_output(p: argparse.ArgumentParser, progress: bool = True) -> None:
    """--force (replace only edgecnn's own earlier output) and --no-progress; --out is each command's own."""
    p.add_argument("--force", action="store_true",
                   help="replace --out if it is edgecnn's own earlier output (nothing else is ever replaced)")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
