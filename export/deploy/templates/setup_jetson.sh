#!/bin/sh
# Check this Jetson (L4T / JetPack release, TensorRT, CUDA, free memory), say exactly what is missing, then build
# the TensorRT engine here with the artifact's build script (engines are tied to the GPU and TensorRT version that
# built them) and check the bundle with python3 run.py --check.
#     ./setup.sh [--dla-core N] [--workspace-mib MIB] [--batch N] [--max-batch N] [--rebuild] [--verify-key PUB.pem]
# Needs JetPack 6.1 or newer (TensorRT 10.3+; JetPack 7 on Thor included). The timing cache (timing.cache) is
# kept beside the engine, so a rebuild takes seconds. --dla-core needs a board with DLA cores (AGX/NX Orin) and
# an FP16 (or, on TensorRT < 10.12, FP32) bundle: TensorRT runs INT8 on the DLA only by implicit quantization.
set -u
PY=${PYTHON:-python3}
RELEASE=${EDGECNN_TEGRA_RELEASE:-/etc/nv_tegra_release}
precision="@@PRECISION@@"
DLA_DEVICES=${EDGECNN_DLA_DEVICES:-/dev}
dla="" workspace=1024 batch="" max_batch="" rebuild=0 key=""
need_value() { [ $# -ge 2 ] || { echo "setup.sh: $1 needs a value" >&2; exit 2; }; }
number() {  # name value minimum
    case $2 in ''|*[!0-9]*) echo "setup.sh: $1 must be an integer of at least $3, got '$2'" >&2; exit 2 ;; esac
    [ "$2" -ge "$3" ] || { echo "setup.sh: $1 must be at least $3, got $2" >&2; exit 2; }
}
# Python with this folder off sys.path: a file dropped into the bundle (numpy.py, tensorrt/) is never imported.
py() { "$PY" -B -c "import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; $1"; }
while [ $# -gt 0 ]; do
    case $1 in
        --dla-core) need_value "$@"; number --dla-core "$2" 0; dla=$2; shift 2 ;;
        --workspace-mib) need_value "$@"; number --workspace-mib "$2" 1; workspace=$2; shift 2 ;;
        --batch) need_value "$@"; number --batch "$2" 1; batch=$2; shift 2 ;;
        --max-batch) need_value "$@"; number --max-batch "$2" 1; max_batch=$2; shift 2 ;;
        --rebuild) rebuild=1; shift ;;
        --verify-key) need_value "$@"; case $2 in /*) key=$2 ;; *) key="$PWD/$2" ;; esac; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option $1 (see ./setup.sh --help)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")" || exit 1
if [ ! -f "$RELEASE" ]; then
    echo "setup.sh: this is not a Jetson ($RELEASE is missing): copy the bundle to the Jetson and run ./setup.sh there; on this machine run.py runs the ONNX model on ONNX Runtime (CPU) instead" >&2
    exit 1
fi
missing=""
l4t=$(head -n 1 "$RELEASE")
major=$(echo "$l4t" | sed -n 's/^# R\([0-9][0-9]*\).*/\1/p')
revision=$(echo "$l4t" | sed -n 's/.*REVISION: \([0-9.][0-9.]*\).*/\1/p')
case $major in
    32) jetpack="4.x" ;;
    34|35) jetpack="5.x" ;;
    36) case $revision in [0-3].*) jetpack="6.0" ;; *) jetpack="6.1/6.2" ;; esac ;;
    38) jetpack="7.0" ;;
    39) jetpack="7.2" ;;
    *) jetpack="" ;;
esac
echo "L4T: R$major.$revision (JetPack ${jetpack:-unknown to this script})"
case $jetpack in
    4.x|5.x|6.0)
        echo "setup.sh: JetPack $jetpack ships TensorRT 8.x, older than 10.3, the oldest edgecnn builds engines with (its ONNX parser stops at an older opset and lacks strong typing): flash JetPack 6.1 or newer, or run the ONNX model on ONNX Runtime (python3 run.py --backend onnxruntime)" >&2
        exit 1 ;;
    "") echo "note: L4T R$major is newer than this script knows; the engine build checks TensorRT's version itself" ;;
esac
if [ -n "$dla" ]; then
    if [ "$precision" = int8 ]; then
        echo "setup.sh: INT8 on the DLA needs implicit quantization (a calibrator with every tensor's range), which TensorRT ignores for this bundle's explicit Q/DQ graph, so the engine would run on the GPU while claiming the DLA: drop --dla-core to build INT8 for the GPU, or deploy --precision fp16 for the DLA" >&2
        exit 2
    fi
    if ! ls "$DLA_DEVICES" 2>/dev/null | grep -q nvdla; then
        echo "setup.sh: --dla-core $dla: this board has no DLA ($DLA_DEVICES has no nvdla device; Orin Nano and Thor have none): drop --dla-core to build for the GPU" >&2
        exit 2
    fi
fi
trt_python=$(py 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)
trtexec=$(command -v trtexec || { [ -x /usr/src/tensorrt/bin/trtexec ] && echo /usr/src/tensorrt/bin/trtexec; } || true)
echo "TensorRT: python ${trt_python:-not importable}; trtexec ${trtexec:-not found}"
if [ -z "$trt_python" ] && [ -z "$trtexec" ]; then
    missing="$missing TensorRT(sudo apt install nvidia-tensorrt python3-libnvinfer, part of nvidia-jetpack)"
fi
case $trt_python in [0-9].*|10.[0-2].*)
    echo "setup.sh: TensorRT $trt_python is older than 10.3, the oldest edgecnn builds engines with: upgrade JetPack to 6.1 or newer" >&2
    exit 1 ;;
esac
cuda=""
for v in /usr/local/cuda/version.json /usr/local/cuda/version.txt; do
    [ -f "$v" ] && cuda=$(grep -m1 -o '[0-9][0-9]*\.[0-9][0-9.]*' "$v") && break
done
[ -z "$cuda" ] && command -v nvcc >/dev/null 2>&1 && cuda=$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
echo "CUDA: ${cuda:-not found}"
[ -z "$cuda" ] && missing="$missing CUDA(sudo apt install nvidia-cuda, part of nvidia-jetpack)"
free_mib=$(awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo 2>/dev/null)
echo "memory: ${free_mib:-?} MiB available (shared by CPU and GPU)"
if [ -n "$free_mib" ] && [ "$free_mib" -lt $((workspace + 512)) ]; then
    missing="$missing memory(${free_mib}MiB free; the build wants ~$((workspace + 512))MiB: close programs or pass a smaller --workspace-mib)"
fi
for pair in numpy:numpy PIL:pillow; do
    module=${pair%%:*}
    py "import $module" 2>/dev/null || missing="$missing $PY-package:${pair#*:}"
done
if [ -n "$missing" ]; then
    echo "setup.sh: missing:$missing" >&2
    exit 1
fi
# Every listed file's SHA-256 (and with --verify-key the signature) before any of the bundle's code builds anything.
EDGECNN_VERIFY_KEY="$key" py "
import importlib.util as u, pathlib
spec = u.spec_from_file_location('edgecnn_bundle', 'edgecnn_bundle.py')
b = u.module_from_spec(spec)
spec.loader.exec_module(b)
key = os.environ['EDGECNN_VERIFY_KEY']
try:
    b.load_manifest(verify_key=pathlib.Path(key) if key else None)
except b.BundleError as e:
    sys.exit('setup.sh: ' + b.printable(str(e)))
" || exit 2
@@STAGES@@
for onnx in $onnx_files; do
    plan="${onnx%.onnx}.plan"
    if [ -f "$plan" ] && [ "$rebuild" = 0 ]; then
        echo "engine $plan exists (--rebuild to build it again)"
        continue
    fi
    if [ -n "$trt_python" ]; then
        set -- --onnx "$onnx" --out "$plan" --workspace-mib "$workspace" --timing-cache timing.cache
        [ -n "$batch" ] && set -- "$@" --batch "$batch"
        [ -n "$max_batch" ] && set -- "$@" --max-batch "$max_batch"
        [ -n "$dla" ] && set -- "$@" --dla-core "$dla"
        "$PY" -B build_engine.py "$@" || exit 1
    elif [ -n "$trtexec" ] && [ "$onnx" = model.onnx ]; then
        set --
        [ -n "$dla" ] && set -- "--useDLACore=$dla" --allowGPUFallback
        TRTEXEC="$trtexec" WORKSPACE_MIB="$workspace" BATCH="${batch:-1}" MAX_BATCH="${max_batch:-32}" \
            sh build_engine.sh "$@" || exit 1
    else
        echo "setup.sh: missing: TensorRT's Python package, which builds the early-exit stage $onnx (trtexec builds model.onnx only): sudo apt install python3-libnvinfer, and from a virtualenv create it with --system-site-packages" >&2
        exit 1
    fi
done
if [ -z "$trt_python" ]; then
    echo "note: trtexec built the engine, but TensorRT's Python module is not importable from $PY, so run.py falls back to ONNX Runtime: sudo apt install python3-libnvinfer (a virtualenv needs --system-site-packages to see it), then python3 run.py --check"
fi
if [ -n "$key" ]; then
    exec "$PY" -B run.py --check --verify-key "$key"
fi
exec "$PY" -B run.py --check
