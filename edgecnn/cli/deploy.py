"""`edgecnn deploy`: a zoo model → a self-contained folder to copy to a Jetson, an Intel CPU or any CPU."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgecnn.cli.table import format_table
from edgecnn.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from edgecnn.cli.args import MODEL_HELP, add_batch, add_calibration, add_description, add_export, add_output
    from edgecnn.export.deploy import DEPLOY_TARGETS
    from edgecnn.export.targets import PRECISIONS

    p = sub.add_parser(
        "deploy", help="write a deploy bundle (artifact + setup.sh, run.py, bench.sh) for a Jetson or a CPU",
        description="Export the model for the device kind and write a folder that runs there with nothing of "
                    "edgecnn installed: the artifact and its manifest, setup.sh (checks the device; on a Jetson "
                    "builds the TensorRT engine), run.py IMAGE|FOLDER (top-k classes), bench.sh (results in "
                    "edgecnn's bench schema, for `edgecnn report`), README.md and requirements.txt. Targets: "
                    + "; ".join(f"{t.name}: {t.description}" for t in DEPLOY_TARGETS.values()))
    p.add_argument("name", metavar="MODEL", help=MODEL_HELP + ", or an artifact folder (bundled as it is, never "
                                                             "exported again)")
    p.add_argument("--device", "--target", dest="device", required=True, choices=list(DEPLOY_TARGETS),
                   help="the device kind the bundle is for (--target: its old name, kept for one release)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="default: fp32 (an artifact's own); jetson: fp32/fp16/int8 (engine built on the device), "
                        "openvino: also bf16 (CPUs with AVX-512 BF16 or AMX)")
    p.add_argument("--checkpoint", help="weights for a zoo name: a .safetensors or .pth file (default: the committed "
                                        "weights, if any)")
    p.add_argument("--timing-only", action="store_true",
                   help="allow a latency-only model (INT8 calibrated with --calib-data synthetic, accuracy unknown): "
                        "the bundle is for timing")
    add_description(p)
    add_calibration(p, profile_threads=False)
    add_batch(p, "symbolic batch axis (a Jetson engine gets an optimization profile 1..--max-batch of setup.sh)")
    add_export(p)
    p.add_argument("--out", type=Path, required=True, help="the bundle directory to write")
    p.add_argument("--sign", type=Path, metavar="KEY.pem",
                   help="sign manifest.json with this Ed25519 private key (openssl genpkey -algorithm ed25519 -out "
                        "KEY.pem) into manifest.json.sig; the device checks it with ./setup.sh --verify-key PUB.pem "
                        "(openssl pkey -in KEY.pem -pubout -out PUB.pem). Needs pip install 'edgecnn[sign]'")
    add_output(p)
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    from edgecnn.cli.args import calibration_options, description_options, export_options
    from edgecnn.cli.export import _calibration_lines
    from edgecnn.model_ref import weights_line
    from edgecnn.export.deploy import build_bundle

    precision = args.precision or "fp32"
    exporting = export_options(args)
    options = {"batch": args.batch, "dynamic_batch": args.dynamic_batch,
               "calibration": calibration_options(args, precision == "int8"), **exporting,
               **{k: v for k, v in description_options(args).items() if v is not None}}
    if Path(args.name).is_dir():  # an artifact, bundled as it is: export options do not apply to it
        given = [flag for flag, on in (("--batch", args.batch != 1), ("--dynamic-batch", args.dynamic_batch),
                                       ("calibration options", options["calibration"] is not None),
                                       ("export options", bool(exporting)),
                                       *((f"--{k}", True) for k in ("data", "mean", "std", "classes") if k in options))
                 if on]
        if given:
            raise UserError(f"{args.name} is an artifact, bundled as it is: {', '.join(given)} would need an export")
        options, precision = {}, args.precision
    result = build_bundle(args.name, args.device, precision, args.out, checkpoint=args.checkpoint,
                          force=args.force, progress=not args.no_progress, sign=args.sign,
                          timing_only=args.timing_only, **options)
    m = result.manifest
    print(f"{m['model']['name']} → {args.device} bundle ({m['target']} {m['precision']}): {result.path}")
    print(weights_line(m))
    print(format_table([[name, f"{f['bytes']:,}", f["sha256"][:16]] for name, f in m["files"].items()],
                       ["file", "bytes", "sha256"]))
    for line in _calibration_lines(m):
        print(line)
    if m.get("signature"):
        print(f"signed: {m['signature']['file']} (Ed25519, key SHA-256 {m['signature']['public_key_sha256'][:16]}…); "
              "on the device: ./setup.sh --verify-key PUB.pem")
    print(f"\ncopy {result.path} to the device, then: ./setup.sh && python3 run.py IMAGE_OR_FOLDER && ./bench.sh")
    return 0
