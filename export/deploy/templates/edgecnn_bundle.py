"""What a deploy bundle's run.py and bench.py do, with the Python standard library, numpy, Pillow and one
runtime (ONNX Runtime, OpenVINO or TensorRT): nothing from edgecnn, no torch.

Everything comes from manifest.json beside this file: the files and their SHA-256 (checked before any model
is loaded), the input name/shape/dtype, the preprocessing steps, the class names, the early-exit stages and
thresholds. edgecnn writes this file once into every bundle (and tests it against its own preprocessing).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
DIGEST_FIELD = "manifest_sha256"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def positive(text: str) -> int:
    """argparse type of the bundle scripts' counts: 0 and negatives are errors, not defaults."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class BundleError(Exception):
    """Something the user can fix; run.py and bench.py print it as one line and exit 2."""


# ---------------------------------------------------------------- the manifest and the files it names

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(directory: Path = HERE, verify: bool = True) -> dict[str, Any]:
    """The bundle's manifest, after checking its own digest and every file's size and SHA-256."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} is missing: this folder is not a complete edgecnn bundle; copy it again") from None
    except ValueError as e:
        raise BundleError(f"{path} is corrupt (not valid JSON: {e}); copy the bundle again") from None
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    if digest != manifest.get(DIGEST_FIELD):
        raise BundleError(f"{path} was edited after edgecnn wrote it (its {DIGEST_FIELD} does not match); "
                          "copy the bundle again")
    for name, entry in manifest["files"].items():
        file = directory / name
        if not file.is_file():
            raise BundleError(f"{file} is missing from the bundle; copy the bundle again")
        if file.stat().st_size != entry["bytes"] or (verify and _sha256(file) != entry["sha256"]):
            raise BundleError(f"{file} was altered (its size or SHA-256 differs from manifest.json); "
                              "copy the bundle again")
    return manifest


# ---------------------------------------------------------------- preprocessing, as the manifest spells it

def _resize_weights(size_in: int, size_out: int, antialias: bool) -> np.ndarray:
    """(size_out, size_in) bilinear weights with half-pixel centres (align_corners=False); with
    `antialias` and a reduction the triangle filter widens by the scale (as PIL and torch's antialias do)."""
    scale = size_in / size_out
    support = scale if antialias and scale > 1 else 1.0
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    for i in range(size_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), size_in)
        taps = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((taps + 0.5 - centre) / support), 0.0, None)
        weights[i, lo:hi] = w / w.sum()
    return weights


def resize(x: np.ndarray, height: int, width: int, antialias: bool) -> np.ndarray:
    """C×H×W float32 → C×height×width, bilinear (separable weights per axis)."""
    rows = _resize_weights(x.shape[1], height, antialias)
    cols = _resize_weights(x.shape[2], width, antialias)
    return np.einsum("hH,cHW,wW->chw", rows, x.astype(np.float64), cols).astype(np.float32)


def to_input(pixels: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """uint8 C×H×W pixels → the float32 C×H×W the model takes, step by step as manifest['preprocessing'] says."""
    x = pixels.astype(np.float32) * np.float32(pre["scale"])
    channels = pre["channels"]
    if x.shape[0] != channels:
        if x.shape[0] == 1:
            x = np.repeat(x, channels, axis=0)
        elif x.shape[0] == 3 and channels == 1:
            weights = pre["channel_adaptation"]["rgb_to_grey"]["weights"]
            x = np.tensordot(np.asarray(weights, dtype=np.float32), x, axes=1)[None]
        else:
            raise BundleError(f"cannot adapt a {x.shape[0]}-channel image to this {channels}-channel model")
    height, width = pre["resize"]
    if x.shape[1:] != (height, width):
        x = resize(x, height, width, antialias=x.shape[2] > width)
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(-1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def decode_image(path: Path) -> np.ndarray:
    """uint8 C×H×W pixels (grey stays one channel, anything else becomes RGB), or one line saying why not."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise BundleError("Pillow is not installed here, and run.py decodes images with it: "
                          "pip install -r requirements.txt") from None

    try:
        with Image.open(path) as image:
            image.load()
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            array = np.asarray(image.convert("L" if grey else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise BundleError(f"{path} is not an image Pillow can decode ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no detail'}); give a PNG, JPEG or BMP file") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def image_paths(target: Path) -> list[Path]:
    """The image itself, or a folder's images (sorted, recursively)."""
    if target.is_dir():
        found = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise BundleError(f"{target} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if not target.exists():
        raise BundleError(f"{target} does not exist; give an image file or a folder of images")
    return [target]


# ---------------------------------------------------------------- runtimes: one class each, registered once

RUNNERS: dict[str, type["Runner"]] = {}


def register_runner(cls: type["Runner"]) -> type["Runner"]:
    RUNNERS[cls.name] = cls
    return cls


class Runner:
    """One graph on one runtime: `run_all(x)` returns every output, in the graph's order."""
    name = ""
    model_format = ""           # the key of model_files it reads

    def __init__(self, path: Path, input_name: str, threads: int | None) -> None:
        self.path, self.input_name, self.threads = path, input_name, threads

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def executed_precision(self, artifact_precision: str) -> str:
        return artifact_precision


@register_runner
class OnnxRuntimeRunner(Runner):
    name, model_format = "onnxruntime", "onnx"

    def __init__(self, path: Path, input_name: str, threads: int | None) -> None:
        super().__init__(path, input_name, threads)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self.input_name: x})

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__


@register_runner
class OpenVinoRunner(Runner):
    name, model_format = "openvino", "openvino"
    _HINTS = {"fp32": "f32", "int8": "f32", "fp16": "f16", "bf16": "bf16"}

    def __init__(self, path: Path, input_name: str, threads: int | None, precision: str = "fp32") -> None:
        super().__init__(path, input_name, threads)
        import openvino as ov

        core = ov.Core()
        hint = self._HINTS.get(precision, "f32")
        if hint == "f16" and "FP16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            hint = "f32"  # as edgecnn's session: FP16 weights run in f32 on CPUs without FP16 arithmetic
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        self._request.infer({self.input_name: x})
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self._compiled.outputs))]

    def version(self) -> str:
        import openvino as ov

        return ov.get_version()

    def executed_precision(self, artifact_precision: str) -> str:
        """The element types entering the compiled model's convolutions and matrix products."""
        found: dict[str, int] = {}
        names = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "u8": "int8", "i8": "int8"}
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "GroupConvolution",
                                                                           "FullyConnected", "MatMul"):
                element = names.get(op.input(0).get_element_type().get_type_name(), "other")
                found[element] = found.get(element, 0) + 1
        return "+".join(sorted(found, key=found.get, reverse=True)) or artifact_precision


class _Cuda:
    """The few CUDA runtime calls a TensorRT engine needs, through ctypes (JetPack ships libcudart)."""
    HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("cudart") or "libcudart.so"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as e:
            raise BundleError(f"the CUDA runtime library is not loadable ({e}); install JetPack's CUDA "
                              "(nvidia-jetpack) or run with --backend onnxruntime") from None
        self.ctypes = ctypes
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")

    def _check(self, code: int, call: str) -> None:
        if code != 0:
            raise RuntimeError(f"{call} failed with CUDA error {code}")

    def malloc(self, nbytes: int) -> int:
        pointer = self.ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(self.ctypes.byref(pointer), self.ctypes.c_size_t(nbytes)), "cudaMalloc")
        return pointer.value

    def free(self, pointer: int) -> None:
        self.lib.cudaFree(self.ctypes.c_void_p(pointer))

    def copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        self._check(self.lib.cudaMemcpy(self.ctypes.c_void_p(dst), self.ctypes.c_void_p(src),
                                        self.ctypes.c_size_t(nbytes), kind), "cudaMemcpy")

    def synchronize(self) -> None:
        self._check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


@register_runner
class TensorRTRunner(Runner):
    """A model.plan built on this device by setup.sh (TensorRT 10 API: named I/O tensors, execute_async_v3)."""
    name, model_format = "tensorrt", "tensorrt_plan"

    def __init__(self, path: Path, input_name: str, threads: int | None) -> None:
        super().__init__(path, input_name, threads)
        import tensorrt as trt

        import build_engine  # the artifact's own build script, beside this file

        try:  # before deserialising: an engine built for another GPU or TensorRT fails there, or worse
            build_engine.check_engine_record(path)
        except build_engine.EngineMismatch as e:
            raise BundleError(str(e)) from None
        self.trt, self.cuda = trt, _Cuda()
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise BundleError(f"{path} is not an engine this TensorRT can run; build it again with ./setup.sh")
        self._context = self._engine.create_execution_context()
        self._outputs = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)
                         if self._engine.get_tensor_mode(self._engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        trt, cuda = self.trt, self.cuda
        x = np.ascontiguousarray(x, dtype=trt.nptype(self._engine.get_tensor_dtype(self.input_name)))
        self._context.set_input_shape(self.input_name, x.shape)
        buffers = [cuda.malloc(x.nbytes)]
        try:
            cuda.copy(buffers[0], x.ctypes.data, x.nbytes, cuda.HOST_TO_DEVICE)
            self._context.set_tensor_address(self.input_name, buffers[0])
            outputs = []
            for name in self._outputs:
                out = np.empty(tuple(self._context.get_tensor_shape(name)),
                               dtype=trt.nptype(self._engine.get_tensor_dtype(name)))
                buffers.append(cuda.malloc(max(out.nbytes, 1)))
                self._context.set_tensor_address(name, buffers[-1])
                outputs.append(out)
            if not self._context.execute_async_v3(cuda.stream.value or 0):
                raise RuntimeError("TensorRT failed to run the engine")
            cuda.synchronize()
            for out, pointer in zip(outputs, buffers[1:]):
                cuda.copy(out.ctypes.data, pointer, out.nbytes, cuda.DEVICE_TO_HOST)
            return [o.astype(np.float32) for o in outputs]
        finally:
            for pointer in buffers:
                cuda.free(pointer)

    def version(self) -> str:
        return self.trt.__version__


def open_runner(backend: str, path: Path, input_name: str, threads: int | None, precision: str) -> Runner:
    cls = RUNNERS[backend]
    try:
        if cls is OpenVinoRunner:
            return cls(path, input_name, threads, precision)
        return cls(path, input_name, threads)
    except ImportError as e:
        raise BundleError(f"the {backend} runtime is not importable here ({e}): "
                          "pip install -r requirements.txt, or run ./setup.sh to see what is missing") from None


# ---------------------------------------------------------------- the model: one graph, or the early-exit loop

def softmax_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of softmax(logits) per row, natural log (as the manifest's early_exit.exit_entropy says)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=1)


class Model:
    """The bundle's model on one runtime: `classify(x)` → (logits, exit stage per sample or None)."""

    def __init__(self, manifest: dict[str, Any], backend: str, threads: int | None = None,
                 directory: Path = HERE) -> None:
        self.manifest, self.backend, self.directory = manifest, backend, directory
        cls = RUNNERS[backend]
        precision = manifest["precision"]
        section = manifest.get("early_exit")
        self.thresholds: list[float] = list(section["thresholds"]) if section else []
        if section:
            self.stages = [open_runner(backend, self._file(stage["model_files"], cls), stage["input"]["name"],
                                       threads, precision) for stage in section["stages"]]
        else:
            self.stages = [open_runner(backend, self._file(manifest["model_files"], cls), manifest["input"]["name"],
                                       threads, precision)]
        self.dtype = np.dtype(manifest["input"]["dtype"])

    def _file(self, model_files: dict[str, str], cls: type[Runner]) -> Path:
        if cls.model_format == "tensorrt_plan":
            return engine_path(self.directory, model_files)
        return self.directory / model_files[cls.model_format]

    def classify(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = x.astype(self.dtype)
        if len(self.stages) == 1:
            return self.stages[0].run_all(x)[0].astype(np.float32), None
        n, last = x.shape[0], len(self.stages) - 1
        logits = np.empty((n, self.manifest["model"]["num_classes"]), dtype=np.float32)
        exits = np.full(n, last)
        index = np.arange(n)
        for k, stage in enumerate(self.stages):  # exit at stage k when entropy < thresholds[k]
            outputs = stage.run_all(x)
            if k == last:
                logits[index] = outputs[0]
                break
            exit_logits, entropy, features = outputs[0], outputs[1].reshape(-1), outputs[2]
            leave = entropy < self.thresholds[k]
            logits[index[leave]], exits[index[leave]] = exit_logits[leave], k
            index, x = index[~leave], features[~leave]
            if not len(index):
                break
        return logits, exits

    def executed_precision(self) -> str:
        return self.stages[0].executed_precision(self.manifest["precision"])


def engine_path(directory: Path, model_files: dict[str, str]) -> Path:
    """Where setup.sh builds a graph's TensorRT engine: beside the ONNX it came from, as .plan."""
    return directory / Path(model_files["onnx"]).with_suffix(".plan")


def pick_backend(manifest: dict[str, Any], requested: str | None, say: Callable[[str], None],
                 directory: Path = HERE) -> str:
    """The backend asked for, else the bundle's; a Jetson bundle without a built engine falls back to its
    CPU runtime and says so."""
    bundle = manifest["bundle"]
    if requested:
        if requested not in (bundle["backend"], bundle["fallback"]):
            raise BundleError(f"this {bundle['target']} bundle runs on {bundle['backend']}"
                              f"{' or ' + bundle['fallback'] if bundle['fallback'] != bundle['backend'] else ''}, "
                              f"not {requested}")
        return requested
    if bundle["backend"] == "tensorrt":
        graphs = [s["model_files"] for s in manifest["early_exit"]["stages"]] if manifest.get("early_exit") \
            else [manifest["model_files"]]
        if not all(engine_path(directory, files).is_file() for files in graphs):
            say("no TensorRT engine is built here (run ./setup.sh on the Jetson to build it): "
                f"falling back to {bundle['fallback']} on the CPU")
            return bundle["fallback"]
    return bundle["backend"]


def batch_of(images: Sequence[np.ndarray], manifest: dict[str, Any]) -> list[np.ndarray]:
    """Preprocessed inputs in the batches the graph takes (a static batch is padded with zeros)."""
    static = manifest["input"]["shape"][0]
    size = static if isinstance(static, int) else max(len(images), 1)
    pre = manifest["preprocessing"]
    x = np.stack([to_input(p, pre) for p in images])
    batches = []
    for start in range(0, len(x), size):
        chunk = x[start:start + size]
        if len(chunk) < size:
            chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        batches.append(chunk)
    return batches


# ---------------------------------------------------------------- benchmarks, in edgecnn's results schema

RESULTS_SCHEMA_VERSION = 1
RESULTS_KIND = "edgecnn-bench-results"


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """As edgecnn's benchmarks.stats: milliseconds per call (mean, p50/p90/p99, min, max, std), samples/s."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    stats = {"mean": ms.mean(), **{f"p{q}": np.percentile(ms, q) for q in (50, 90, 99)},
             "min": ms.min(), "max": ms.max(), "std": ms.std(ddof=1) if len(ms) > 1 else 0.0}
    return {**{k: round(float(v), 4) for k, v in stats.items()},
            "throughput": round(float(batch * 1e3 / stats["mean"]), 2), "iterations": len(ms)}


def _cpuinfo() -> tuple[str, set[str], int]:
    model, flags, cores, physical = platform.processor() or platform.machine(), set(), set(), "0"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "model name":
                    model = value
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key == "physical id":
                    physical = value
                elif key == "core id":
                    cores.add((physical, value))
    except OSError:
        pass
    try:  # ARM boards (Jetson) name themselves in the device tree rather than in /proc/cpuinfo
        model = Path("/proc/device-tree/model").read_text().strip("\x00\n ") or model
    except OSError:
        pass
    return model, flags, len(cores) or (os.cpu_count() or 1)


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
             "amx_bf16", "amx_fp16", "asimd", "asimddp", "fphp")


def machine_info() -> dict[str, Any]:
    cpu, flags, physical = _cpuinfo()
    logical = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            memory = round(next(int(line.split()[1]) for line in f if line.startswith("MemTotal:")) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        memory = None
    return {"name": f"{cpu} ×{logical}", "cpu": cpu, "logical_cores": logical, "physical_cores": physical,
            "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS}, "memory_gb": memory, "os": platform.platform(),
            "host": platform.node(), "arch": platform.machine(),
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def tool_versions() -> dict[str, str | None]:
    import importlib.metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for tool in ("numpy", "pillow", "onnxruntime", "openvino", "tensorrt", "torch"):
        try:
            versions[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            versions[tool] = None
    return versions


def tegrastats_power_mw(lines: Sequence[str]) -> float | None:
    """Mean board input power (mW) from tegrastats lines: VDD_IN (Orin, Xavier) or POM_5V_IN (Nano, TX2),
    each printed as `NAME current/average` in mW."""
    import re

    pattern = re.compile(r"\b(VDD_IN|POM_5V_IN)\s+(\d+)mW/(\d+)mW|\b(VDD_IN|POM_5V_IN)\s+(\d+)/(\d+)")
    values = []
    for line in lines:
        m = pattern.search(line)
        if m:
            values.append(float(m.group(2) or m.group(5)))
    return sum(values) / len(values) if values else None


def results_document(record: dict[str, Any], command: str, settings: dict[str, Any],
                     device: dict[str, Any]) -> dict[str, Any]:
    machine = machine_info()
    if device:
        machine["device"] = device
    return {"schema_version": RESULTS_SCHEMA_VERSION, "kind": RESULTS_KIND, "command": command,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "complete": True,
            "machine": machine, "tools": tool_versions(), "settings": settings,
            "timing": {"clock": "time.perf_counter around one runtime call (preprocessing excluded)",
                       "latency": "milliseconds per call (one batch); throughput = batch / mean",
                       "source": "an edgecnn deploy bundle's bench.sh"},
            "records": [record], "skipped": []}


def percent_spread(rounds: Sequence[Sequence[float]]) -> dict[str, Any]:
    medians = [float(np.median(r)) * 1e3 for r in rounds if len(r)]
    centre = float(np.median(medians))
    return {"round_p50_ms": [round(m, 4) for m in medians],
            "spread_pct": round(100 * (max(medians) - min(medians)) / centre, 2) if centre > 0 else 0.0}


def timed(run: Callable[[], Any], iterations: int) -> list[float]:
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times
