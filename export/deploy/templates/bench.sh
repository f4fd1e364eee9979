#!/bin/sh
# Benchmark the bundle on this device: warm-up, timed rounds, p50/p90/p99 and throughput, written as an edgecnn
# results JSON (merge it with `edgecnn report a.json device.json`). On a Jetson it records nvpmodel -q and
# jetson_clocks --show; --power samples tegrastats for energy per inference; --images LABELLED_DIR (one sub-folder
# per class) records top-1 accuracy too, for `edgecnn pick`. Options: python3 bench.py --help
set -eu
exec "${PYTHON:-python3}" -B "$(dirname "$0")/bench.py" "$@"
