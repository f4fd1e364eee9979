"""`edgecnn deploy`: a zoo model → a self-contained folder to copy to a Jetson, an Intel CPU or any CPU."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgecnn.cli.table import format_table
from edgecnn.validation import arg_type, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from edgecnn.cli.export import _add_calibration_arguments
    from edgecnn.export.deploy import DEPLOY_TARGETS
    from edgecnn.export.targets import PRECISIONS

    p = sub.add_parser(
        "deploy", help="write a deploy bundle (artifact + setup.sh, run.py, bench.sh) for a Jetson or a CPU",
        description="Export the model for the device kind and write a folder that runs there with nothing of "
                    "edgecnn installed: the artifact and its manifest, setup.sh (checks the device; on a Jetson "
                    "builds the TensorRT engine), run.py IMAGE|FOLDER (top-k classes), bench.sh (results in "
                    "edgecnn's bench schema, for `edgecnn report`), README.md and requirements.txt. Targets: "
                    + "; ".join(f"{t.name}: {t.description}" for t in DEPLOY_TARGETS.values()))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--target", required=True, choices=list(DEPLOY_TARGETS))
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="default: fp32; jetson: fp32/fp16/int8 (engine built on the device), openvino: also bf16 "
                        "(CPUs with AVX-512 BF16 or AMX)")
    p.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the committed weights, if any)")
    _add_calibration_arguments(p)
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=arg_type(positive_int, "--batch"), default=1,
                       help="static batch size of the graph (default: 1)")
    batch.add_argument("--dynamic-batch", action="store_true",
                       help="symbolic batch axis (a Jetson engine gets an optimization profile 1..--max-batch "
                            "of setup.sh)")
    p.add_argument("--out", type=Path, required=True, help="the bundle directory to write")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it is an earlier edgecnn bundle (nothing else is ever replaced)")
    p.add_argument("--sign", type=Path, metavar="KEY.pem",
                   help="sign manifest.json with this Ed25519 private key (openssl genpkey -algorithm ed25519 -out "
                        "KEY.pem) into manifest.json.sig; the device checks it with ./setup.sh --verify-key PUB.pem "
                        "(openssl pkey -in KEY.pem -pubout -out PUB.pem). Needs pip install 'edgecnn[sign]'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    from edgecnn.cli.export import _calibration_lines, _calibration_options
    from edgecnn.export.deploy import build_bundle

    result = build_bundle(args.name, args.target, args.precision, args.out, checkpoint=args.checkpoint,
                          force=args.force, progress=not args.no_progress, sign=args.sign, batch=args.batch,
                          dynamic_batch=args.dynamic_batch, calibration=_calibration_options(args))
    m = result.manifest
    print(f"{m['model']['name']} → {args.target} bundle ({m['target']} {m['precision']}): {result.path}")
    print(format_table([[name, f"{f['bytes']:,}", f["sha256"][:16]] for name, f in m["files"].items()],
                       ["file", "bytes", "sha256"]))
    for line in _calibration_lines(m):
        print(line)
    if m.get("signature"):
        print(f"signed: {m['signature']['file']} (Ed25519, key SHA-256 {m['signature']['public_key_sha256'][:16]}…); "
              "on the device: ./setup.sh --verify-key PUB.pem")
    print(f"\ncopy {result.path} to the device, then: ./setup.sh && python3 run.py IMAGE_OR_FOLDER && ./bench.sh")
    return 0
