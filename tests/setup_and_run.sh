#!/usr/bin/env bash
# Set-up command 2 of the README, verbatim (tests/test_readme.py checks that they agree): install on a fresh
# Debian machine and run the default test suite. .ci/run runs this script.
set -uo pipefail
cd "$(dirname "$0")/.."
apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist && python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest -q -m "not slow and not tensorrt and not benchmark"
