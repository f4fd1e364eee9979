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


def unsupported_ops(ops: Iterable[str]) -> list[str]:
    return sorted(op for op in set(ops) if op not in TENSORRT_ONNX_OPS)


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


def trtexec_script(onnx_name: str, input_name: str, input_shape: list[Any], fp16: bool,
                   max_batch: int = 32, workspace_mib: int = 1024) -> str:
    """A POSIX shell script that builds model.plan with trtexec; extra arguments pass through."""
    args = [f"--onnx={onnx_name}", f"--saveEngine={PLAN_FILE}", f"--memPoolSize=workspace:{workspace_mib}M"]
    if fp16:
        args.append("--fp16")
    if not isinstance(input_shape[0], int):
        chw = "x".join(str(d) for d in input_shape[1:])
        args += [f"--minShapes={input_name}:1x{chw}", f"--optShapes={input_name}:{max_batch}x{chw}",
                 f"--maxShapes={input_name}:{max_batch}x{chw}"]
    command = " \\\n    ".join(["trtexec"] + [shlex.quote(a) for a in args] + ['"$@"'])
    return ("#!/bin/sh\n"
            "# Build model.plan from the TensorRT-ready ONNX with trtexec, on the device that will run it\n"
            "# (engines are tied to the GPU and TensorRT version that built them).\n"
            "set -e\n"
            'cd "$(dirname "$0")"\n'
            f"{command}\n")


def write_build_scripts(directory: Path, onnx_name: str, input_name: str, input_shape: list[Any],
                        fp16: bool) -> list[str]:
    (directory / BUILD_SCRIPT).write_text((Path(__file__).with_name("tensorrt_build.py")).read_text())
    (directory / TRTEXEC_SCRIPT).write_text(trtexec_script(onnx_name, input_name, input_shape, fp16))
    for name in (BUILD_SCRIPT, TRTEXEC_SCRIPT):
        (directory / name).chmod(0o755)
    return [BUILD_SCRIPT, TRTEXEC_SCRIPT]
