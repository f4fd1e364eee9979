#!/bin/sh
# Check that this machine can run the bundle (Python, numpy, Pillow, @@RUNTIME@@, CPU flags), say exactly what is
# missing, then verify every file's SHA-256 and load the model once (python3 run.py --check).
#     ./setup.sh [--verify-key PUB.pem]     (PYTHON=/path/to/python3 ./setup.sh to use another interpreter)
# --verify-key refuses the bundle unless manifest.json.sig is its Ed25519 signature by that public key.
set -u
usage="usage: ./setup.sh [--verify-key PUB.pem] [--help]"
key=""
while [ $# -gt 0 ]; do
    case $1 in
        --verify-key)
            if [ $# -lt 2 ]; then
                echo "setup.sh: --verify-key needs a value (the signer's public key PEM file)" >&2
                echo "$usage" >&2
                exit 2
            fi
            case $2 in /*) key=$2 ;; *) key="$PWD/$2" ;; esac  # before the cd below
            shift 2 ;;
        -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option $1" >&2; echo "$usage" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")" || exit 1
PY=${PYTHON:-python3}
# Python with this folder off sys.path: a file dropped into the bundle (numpy.py, PIL/) must never be imported.
py() { "$PY" -B -c "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; $1"; }
missing=""
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "setup.sh: missing: $PY (Python 3.8 or newer): install it, e.g. sudo apt install python3 python3-pip" >&2
    exit 1
fi
if ! py 'sys.exit(sys.version_info < (3, 8))'; then
    echo "setup.sh: missing: Python 3.8 or newer (found $("$PY" -V 2>&1))" >&2
    exit 1
fi
echo "python: $("$PY" -V 2>&1) ($(command -v "$PY"))"
modules="numpy:numpy PIL:pillow @@MODULE@@:@@DIST@@"
[ -n "$key" ] && modules="$modules cryptography:cryptography"
for pair in $modules; do
    module=${pair%%:*}
    dist=${pair#*:}
    if version=$(py "import $module, importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null); then
        echo "$dist: $version"
    else
        missing="$missing $dist"
    fi
done
flags=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cut -d: -f2)
shown=""
for flag in @@CPU_FLAGS@@; do
    case " $flags " in *" $flag "*) shown="$shown $flag" ;; esac
done
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ //') ($(uname -m)); flags:${shown:- none of @@CPU_FLAGS@@}"
for flag in @@REQUIRED_FLAGS@@; do
    case " $flags " in
        *" $flag "*) ;;
        *) missing="$missing cpu-flag:$flag" ;;
    esac
done
if [ -n "$missing" ]; then
    echo "setup.sh: missing:$missing" >&2
    case "$missing" in
        *cpu-flag:*) echo "setup.sh: this @@PRECISION@@ bundle needs a CPU with@@REQUIRED_FLAGS@@; deploy another precision for this one" >&2 ;;
    esac
    echo "setup.sh: install the Python packages with: $PY -m pip install -r requirements.txt${key:+ cryptography}" >&2
    exit 1
fi
if [ -n "$key" ]; then
    exec "$PY" -B run.py --check --verify-key "$key"
fi
exec "$PY" -B run.py --check
