#!/usr/bin/env python3
"""Build a TensorRT engine (model.plan) from this artifact's ONNX, on the device that will run it.

TensorRT engines are tied to the GPU and TensorRT version that built them, so an edgecnn artifact
ships the TensorRT-ready ONNX and this script instead of an engine. It needs only the Python
standard library and TensorRT 10.3 or newer, 11 included (`pip install tensorrt`, or JetPack's
python3-libnvinfer); input name, shape and precision come from the manifest.json next to it.

Two generations, chosen by the TensorRT installed here:
- TensorRT 10.12 and newer (11 included) build strongly typed: the precision is in the graph, so an FP16
  artifact builds its AutoCast FP16 graph and an INT8 artifact its Q/DQ graph with FP16 elsewhere (both named
  `onnx_strongly_typed` in the manifest); no precision flags.
- TensorRT 10.3 to 10.11 (JetPack 6.1/6.2) build weakly typed from model.onnx with precision builder flags
  (FP16; INT8 + FP16 for the Q/DQ graph), as strong typing there lacks what these graphs need.

    python3 build_engine.py                 # → model.plan, precision from the manifest
    python3 build_engine.py --workspace-mib 2048 --batch 4 --max-batch 16
    python3 build_engine.py --dla-core 0    # Jetson DLA (FP16 artifacts), layers it lacks fall back to the GPU

Beside the engine it writes engine.json, the record of what built it (GPU name, compute capability,
TensorRT version, typing, DLA/GPU layer counts); the TensorRT session and the deploy bundle's run.py refuse an
engine whose record does not match the device that loads it, rather than crash in deserialisation. A timing
cache (--timing-cache) makes rebuilds on the same device fast.

edgecnn copies this file into every TensorRT artifact as build_engine.py; `edgecnn export` also calls
`build_engine` directly when tensorrt imports and a GPU is present.
"""
import os
import sys

if __name__ == "__main__":  # run from an artifact or bundle: nothing beside this script may shadow a module it imports
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import argparse
import ctypes
import ctypes.util
import datetime as dt
import json
from pathlib import Path

DEFAULT_WORKSPACE_MIB = 1024
DEFAULT_MAX_BATCH = 32
ENGINE_RECORD = "engine.json"
TIMING_CACHE = "timing.cache"
OLDEST_TENSORRT = (10, 3)          # JetPack 6.1/6.2
STRONGLY_TYPED_SINCE = (10, 12)    # weak typing is deprecated from here on and gone in 11
STRONGLY_TYPED_FORMAT = "onnx_strongly_typed"


class EngineMismatch(Exception):
    """An engine built for another GPU or TensorRT version than the one loading it."""


class BuildRefused(RuntimeError):
    """A build this TensorRT, device or artifact cannot do as asked; the message says what to do instead."""


def version_tuple(version: str) -> tuple[int, int, int]:
    """Major, minor, patch: the pip wheel says 10.16.1.11 (with its build number, from 10.8 on), trtexec and
    JetPack's packages 10.16.1, and they are the same TensorRT."""
    parts = [int(p) for p in (version.split("+")[0].split(".") + ["0", "0"])[:3] if p.isdigit()]
    if len(parts) != 3:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return parts[0], parts[1], parts[2]


def strongly_typed(version: str) -> bool:
    """Whether this TensorRT builds from the graph's own types (10.12 on) rather than precision flags."""
    return version_tuple(version)[:2] >= STRONGLY_TYPED_SINCE


def graph_for(model_files: dict, version: str) -> str:
    """The ONNX file (of an artifact's or a stage's model_files) that this TensorRT version builds."""
    if strongly_typed(version):
        return model_files.get(STRONGLY_TYPED_FORMAT, model_files["onnx"])
    return model_files["onnx"]


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


def _same(key: str, recorded: object, here: str) -> bool:
    if key != "tensorrt":
        return recorded == here
    try:
        return version_tuple(str(recorded)) == version_tuple(here)
    except ValueError:
        return False


def check_engine_record(plan_path: Path, tensorrt_version: str | None = None, device: dict | None = None) -> dict:
    """The record beside `plan_path`, if it matches this TensorRT and GPU; EngineMismatch (one line) if not."""
    path = Path(plan_path).with_name(ENGINE_RECORD)
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError(ENGINE_RECORD)
    except (OSError, ValueError, RecursionError):
        raise EngineMismatch(f"{plan_path} has no readable {ENGINE_RECORD} beside it, so what built it is unknown; "
                             "rebuild it on this device with build_engine.py (or the bundle's setup.sh)") from None
    if tensorrt_version is None:
        import tensorrt

        tensorrt_version = tensorrt.__version__
    device = device or cuda_device()
    here = {"tensorrt": tensorrt_version, **device}
    wrong = [f"{key} {record.get(key)!r} (this device: {value!r})" for key, value in here.items()
             if not _same(key, record.get(key), value)]
    if wrong:
        raise EngineMismatch(f"{plan_path} was built for {', '.join(wrong)}; engines are tied to the GPU and "
                             "TensorRT version that built them: rebuild it here with build_engine.py "
                             "(or the bundle's setup.sh --rebuild)")
    return record


def check_request(version: str, precision: str, dla_core: int | None, has_typed_graph: bool) -> None:
    """Refuse, before TensorRT is asked, what this TensorRT cannot build from this artifact as asked."""
    if version_tuple(version)[:2] < OLDEST_TENSORRT:
        raise BuildRefused(f"TensorRT {version} is older than 10.3, the oldest edgecnn builds with (JetPack 6.1): "
                           "JetPack 5 and 6.0 (TensorRT 8.5/8.6) cannot parse these graphs; upgrade to JetPack 6.1 "
                           "or newer, or run the ONNX model with ONNX Runtime")
    if strongly_typed(version) and precision != "fp32" and not has_typed_graph:
        raise BuildRefused(f"TensorRT {version} builds strongly typed only, and this {precision} artifact has no "
                           f"strongly typed graph ({STRONGLY_TYPED_FORMAT}): export it again with this edgecnn "
                           "and NVIDIA ModelOpt installed (pip install 'edgecnn[tensorrt-int8]')")
    if dla_core is None:
        return
    if precision == "int8":
        raise BuildRefused("INT8 on the DLA needs implicit quantization (a calibrator with every tensor's range), "
                           "which TensorRT ignores for this explicit Q/DQ graph, so the engine would run on the GPU "
                           "while claiming the DLA: build INT8 for the GPU (no --dla-core), or export --precision "
                           "fp16 for the DLA")
    if precision == "fp32" and strongly_typed(version):
        raise BuildRefused(f"the DLA runs FP16 or INT8, never FP32, and TensorRT {version} builds this FP32 graph "
                           "as typed: export --precision fp16 for the DLA")


def network_flags(trt: object, typed: bool) -> int:
    """Strongly typed from 10.12 on; TensorRT 10 networks are always explicit-batch, so no other flag."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0


def _weak_precision_flags(trt: object, builder: object, config: object, precision: str, dla: bool) -> list[str]:
    """TensorRT 10.3-10.11: precision as builder flags (INT8 from the graph's Q/DQ, FP16 for the rest; the DLA
    has no FP32, so a DLA build of an FP32 artifact is FP16)."""
    fp16 = precision in ("fp16", "int8") or dla
    if fp16:
        if not builder.platform_has_fast_fp16:
            print("warning: this GPU has no fast FP16; building FP16 anyway", file=sys.stderr)
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the graph's QuantizeLinear/DequantizeLinear
    return ["FP16"] * fp16 + ["INT8"] * (precision == "int8")


def _place_on_dla(trt: object, builder: object, config: object, network: object, dla_core: int) -> dict:
    """Ask for DLA core `dla_core` with GPU fallback; how many layers the DLA takes and how many fall back."""
    cores = builder.num_DLA_cores
    if dla_core >= cores:
        raise BuildRefused(f"--dla-core {dla_core}: this device has {cores or 'no'} DLA core"
                           f"{'' if cores == 1 else 's'} (Orin Nano and Thor have none); build for the GPU instead")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the engine inspector then names each layer's tactic
    on_dla = sum(bool(config.can_run_on_DLA(network.get_layer(i))) for i in range(network.num_layers))
    return {"dla_core": dla_core, "network_layers_dla_can_run": on_dla,
            "network_layers_falling_back": network.num_layers - on_dla}


def _engine_layers_by_device(trt: object, logger: object, serialized: object) -> dict:
    """From the built engine's inspector: how many engine layers run on the DLA (the DLA subgraphs TensorRT made,
    each one ForeignNode layer) and how many on the GPU; the network's own count above is what the builder was
    offered, this is what it did."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    report = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    layers = [layer for layer in report.get("Layers", []) if isinstance(layer, dict)]
    on_dla = sum("DLA" in json.dumps(layer) for layer in layers)
    return {"engine_layers_on_dla": on_dla, "engine_layers_on_gpu": len(layers) - on_dla}


def build_engine(onnx_path: Path, plan_path: Path, *, input_name: str, input_shape: list, precision: str,
                 batch: int = 1, max_batch: int = DEFAULT_MAX_BATCH, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 dla_core: int | None = None, timing_cache: Path | None = None,
                 strongly_typed_onnx: Path | None = None) -> Path:
    """Parse the ONNX this TensorRT builds (`strongly_typed_onnx` from 10.12 on, where given), set workspace,
    batch profile and DLA, serialize the engine and write its record (engine.json) beside it.

    A dynamic batch axis gets one optimization profile: min 1, opt `batch`, max `max_batch` (on the DLA, which
    needs min = opt = max, all three are `batch`).
    """
    import tensorrt as trt

    if not 1 <= batch <= max_batch:
        raise ValueError(f"the batch profile needs 1 <= batch ({batch}) <= max batch ({max_batch})")
    typed = strongly_typed(trt.__version__)
    check_request(trt.__version__, precision, dla_core, strongly_typed_onnx is not None)
    source = strongly_typed_onnx if typed and strongly_typed_onnx is not None else onnx_path
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {source}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    flags = [] if typed else _weak_precision_flags(trt, builder, config, precision, dla_core is not None)
    placement = _place_on_dla(trt, builder, config, network, dla_core) if dla_core is not None else None
    profile_shapes = None
    if not isinstance(input_shape[0], int):  # dynamic batch: one optimization profile
        chw = tuple(input_shape[1:])
        low = batch if dla_core is not None else 1
        high = batch if dla_core is not None else max_batch
        profile_shapes = [(low, *chw), (batch, *chw), (high, *chw)]
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
    if placement is not None:
        placement.update(_engine_layers_by_device(trt, logger, engine))
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(cache.serialize()))
    record = engine_record(trt.__version__, cuda_device(), builder="build_engine.py (TensorRT Python API)",
                           onnx=Path(source).name, precision=precision,
                           typing="strong" if typed else "weak", builder_flags=flags, placement=placement,
                           workspace_mib=workspace_mib,
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


def _graphs(here: Path, manifest: dict) -> dict:
    """Each buildable graph of the artifact (model.onnx, each early-exit stage's) → its input and model_files."""
    graphs = {(here / manifest["model_files"]["onnx"]).resolve(): (manifest["input"], manifest["model_files"])}
    for stage in (manifest.get("early_exit") or {}).get("stages", []):
        graphs[(here / stage["model_files"]["onnx"]).resolve()] = (stage["input"], stage["model_files"])
    return graphs


def main() -> int:
    here = Path(__file__).resolve().parent
    manifest = json.loads((here / "manifest.json").read_text())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", type=Path, default=here / manifest["model_files"]["onnx"],
                   help="the graph to build (an early-exit stage's stageK/model.onnx takes that stage's input); "
                        "TensorRT 10.12+ builds its strongly typed sibling where the manifest names one")
    p.add_argument("--out", type=Path, help="engine file (default: the ONNX's name with .plan)")
    p.add_argument("--workspace-mib", type=_positive, default=DEFAULT_WORKSPACE_MIB)
    p.add_argument("--batch", type=_positive, default=1,
                   help="the batch the profile is tuned for (opt shape; dynamic-batch artifacts only; default: 1)")
    p.add_argument("--max-batch", type=_positive, default=DEFAULT_MAX_BATCH,
                   help=f"largest batch of the optimization profile (dynamic-batch artifacts only; "
                        f"default: {DEFAULT_MAX_BATCH}; on the DLA the profile is --batch only)")
    p.add_argument("--dla-core", type=_non_negative,
                   help="build for this DLA core, with GPU fallback (Jetson AGX/NX Orin; FP16 artifacts, and FP32 "
                        "ones on TensorRT < 10.12, which build FP16 there)")
    p.add_argument("--timing-cache", type=Path, default=here / TIMING_CACHE,
                   help=f"read and update this timing cache (default: {TIMING_CACHE} beside this script)")
    args = p.parse_args()
    if args.batch > args.max_batch:
        p.error(f"--batch {args.batch} is larger than --max-batch {args.max_batch}")
    onnx = args.onnx.resolve()
    spec, model_files = _graphs(here, manifest).get(onnx, (manifest["input"], {"onnx": onnx.name}))
    typed = model_files.get(STRONGLY_TYPED_FORMAT)
    plan = args.out or onnx.with_suffix(".plan")
    try:
        build_engine(onnx, plan, input_name=spec["name"], input_shape=spec["shape"], precision=manifest["precision"],
                     batch=args.batch, max_batch=args.max_batch, workspace_mib=args.workspace_mib,
                     dla_core=args.dla_core, timing_cache=args.timing_cache,
                     strongly_typed_onnx=here / typed if typed else None)
    except ImportError as e:
        print(f"build_engine: TensorRT's Python package is not importable here ({e}). Install TensorRT 10.3 or "
              "newer on the NVIDIA device that will run the engine: `pip install 'tensorrt>=10.3,<12'` (needs an "
              "NVIDIA driver), or on Jetson use the one JetPack ships (sudo apt install python3-libnvinfer; from a "
              "virtualenv, create it with --system-site-packages); build_engine.sh does the same with trtexec",
              file=sys.stderr)
        return 1
    except RuntimeError as e:  # BuildRefused included
        print(f"build_engine: {e}", file=sys.stderr)
        return 1
    print(f"wrote {plan} and its {ENGINE_RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
