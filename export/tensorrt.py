"""TensorRT readiness: operator check, build scripts, and a real engine build where TensorRT runs.

Engines are not portable across GPUs or TensorRT versions, so a TensorRT artifact is the ONNX
graph plus `build_engine.py` (TensorRT 10 Python API) and `build_engine.sh` (trtexec). The graph's
operators are checked against those TensorRT's ONNX parser supports, so an unsupported op is
reported at export time rather than on the device.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Iterable

TENSORRT_OPS_SOURCE = "onnx-tensorrt docs/operators.md (TensorRT 10.x support matrix)"
TENSORRT_MAX_OPSET = 20  # TensorRT 10.0 parses opsets 9..20 (later 10.x releases read newer ones)
# ONNX operators TensorRT's ONNX parser supports (the support matrix's "Y" rows).
TENSORRT_ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
BUILD_SCRIPT = "build_engine.py"
TRTEXEC_SCRIPT = "build_engine.sh"
PLAN_FILE = "model.plan"
ENGINE_RECORD = "engine.json"   # what built the engine (tensorrt_build.ENGINE_RECORD; that file is standalone)
TIMING_CACHE = "timing.cache"
BUILD_LOG = "build_engine.log"


def unsupported_ops(ops: Iterable[str]) -> list[str]:
    return sorted(op for op in set(ops) if op not in TENSORRT_ONNX_OPS)


# What to do about an op TensorRT's parser lacks; any other gets GENERIC_WAY_OUT.
_INTEGER_OPS_WAY_OUT = ("integer-operator INT8 graphs are ONNX Runtime's format; TensorRT takes float graphs with "
                        "explicit QuantizeLinear/DequantizeLinear: export the float model with --target tensorrt "
                        "--precision int8")
WAYS_OUT = {op: _INTEGER_OPS_WAY_OUT for op in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")}
GENERIC_WAY_OUT = ("replace that layer with operators TensorRT parses, give TensorRT a plugin for it, or deploy "
                   "this model with --target onnx or --target openvino, whose runtimes run it")


def describe_nodes(graph: Path, ops: Iterable[str], shown: int = 3) -> str:
    """` (node 'name' (Op), ...)`: where in the ONNX graph the given ops are."""
    import onnx

    wanted = set(ops)
    nodes = [f"{n.name or n.output[0]!r} ({n.op_type})"
             for n in onnx.load(str(graph), load_external_data=False).graph.node if n.op_type in wanted]
    more = f" and {len(nodes) - shown} more" if len(nodes) > shown else ""
    return f" (node{'s' if len(nodes) > 1 else ''} {', '.join(nodes[:shown])}{more})" if nodes else ""


def way_out(ops: Iterable[str]) -> str:
    return "; ".join(dict.fromkeys(WAYS_OUT.get(op, GENERIC_WAY_OUT) for op in ops))


def engine_buildable_here() -> tuple[bool, str]:
    """Whether this machine can build an engine, and if not, why (said in the CLI and manifest)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "the tensorrt package is not installed here (it needs an NVIDIA GPU and TensorRT's libraries)"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible here"
    return True, ""


# Builder flags per artifact precision: INT8 is the explicit Q/DQ graph's own scales (no calibrator), plus FP16 for
# the layers ModelOpt leaves unquantized (FC layers at batch 1, convs with few channels), as its own default
# (high_precision_dtype="fp16") would make them; edgecnn keeps them FP32 in the ONNX so that CPU parity runs.
TRTEXEC_PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}


def trtexec_script(onnx_name: str, input_name: str, input_shape: list[Any], precision: str,
                   batch: int = 1, max_batch: int = 32, workspace_mib: int = 1024) -> str:
    """A POSIX shell script that builds model.plan with trtexec (a timing cache beside it) and writes the engine
    record (engine.json: GPU, compute capability, TensorRT version, read from trtexec's log).

    A dynamic batch axis gets an optimization profile, min 1 / opt BATCH / max MAX_BATCH (environment,
    defaults `batch` / `max_batch`); WORKSPACE_MIB the builder's workspace; TRTEXEC names the binary; extra arguments pass through to trtexec.
    """
    args = [f"--onnx={onnx_name}", f"--saveEngine={PLAN_FILE}", f"--timingCacheFile={TIMING_CACHE}"]
    args += TRTEXEC_PRECISION_FLAGS[precision]
    lines = ["#!/bin/sh",
             "# Build model.plan from the TensorRT-ready ONNX with trtexec, on the device that will run it",
             "# (engines are tied to the GPU and TensorRT version that built them), and record what built it.",
             "#     sh build_engine.sh [trtexec options, e.g. --useDLACore=0 --allowGPUFallback]",
             "set -eu",
             'cd "$(dirname "$0")"',
             'TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}',
             f'set -- "--memPoolSize=workspace:${{WORKSPACE_MIB:-{workspace_mib}}}M" "$@"']
    quoted = [shlex.quote(a) for a in args]
    if not isinstance(input_shape[0], int):
        chw = "x".join(str(d) for d in input_shape[1:])
        lines += [f"BATCH=${{BATCH:-{batch}}}", f"MAX_BATCH=${{MAX_BATCH:-{max_batch}}}",
                  'if [ "$BATCH" -gt "$MAX_BATCH" ]; then echo "build_engine.sh: BATCH $BATCH is larger than '
                  'MAX_BATCH $MAX_BATCH" >&2; exit 2; fi']
        quoted += [f'"--minShapes={input_name}:1x{chw}"', f'"--optShapes={input_name}:${{BATCH}}x{chw}"',
                   f'"--maxShapes={input_name}:${{MAX_BATCH}}x{chw}"']
    command = " \\\n    ".join(['"$TRTEXEC"'] + quoted + ['"$@"', "2>&1 | tee build_engine.log"])
    record = ("field() { sed -n \"s/.*$1: *//p\" build_engine.log | head -n 1 | tr -d '\\r'; }\n"
              "status=$(grep -c 'PASSED' build_engine.log || true)\n"
              'if [ "$status" = 0 ] || [ ! -s model.plan ]; then echo "build_engine.sh: trtexec did not build '
              'model.plan; see build_engine.log" >&2; exit 1; fi\n'
              f"cat > {ENGINE_RECORD} <<RECORD\n"
              '{"kind": "edgecnn-tensorrt-engine", "tensorrt": "$(field "TensorRT version")", '
              '"gpu": "$(field "Selected Device")", "compute_capability": "$(field "Compute Capability")", '
              '"built_utc": "$(date -u +%Y-%m-%dT%H:%M:%S+00:00)", "build": {"builder": "trtexec", '
              f'"precision": "{precision}"}}}}\n'
              "RECORD\n"
              f'echo "wrote model.plan and {ENGINE_RECORD}"\n')
    return "\n".join(lines) + "\n" + command + "\n" + record


def write_build_scripts(directory: Path, onnx_name: str, input_name: str, input_shape: list[Any],
                        precision: str) -> list[str]:
    (directory / BUILD_SCRIPT).write_text((Path(__file__).with_name("tensorrt_build.py")).read_text())
    (directory / TRTEXEC_SCRIPT).write_text(trtexec_script(onnx_name, input_name, input_shape, precision))
    for name in (BUILD_SCRIPT, TRTEXEC_SCRIPT):
        (directory / name).chmod(0o755)
    return [BUILD_SCRIPT, TRTEXEC_SCRIPT]
