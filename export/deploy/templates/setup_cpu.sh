#!/bin/sh
# Check that this machine can run the bundle (Python, numpy, Pillow, @@RUNTIME@@, CPU flags), say exactly what is
# missing, then verify every file's SHA-256 and load the model once (python3 run.py --check).
#     ./setup.sh            (PYTHON=/path/to/python3 ./setup.sh to use another interpreter)
set -u
cd "$(dirname "$0")" || exit 1
PY=${PYTHON:-python3}
missing=""
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "setup.sh: missing: $PY (Python 3.8 or newer): install it, e.g. sudo apt install python3 python3-pip" >&2
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 8))'; then
    echo "setup.sh: missing: Python 3.8 or newer (found $("$PY" -V 2>&1))" >&2
    exit 1
fi
echo "python: $("$PY" -V 2>&1) ($(command -v "$PY"))"
for pair in numpy:numpy PIL:pillow @@MODULE@@:@@DIST@@; do
    module=${pair%%:*}
    dist=${pair#*:}
    if version=$("$PY" -c "import $module, importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null); then
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
    echo "setup.sh: install the Python packages with: $PY -m pip install -r requirements.txt" >&2
    exit 1
fi
exec "$PY" -B run.py --check
