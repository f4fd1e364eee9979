#!/usr/bin/env python3
"""Build a TensorRT engine (model.plan) from this artifact's model.onnx, on the device that will run it.

TensorRT engines are tied to the GPU and TensorRT version that built them, so an edgecnn artifact
ships the TensorRT-ready ONNX and this script instead of an engine. It needs only the Python
standard library and TensorRT 10 (`pip install tensorrt`); input name, shape and precision come from
the manifest.json next to it.

    python3 build_engine.py                 # model.onnx → model.plan, precision from the manifest
    python3 build_engine.py --no-fp16 --workspace-mib 2048 --max-batch 16

edgecnn copies this file into every TensorRT artifact as build_engine.py; `edgecnn export` also calls
`build_engine` directly when tensorrt imports and a GPU is present.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_MAX_BATCH = 32


def build_engine(onnx_path: Path, plan_path: Path, *, input_name: str, input_shape: list, fp16: bool,
                 max_batch: int = DEFAULT_MAX_BATCH, workspace_mib: int = DEFAULT_WORKSPACE_MIB) -> Path:
    """Parse the ONNX (explicit batch), configure precision and workspace, serialize the engine."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; the flag keeps TensorRT 8.x building too.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16:
        if not builder.platform_has_fast_fp16:
            print("warning: this GPU has no fast FP16; building FP16 anyway", file=sys.stderr)
        config.set_flag(trt.BuilderFlag.FP16)
    if not isinstance(input_shape[0], int):  # dynamic batch: one optimization profile, 1..max_batch
        chw = tuple(input_shape[1:])
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (1, *chw), (max_batch, *chw), (max_batch, *chw))
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine; see its log above")
    plan_path.write_bytes(bytes(engine))
    return plan_path


def main() -> int:
    here = Path(__file__).resolve().parent
    manifest = json.loads((here / "manifest.json").read_text())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, default=here / manifest["model_files"]["onnx"])
    p.add_argument("--out", type=Path, default=here / "model.plan")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=manifest["precision"] == "fp16",
                   help="let TensorRT pick FP16 kernels (default: from the manifest's precision)")
    p.add_argument("--workspace-mib", type=int, default=DEFAULT_WORKSPACE_MIB)
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="largest batch of the optimization profile (dynamic-batch artifacts only)")
    args = p.parse_args()
    try:
        build_engine(args.onnx, args.out, input_name=manifest["input"]["name"], input_shape=manifest["input"]["shape"],
                     fp16=args.fp16, max_batch=args.max_batch, workspace_mib=args.workspace_mib)
    except ImportError as e:
        print(f"build_engine: TensorRT's Python package is not importable here ({e}). Install TensorRT 10 on "
              "the NVIDIA device that will run the engine: `pip install tensorrt` (needs an NVIDIA driver), or "
              "on Jetson use the one JetPack ships (python3-libnvinfer); build_engine.sh does the same with "
              "trtexec", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"build_engine: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
