"""The `edgecnn` command line: a thin layer over the Python API.

Each command group lives in its own module with `register(subparsers)`; a user error prints one
line and exits 2 (`--debug` shows the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from edgecnn.errors import UserError

# Modules that add commands, in the order their commands appear in --help.
COMMAND_MODULES = ["edgecnn.cli.models", "edgecnn.cli.training", "edgecnn.cli.export", "edgecnn.cli.bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecnn",
        description="Which architecture, at which precision, on which runtime, meets my latency budget "
                    "with the least accuracy lost?")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    from edgecnn import __version__
    parser.add_argument("--version", action="version", version=f"edgecnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if args.debug:
            raise
        print(f"edgecnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgecnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as other CLIs do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
