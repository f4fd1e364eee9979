"""TensorRT readiness: operator check, build scripts, and a real engine build where TensorRT runs.

Engines are not portable across GPUs or TensorRT versions, so a TensorRT artifact is the ONNX
graph plus `build_engine.py` (TensorRT Python API) and `build_engine.sh` (trtexec). Both pick the
TensorRT generation they find: 10.3-10.11 build model.onnx with precision flags; 10.12 and 11 build
strongly typed, from the graph whose types are the precision (model_fp16.onnx for FP16 and INT8
artifacts, written here with NVIDIA ModelOpt). The graph's operators are checked against those
TensorRT's ONNX parser supports, so an unsupported op is reported at export time rather than on
the device.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Iterable

from edgecnn.quiet import silenced

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
TYPED_ONNX_FILE = "model_fp16.onnx"   # the strongly typed graph of an FP16 or INT8 artifact
STRONGLY_TYPED_FORMAT = "onnx_strongly_typed"   # its key in model_files (tensorrt_build.STRONGLY_TYPED_FORMAT)


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


# Weakly typed builds (TensorRT 10.3-10.11): precision as trtexec flags. INT8 is the explicit Q/DQ graph's own
# scales (no calibrator), plus FP16 for the layers ModelOpt leaves unquantized (FC layers at batch 1, convs with
# few channels), as its own default (high_precision_dtype="fp16") would make them; edgecnn keeps them FP32 in
# model.onnx so that CPU parity runs. Strongly typed builds (10.12 on, 11) take no precision flag: trtexec 11 has
# none (--fp16, --int8, --best, --calib are gone); the precision is in the strongly typed graph.
TRTEXEC_PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}
STRONGLY_TYPED_FLAG = "--stronglyTyped"
STRONGLY_TYPED_SINCE = 101200   # trtexec's [TensorRT vNNNNNN]: major * 10000 + minor * 100 + patch
OLDEST_TENSORRT = 100300        # 10.3 (JetPack 6.1); TensorRT 8.x prints major * 1000 + ..., below this too


def _shell_words(words: list[str]) -> str:
    return " ".join(shlex.quote(w) for w in words)


def trtexec_script(onnx_name: str, input_name: str, input_shape: list[Any], precision: str,
                   batch: int = 1, max_batch: int = 32, workspace_mib: int = 1024,
                   typed_onnx_name: str | None = None) -> str:
    """A POSIX shell script that builds model.plan with trtexec (a timing cache beside it) and writes the engine
    record (engine.json: GPU, compute capability, TensorRT version and typing, read from trtexec's log).

    The TensorRT generation is read from trtexec itself: 10.12 and newer build `typed_onnx_name` (the strongly
    typed graph; `onnx_name` for FP32) with --stronglyTyped, 10.3-10.11 build `onnx_name` with precision flags,
    anything older is refused. A dynamic batch axis gets an optimization profile, min 1 / opt BATCH / max MAX_BATCH
    (environment, defaults `batch` / `max_batch`; min = opt = max = BATCH with --useDLACore, as the DLA needs);
    WORKSPACE_MIB the builder's workspace; TRTEXEC names the binary; extra arguments pass through to trtexec.
    """
    typed = typed_onnx_name or (onnx_name if precision == "fp32" else None)
    refuse_typed = ('echo "build_engine.sh: TensorRT $major.$minor builds strongly typed only, and this '
                    f'{precision} artifact has no strongly typed graph: export it again with this edgecnn and NVIDIA '
                    "ModelOpt installed (pip install 'edgecnn[tensorrt-int8]')\" >&2; exit 1")
    weak_flags = TRTEXEC_PRECISION_FLAGS[precision]
    lines = ["#!/bin/sh",
             "# Build model.plan from the TensorRT-ready ONNX with trtexec, on the device that will run it",
             "# (engines are tied to the GPU and TensorRT version that built them), and record what built it.",
             "# TensorRT 10.12+ (11 included) builds the strongly typed graph with --stronglyTyped; 10.3-10.11 builds",
             "# model.onnx with precision flags.",
             "#     sh build_engine.sh [trtexec options, e.g. --useDLACore=0 --allowGPUFallback]",
             "set -eu",
             'cd "$(dirname "$0")"',
             'TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}']
    dynamic = not isinstance(input_shape[0], int)
    if dynamic:
        lines += [f"BATCH=${{BATCH:-{batch}}}", f"MAX_BATCH=${{MAX_BATCH:-{max_batch}}}",
                  'if [ "$BATCH" -gt "$MAX_BATCH" ]; then echo "build_engine.sh: BATCH $BATCH is larger than '
                  'MAX_BATCH $MAX_BATCH" >&2; exit 2; fi']
    lines += ['version=$("$TRTEXEC" --help 2>&1 | sed -n \'s/.*\\[TensorRT v\\([0-9][0-9]*\\)\\].*/\\1/p\' | head -n 1 || true)',
             'case $version in',
             "    ''|*[!0-9]*) echo \"build_engine.sh: $TRTEXEC printed no [TensorRT vNNNNNN] line, so its TensorRT "
             'version is unknown: set TRTEXEC to the trtexec of TensorRT 10.3 or newer" >&2; exit 1 ;;',
             "esac",
             f'if [ "$version" -lt {OLDEST_TENSORRT} ]; then echo "build_engine.sh: $TRTEXEC is TensorRT older than '
             '10.3 (v$version), the oldest edgecnn builds with (JetPack 6.1); JetPack 5 and 6.0 cannot parse these '
             'graphs: upgrade JetPack, or run the ONNX model with ONNX Runtime" >&2; exit 1; fi',
             'major=$((version / 10000)) minor=$((version / 100 % 100))',
             'dla=""',
             'for arg in "$@"; do case $arg in --useDLACore*) dla=1 ;; esac; done']
    if precision == "int8":
        lines.append('if [ -n "$dla" ]; then echo "build_engine.sh: INT8 on the DLA needs implicit quantization, which '
                     'TensorRT ignores for this explicit Q/DQ graph (the engine would run on the GPU): build INT8 '
                     'without --useDLACore, or export --precision fp16 for the DLA" >&2; exit 1; fi')
    lines.append(f'if [ "$version" -ge {STRONGLY_TYPED_SINCE} ]; then')
    if typed is None:
        lines.append(f"    {refuse_typed}")
    else:
        if precision == "fp32":
            lines.append('    if [ -n "$dla" ]; then echo "build_engine.sh: the DLA runs FP16 or INT8, never FP32, and '
                         'TensorRT $major.$minor builds this FP32 graph as typed: export --precision fp16 for the DLA" '
                         '>&2; exit 1; fi')
        lines.append(f'    typing=strong; set -- {_shell_words([f"--onnx={typed}", STRONGLY_TYPED_FLAG])} "$@"')
    lines += ["else",
              f'    typing=weak; set -- {_shell_words([f"--onnx={onnx_name}", *weak_flags])} "$@"']
    if precision == "fp32":
        lines.append('    [ -n "$dla" ] && set -- "$@" --fp16  # the DLA has no FP32')
    lines += ["fi",
              f'set -- "--memPoolSize=workspace:${{WORKSPACE_MIB:-{workspace_mib}}}M" "$@"']
    args = [f"--saveEngine={PLAN_FILE}", f"--timingCacheFile={TIMING_CACHE}"]
    quoted = [shlex.quote(a) for a in args]
    if dynamic:
        chw = "x".join(str(d) for d in input_shape[1:])
        lines += ['MIN_BATCH=1',
                  'if [ -n "$dla" ]; then MIN_BATCH=$BATCH MAX_BATCH=$BATCH; fi  # the DLA needs min = opt = max']
        quoted += [f'"--minShapes={input_name}:${{MIN_BATCH}}x{chw}"', f'"--optShapes={input_name}:${{BATCH}}x{chw}"',
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
              f'"precision": "{precision}", "typing": "$typing"}}}}\n'
              "RECORD\n"
              f'echo "wrote model.plan and {ENGINE_RECORD}"\n')
    return "\n".join(lines) + "\n" + command + "\n" + record


def write_build_scripts(directory: Path, onnx_name: str, input_name: str, input_shape: list[Any],
                        precision: str, typed_onnx_name: str | None = None) -> list[str]:
    (directory / BUILD_SCRIPT).write_text((Path(__file__).with_name("tensorrt_build.py")).read_text())
    (directory / TRTEXEC_SCRIPT).write_text(trtexec_script(onnx_name, input_name, input_shape, precision,
                                                           typed_onnx_name=typed_onnx_name))
    for name in (BUILD_SCRIPT, TRTEXEC_SCRIPT):
        (directory / name).chmod(0o755)
    return [BUILD_SCRIPT, TRTEXEC_SCRIPT]


def autocast_available() -> bool:
    """Whether NVIDIA ModelOpt's AutoCast, which writes the strongly typed FP16 graph, imports here."""
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except Exception:  # ImportError, or a missing optional dependency it imports eagerly
        return False
    return True


def write_strongly_typed_graph(source: Path, out: Path, quantized: bool) -> None:
    """The graph TensorRT 10.12+ builds for an FP16 or INT8 artifact: precision in the graph, since strongly
    typed TensorRT has no precision flags. FP16: ModelOpt AutoCast (FP32 only where FP16 would overflow or lose
    a reduction, I/O kept FP32); INT8 (a Q/DQ graph): the unquantized layers in FP16, as ModelOpt's own
    high_precision_dtype="fp16" makes them."""
    import onnx
    from modelopt.onnx.autocast import convert_to_f16, convert_to_mixed_precision

    with silenced("", "modelopt", stdout=True):
        if quantized:
            model = convert_to_f16(onnx.load(str(source)), keep_io_types=True, low_precision_type="fp16")
        else:
            model = convert_to_mixed_precision(str(source), low_precision_type="fp16", keep_io_types=True)
    onnx.save(model, str(out))
