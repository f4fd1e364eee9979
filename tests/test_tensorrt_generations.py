"""TensorRT 10 and 11 without a GPU: the real Python bindings of each supported TensorRT, loaded against stub
libraries, must have every TensorRT attribute edgecnn's build code, session and bundle runner touch; and
build_engine.sh must give each version's trtexec only options that version accepts (the option lists are taken
from trtexec's sources at each tag, tests/data/trtexec_options/).

TensorRT's libraries cannot be installed here (PyPI's tensorrt-*-libs download from NVIDIA's own index), but the
tensorrt-cu12-bindings wheels are real: pip downloads them (a megabyte each) into a cache once per machine."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgecnn.export import export_registered, tensorrt
from edgecnn.export.tensorrt_build import (BuildRefused, check_engine_record, check_request, engine_record,
                                           graph_for, strongly_typed, version_tuple)

REPO = Path(__file__).resolve().parents[1]
# JetPack 6.1/6.2; Thor's JetPack 7.0; the last 10.x; pip's default today.
BINDINGS = ("10.3.0", "10.13.3.9", "10.16.1.11", "11.4.0.106")
CACHE = Path(os.environ.get("EDGECNN_TEST_CACHE", Path.home() / ".cache" / "edgecnn-tests")) / "tensorrt-bindings"
# Every symbol any of these bindings needs from libnvinfer, libnvonnxparser and libnvinfer_plugin: enough to
# import the module and read its classes and enums; nothing here can build or run an engine.
STUB_SOURCE = """
void *createInferBuilder_INTERNAL(void *a, int b) { return 0; }
void *createInferRefitter_INTERNAL(void *a, void *b, int c) { return 0; }
void *createInferRuntime_INTERNAL(void *a, int b) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *a, void *b, int c) { return 0; }
void *createNvOnnxParser_INTERNAL(void *a, void *b, int c) { return 0; }
void *getBuilderPluginRegistry(int a) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return 0; }
int initLibNvInferPlugins(void *a, const char *b) { return 1; }
"""
SOURCES = {"export/tensorrt_build.py": None,                          # the whole file: the builder
           "export/backends/tensorrt.py": "TensorRTSession",           # edgecnn's session
           "export/deploy/templates/edgecnn_bundle.py": "TensorRTRunner"}  # the bundle's runner
# Methods and properties called on TensorRT's objects (not reachable by name from the module), by class.
OBJECT_API = {
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network", "platform_has_fast_fp16", "num_DLA_cores"),
    "IBuilderConfig": ("set_memory_pool_limit", "set_flag", "default_device_type", "DLA_core", "can_run_on_DLA",
                       "add_optimization_profile", "create_timing_cache", "set_timing_cache", "profiling_verbosity"),
    "INetworkDefinition": ("get_layer", "num_layers"),
    "OnnxParser": ("parse_from_file", "get_error", "num_errors"),
    "IOptimizationProfile": ("set_shape",),
    "ITimingCache": ("serialize",),
    "EngineInspector": ("get_engine_information",),
    "Runtime": ("deserialize_cuda_engine",),
    "ICudaEngine": ("create_execution_context", "num_io_tensors", "get_tensor_name", "get_tensor_mode",
                    "get_tensor_profile_shape", "get_tensor_shape", "create_engine_inspector",
                    "get_tensor_dtype"),
    "IExecutionContext": ("set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"),
}
WEAK_ONLY = {"Builder.platform_has_fast_fp16"}  # called only where TensorRT builds weakly typed (< 10.12)


def _module_chains(source: str, scope: str | None) -> dict[str, set[str]]:
    """`trt.X.Y` attribute chains in the source (or in class `scope`), by the function that holds them."""
    tree = ast.parse(source)
    if scope:
        tree = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == scope)
    found: dict[str, set[str]] = {}
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(function):
            parts = []
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "trt" and parts:
                found.setdefault(function.name, set()).add(".".join(reversed(parts)))
            elif isinstance(node, ast.Attribute) and node.attr == "trt" and parts:  # self.trt.X
                found.setdefault(function.name, set()).add(".".join(reversed(parts)))
    return found


def _required(version: str) -> set[str]:
    """What this TensorRT version must have: module chains (a `_weak_` function's only below 10.12) and the
    object API (its weak-only members likewise)."""
    typed = strongly_typed(version)
    chains: set[str] = set()
    for path, scope in SOURCES.items():
        for function, used in _module_chains((REPO / path).read_text(), scope).items():
            if not (typed and function.startswith("_weak_")):
                chains |= {c for c in used if c != "__version__"}
    members = {f"{cls}.{m}" for cls, names in OBJECT_API.items() for m in names}
    return chains | (members - WEAK_ONLY if typed else members)


def _bindings(version: str, tmp: Path) -> tuple[Path, Path]:
    """The unpacked bindings wheel of `version` and a folder of stub TensorRT libraries for its major version."""
    wheels = CACHE / version
    if not any(wheels.glob("*.whl")):
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(wheels), f"tensorrt-cu12-bindings=={version}"], check=True, timeout=600)
    unpacked = tmp / f"bindings-{version}"
    with zipfile.ZipFile(next(wheels.glob("*.whl"))) as wheel:
        wheel.extractall(unpacked)
    stubs = tmp / f"stubs-{version}"
    stubs.mkdir()
    (stubs / "stub.c").write_text(STUB_SOURCE)
    major = version.split(".")[0]
    for lib in ("libnvinfer", "libnvonnxparser", "libnvinfer_plugin"):
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(stubs / f"{lib}.so.{major}"),
                        f"-Wl,-soname,{lib}.so.{major}", str(stubs / "stub.c")], check=True)
    return unpacked, stubs


PROBE = """
import json, sys
import tensorrt_bindings as trt
found = {}
for chain in json.loads(sys.argv[1]):
    head, _, rest = chain.partition(".")
    obj = getattr(trt, head, None)
    for part in filter(None, rest.split(".")):
        obj = getattr(obj, part, None)
    found[chain] = obj is not None
print(json.dumps({"version": trt.__version__, "found": found}))
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the stub TensorRT libraries")
@pytest.mark.parametrize("version", BINDINGS)
def test_every_tensorrt_attribute_edgecnn_touches_exists_in_that_version(version: str, tmp_path: Path) -> None:
    unpacked, stubs = _bindings(version, tmp_path)
    wanted = sorted(_required(version))
    assert {"NetworkDefinitionCreationFlag.STRONGLY_TYPED", "Builder.create_network"} <= set(wanted)
    assert ("BuilderFlag.FP16" in wanted) == (not strongly_typed(version))  # weak-typed builds only
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(wanted)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(unpacked), "LD_LIBRARY_PATH": str(stubs)}, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert version_tuple(result["version"]) == version_tuple(version)
    missing = [chain for chain, ok in result["found"].items() if not ok]
    assert not missing, f"TensorRT {version} lacks {missing}"


def test_the_object_api_table_covers_every_call_on_tensorrt_objects() -> None:
    """The conformance check above is only as good as OBJECT_API: every method the sources call on a builder,
    config, network, parser, profile, cache, engine or context must be in it."""
    listed = {m for names in OBJECT_API.values() for m in names}
    holders = {"builder", "config", "network", "parser", "profile", "cache", "engine", "context", "_engine",
               "_context", "runtime"}
    used = set()
    for path, scope in SOURCES.items():
        tree = ast.parse((REPO / path).read_text())
        if scope:
            tree = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == scope)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                holder = node.value
                name = holder.id if isinstance(holder, ast.Name) else \
                    holder.attr if isinstance(holder, ast.Attribute) and isinstance(holder.value, ast.Name) \
                    and holder.value.id == "self" else None
                if name in holders:
                    used.add(node.attr)
    path_methods = {"read_bytes", "is_file", "write_bytes"}  # `cache` is also a timing-cache Path
    assert used - path_methods <= listed, f"not in OBJECT_API: {sorted(used - path_methods - listed)}"
    assert {"create_network", "set_flag", "execute_async_v3"} <= used  # the scan sees the calls


def test_generation_rules() -> None:
    assert version_tuple("10.16.1.11") == version_tuple("10.16.1") == (10, 16, 1)
    assert not strongly_typed("10.3.0") and not strongly_typed("10.11.0.33")
    assert strongly_typed("10.12.0.36") and strongly_typed("10.13.3.9") and strongly_typed("11.4.0.106")
    files = {"onnx": "model.onnx", "onnx_strongly_typed": "model_fp16.onnx"}
    assert graph_for(files, "10.3.0") == "model.onnx" and graph_for(files, "11.4.0.106") == "model_fp16.onnx"
    assert graph_for({"onnx": "model.onnx"}, "11.4.0.106") == "model.onnx"  # fp32: one graph for both
    for version, precision, dla, typed, says in (
            ("8.6.2", "fp16", None, True, "older than 10.3"),
            ("11.4.0", "fp16", None, False, "no strongly typed graph"),
            ("10.3.0", "int8", 0, True, "INT8 on the DLA needs implicit quantization"),
            ("11.0.0", "fp32", 0, True, "the DLA runs FP16 or INT8, never FP32")):
        with pytest.raises(BuildRefused, match=says):
            check_request(version, precision, dla, typed)
    check_request("10.3.0", "fp32", 0, False)   # weak typing builds an FP32 artifact FP16 on the DLA
    check_request("10.16.1.11", "fp16", 1, True)


def test_an_engine_built_by_trtexec_is_accepted_by_the_wheel_with_its_build_number(tmp_path: Path) -> None:
    """trtexec records 10.16.1, the pip wheel says 10.16.1.11: the same TensorRT (from 10.8 on)."""
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    device = {"gpu": "Orin", "compute_capability": "8.7"}
    (tmp_path / "engine.json").write_text(json.dumps(engine_record("10.16.1", device, builder="trtexec")))
    assert check_engine_record(plan, "10.16.1.11", device)["tensorrt"] == "10.16.1"


# ---------------------------------------------------------------- trtexec, per version

def _trtexec_options(version: str) -> set[str]:
    lines = (REPO / "tests" / "data" / "trtexec_options" / f"{version}.txt").read_text().splitlines()
    return {line for line in lines if line.startswith("--")}


TRTEXEC_VERSIONS = {"10.3": 100300, "10.13": 101300, "10.16": 101600, "11.1": 110100}
FAKE_TRTEXEC = """#!/usr/bin/env python3
# A trtexec that accepts exactly one TensorRT version's options (from its sources) and records what it was given.
import json, sys
from pathlib import Path
accepted = set(json.loads(Path(__file__).with_name("options.json").read_text()))
number = int(Path(__file__).with_name("version").read_text())
print(f"&&&& RUNNING TensorRT.trtexec [TensorRT v{number}] # trtexec " + " ".join(sys.argv[1:]))
if "--help" in sys.argv:
    sys.exit(0)
unknown = [a for a in sys.argv[1:] if a.split("=")[0] not in accepted]
if unknown:
    print(f"Unknown option: {unknown[0]}")
    sys.exit(1)
Path(__file__).with_name("calls.json").write_text(json.dumps(sys.argv[1:]))
save = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--saveEngine="))
Path(save).write_bytes(b"engine")
print(f"[I] TensorRT version: {number // 10000}.{number // 100 % 100}.{number % 100}")
print("[I] Selected Device: Orin")
print("[I] Compute Capability: 8.7")
print("&&&& PASSED TensorRT.trtexec")
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trt-generations")
    return {precision: export_registered("lenet5_fmnist", "tensorrt", precision, root / precision,
                                         dynamic_batch=True, parity_samples=8).path
            for precision in ("fp32", "fp16")}


def _fake_trtexec(tmp_path: Path, version: str) -> Path:
    folder = tmp_path / f"trtexec-{version}"
    folder.mkdir()
    (folder / "options.json").write_text(json.dumps(sorted(_trtexec_options(version))))
    (folder / "version").write_text(str(TRTEXEC_VERSIONS[version]))
    (folder / "trtexec").write_text(FAKE_TRTEXEC.replace("/usr/bin/env python3", sys.executable, 1))
    (folder / "trtexec").chmod(0o755)
    return folder


@pytest.mark.parametrize("version", TRTEXEC_VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engine_sh_gives_each_trtexec_only_options_it_has(artifacts: dict[str, Path], tmp_path: Path,
                                                                version: str, precision: str) -> None:
    artifact = shutil.copytree(artifacts[precision], tmp_path / "artifact")
    fake = _fake_trtexec(tmp_path, version)
    run = subprocess.run(["sh", str(artifact / "build_engine.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "TRTEXEC": str(fake / "trtexec"), "BATCH": "4"})
    assert run.returncode == 0, run.stdout + run.stderr
    calls = json.loads((fake / "calls.json").read_text())
    typed = TRTEXEC_VERSIONS[version] >= 101200
    graph = "model_fp16.onnx" if typed and precision == "fp16" else "model.onnx"
    assert f"--onnx={graph}" in calls and ("--stronglyTyped" in calls) == typed
    assert ("--fp16" in calls) == (precision == "fp16" and not typed)
    assert "--minShapes=input:1x1x28x28" in calls and "--maxShapes=input:32x1x28x28" in calls
    record = json.loads((artifact / "engine.json").read_text())
    assert record["build"]["typing"] == ("strong" if typed else "weak")
    assert version_tuple(record["tensorrt"])[:2] == tuple(int(p) for p in version.split("."))


@pytest.mark.parametrize("version", TRTEXEC_VERSIONS)
def test_build_engine_sh_on_the_dla_has_a_fixed_batch_and_refuses_what_the_dla_cannot_run(
        artifacts: dict[str, Path], tmp_path: Path, version: str) -> None:
    fake = _fake_trtexec(tmp_path, version)
    env = {"PATH": "/usr/bin:/bin", "TRTEXEC": str(fake / "trtexec"), "BATCH": "2"}
    typed = TRTEXEC_VERSIONS[version] >= 101200
    fp32 = shutil.copytree(artifacts["fp32"], tmp_path / "fp32")
    run = subprocess.run(["sh", str(fp32 / "build_engine.sh"), "--useDLACore=0", "--allowGPUFallback"],
                         capture_output=True, text=True, env=env)
    if typed:
        assert run.returncode == 1 and "the DLA runs FP16 or INT8, never FP32" in run.stderr
        assert not (fp32 / "model.plan").exists()
    else:
        calls = json.loads((fake / "calls.json").read_text())
        assert run.returncode == 0 and "--fp16" in calls  # the DLA has no FP32
    fp16 = shutil.copytree(artifacts["fp16"], tmp_path / "fp16")
    run = subprocess.run(["sh", str(fp16 / "build_engine.sh"), "--useDLACore=0"], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    calls = json.loads((fake / "calls.json").read_text())
    assert {"--minShapes=input:2x1x28x28", "--optShapes=input:2x1x28x28", "--maxShapes=input:2x1x28x28"} <= set(calls)


def test_int8_build_script_refuses_the_dla_and_names_the_strongly_typed_graph() -> None:
    script = tensorrt.trtexec_script("model.onnx", "input", [1, 1, 28, 28], "int8", typed_onnx_name="model_fp16.onnx")
    assert "--onnx=model_fp16.onnx --stronglyTyped" in script and "--onnx=model.onnx --int8 --fp16" in script
    assert "INT8 on the DLA needs implicit quantization" in script
    untyped = tensorrt.trtexec_script("model.onnx", "input", [1, 1, 28, 28], "fp16")
    assert "has no strongly typed graph" in untyped


@pytest.mark.parametrize("number, says", [(8601, "older than 10.3"), (None, "printed no [TensorRT vNNNNNN] line")])
def test_build_engine_sh_refuses_an_old_or_unknown_trtexec(artifacts: dict[str, Path], tmp_path: Path,
                                                           number: int | None, says: str) -> None:
    artifact = shutil.copytree(artifacts["fp32"], tmp_path / "artifact")
    fake = tmp_path / "trtexec"
    fake.write_text(f"#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v{number}]'\n" if number else
                    "#!/bin/sh\necho 'not trtexec'\n")
    fake.chmod(0o755)
    run = subprocess.run(["sh", str(artifact / "build_engine.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "TRTEXEC": str(fake)})
    assert run.returncode == 1 and says in run.stderr and not (artifact / "model.plan").exists()


def test_build_engine_py_refuses_before_tensorrt_is_asked(artifacts: dict[str, Path], tmp_path: Path) -> None:
    """Without TensorRT importable, build_engine.py says how to get it (apt package, --system-site-packages)."""
    artifact = shutil.copytree(artifacts["fp16"], tmp_path / "artifact")
    run = subprocess.run([sys.executable, "-I", str(artifact / "build_engine.py")], capture_output=True, text=True)
    assert run.returncode == 1 and "python3-libnvinfer" in run.stderr and "--system-site-packages" in run.stderr
    assert "Traceback" not in run.stderr
