#!/usr/bin/env python3
"""Build a TensorRT engine (model.plan) from this artifact's model.onnx, on the device that will run it.

TensorRT engines are tied to the GPU and TensorRT version that built them, so an edgecnn artifact
ships the TensorRT-ready ONNX and this script instead of an engine. It needs only the Python
standard library and TensorRT 10 (`pip install tensorrt`); input name, shape and precision come from
the manifest.json next to it.

    python3 build_engine.py                 # model.onnx → model.plan, precision from the manifest
    python3 build_engine.py --no-fp16 --workspace-mib 2048 --batch 4 --max-batch 16
    python3 build_engine.py --dla-core 0    # Jetson DLA, layers it lacks fall back to the GPU

Beside the engine it writes engine.json, the record of what built it (GPU name, compute capability,
TensorRT version); the TensorRT session and the deploy bundle's run.py refuse an engine whose record
does not match the device that loads it, rather than crash in deserialisation. A timing cache
(--timing-cache) makes rebuilds on the same device fast.

edgecnn copies this file into every TensorRT artifact as build_engine.py; `edgecnn export` also calls
`build_engine` directly when tensorrt imports and a GPU is present.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime as dt
import json
import sys
from pathlib import Path

DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_MAX_BATCH = 32
ENGINE_RECORD = "engine.json"
TIMING_CACHE = "timing.cache"


class EngineMismatch(Exception):
    """An engine built for another GPU or TensorRT version than the one loading it."""


def cuda_device(index: int = 0) -> dict:
    """Name and compute capability of a CUDA device, from the driver API (libcuda, present wherever the NVIDIA
    driver is, Jetson included)."""
    lib = ctypes.CDLL(ctypes.util.find_library("cuda") or "libcuda.so.1")
    device, major, minor, name = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.create_string_buffer(256)
    for call, args in (("cuInit", (0,)), ("cuDeviceGet", (ctypes.byref(device), index)),
                       ("cuDeviceGetName", (name, 256, device)),
                       # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
                       ("cuDeviceGetAttribute", (ctypes.byref(major), 75, device)),
                       ("cuDeviceGetAttribute", (ctypes.byref(minor), 76, device))):
        code = getattr(lib, call)(*args)
        if code != 0:
            raise RuntimeError(f"{call} failed with CUDA driver error {code}")
    return {"gpu": name.value.decode(errors="replace"), "compute_capability": f"{major.value}.{minor.value}"}


def engine_record(tensorrt_version: str, device: dict, **build: object) -> dict:
    return {"kind": "edgecnn-tensorrt-engine", "tensorrt": tensorrt_version, **device,
            "built_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "build": build}


def check_engine_record(plan_path: Path, tensorrt_version: str | None = None, device: dict | None = None) -> dict:
    """The record beside `plan_path`, if it matches this TensorRT and GPU; EngineMismatch (one line) if not."""
    path = Path(plan_path).with_name(ENGINE_RECORD)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        raise EngineMismatch(f"{plan_path} has no readable {ENGINE_RECORD} beside it, so what built it is unknown; "
                             "rebuild it on this device with build_engine.py (or the bundle's setup.sh)") from None
    if tensorrt_version is None:
        import tensorrt

        tensorrt_version = tensorrt.__version__
    device = device or cuda_device()
    here = {"tensorrt": tensorrt_version, **device}
    wrong = [f"{key} {record.get(key)!r} (this device: {value!r})" for key, value in here.items()
             if record.get(key) != value]
    if wrong:
        raise EngineMismatch(f"{plan_path} was built for {', '.join(wrong)}; engines are tied to the GPU and "
                             "TensorRT version that built them: rebuild it here with build_engine.py "
                             "(or the bundle's setup.sh --rebuild)")
    return record


def build_engine(onnx_path: Path, plan_path: Path, *, input_name: str, input_shape: list, fp16: bool,
                 int8: bool = False, batch: int = 1, max_batch: int = DEFAULT_MAX_BATCH,
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB, dla_core: int | None = None,
                 timing_cache: Path | None = None) -> Path:
    """Parse the ONNX (explicit batch), configure precision, workspace, batch profile and DLA, serialize the
    engine and write its record (engine.json) beside it.

    INT8 is the explicit Q/DQ graph's own (BuilderFlag.INT8; no calibrator). A dynamic batch axis gets one
    optimization profile: min 1, opt `batch`, max `max_batch`.
    """
    import tensorrt as trt

    if not 1 <= batch <= max_batch:
        raise ValueError(f"the batch profile needs 1 <= batch ({batch}) <= max batch ({max_batch})")

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
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's QuantizeLinear/DequantizeLinear
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile_shapes = None
    if not isinstance(input_shape[0], int):  # dynamic batch: one optimization profile, min 1 / opt / max
        chw = tuple(input_shape[1:])
        profile_shapes = [(1, *chw), (batch, *chw), (max_batch, *chw)]
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, *profile_shapes)
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine; see its log above")
    plan_path.write_bytes(bytes(engine))
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(cache.serialize()))
    record = engine_record(trt.__version__, cuda_device(), builder="build_engine.py (TensorRT Python API)",
                           fp16=fp16, int8=int8, dla_core=dla_core, workspace_mib=workspace_mib,
                           profile=[list(s) for s in profile_shapes] if profile_shapes else None)
    plan_path.with_name(ENGINE_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return plan_path


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def main() -> int:
    here = Path(__file__).resolve().parent
    manifest = json.loads((here / "manifest.json").read_text())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, default=here / manifest["model_files"]["onnx"],
                   help="the graph to build (an early-exit stage's stageK/model.onnx takes that stage's input)")
    p.add_argument("--out", type=Path, help="engine file (default: the ONNX's name with .plan)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=manifest["precision"] in ("fp16", "int8"),
                   help="let TensorRT pick FP16 kernels (default: for fp16 and int8 artifacts; in an INT8 engine "
                        "they run the layers the Q/DQ graph leaves unquantized)")
    p.add_argument("--workspace-mib", type=_positive, default=DEFAULT_WORKSPACE_MIB)
    p.add_argument("--batch", type=_positive, default=1,
                   help="the batch the profile is tuned for (opt shape; dynamic-batch artifacts only; default: 1)")
    p.add_argument("--max-batch", type=_positive, default=DEFAULT_MAX_BATCH,
                   help=f"largest batch of the optimization profile (dynamic-batch artifacts only; "
                        f"default: {DEFAULT_MAX_BATCH})")
    p.add_argument("--dla-core", type=_non_negative, help="build for this DLA core, with GPU fallback (Jetson)")
    p.add_argument("--timing-cache", type=Path, default=here / TIMING_CACHE,
                   help=f"read and update this timing cache (default: {TIMING_CACHE} beside this script)")
    args = p.parse_args()
    onnx = args.onnx.resolve()
    stages = {(here / s["model_files"]["onnx"]).resolve(): s["input"] for s in
              (manifest.get("early_exit") or {}).get("stages", [])}
    spec = stages.get(onnx, manifest["input"])
    if args.batch > args.max_batch:
        p.error(f"--batch {args.batch} is larger than --max-batch {args.max_batch}")
    try:
        build_engine(onnx, args.out or onnx.with_suffix(".plan"), input_name=spec["name"],
                     input_shape=spec["shape"], fp16=args.fp16, int8=manifest["precision"] == "int8",
                     batch=args.batch, max_batch=args.max_batch, workspace_mib=args.workspace_mib,
                     dla_core=args.dla_core, timing_cache=args.timing_cache)
    except ImportError as e:
        print(f"build_engine: TensorRT's Python package is not importable here ({e}). Install TensorRT 10 on "
              "the NVIDIA device that will run the engine: `pip install tensorrt` (needs an NVIDIA driver), or "
              "on Jetson use the one JetPack ships (python3-libnvinfer); build_engine.sh does the same with "
              "trtexec", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"build_engine: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out or onnx.with_suffix('.plan')} and its {ENGINE_RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
