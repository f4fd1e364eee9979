"""The `edgecnn` command line: a thin layer over the Python API.

Each command group lives in its own module with `register(subparsers)`; a user error prints one
line and exits 2 (`--debug` shows the traceback).

Start-up stays fast because only the module that owns the command being run is imported: the
others' commands are listed from their source (`declared_commands`, read without importing it),
so `edgecnn --help` imports neither torch nor onnx nor openvino, and `edgecnn list` no exporter.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import sys
from typing import Sequence

from edgecnn.errors import UserError
from edgecnn.text import printable

# Modules that add commands, in the order their commands appear in --help.
COMMAND_MODULES = ["edgecnn.cli.models", "edgecnn.cli.training", "edgecnn.cli.export", "edgecnn.cli.bench",
                   "edgecnn.cli.deploy", "edgecnn.cli.explain"]


def declared_commands(module: str) -> list[tuple[str, str | None]] | None:
    """(name, help) of each `sub.add_parser("name", help="...")` in the module's source, or None when
    a call is not that plain (a computed name or help, aliases): then the module is imported instead."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), spec.origin)
    commands: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_parser"):
            continue
        keywords = {k.arg: k.value for k in node.keywords}
        name = node.args[0] if node.args else None
        text = keywords.get("help")
        if (not isinstance(name, ast.Constant) or not isinstance(name.value, str) or "aliases" in keywords
                or None in keywords or (text is not None and not isinstance(text, ast.Constant))):
            return None
        commands.append((name.value, None if text is None else text.value))
    return commands


def _command_word(argv: Sequence[str]) -> str | None:
    """The command in argv: the first word that is not a global option (none of those takes a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the argv about to be parsed, only the module owning its command is imported."""
    parser = argparse.ArgumentParser(
        prog="edgecnn",
        description="Which architecture, at which precision, on which runtime, meets my latency budget "
                    "with the least accuracy lost?")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    from edgecnn import __version__
    parser.add_argument("--version", action="version", version=f"edgecnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    command = None if argv is None else _command_word(argv)
    for module in COMMAND_MODULES:
        declared = None if argv is None else declared_commands(module)
        if declared is None or command in {name for name, _ in declared}:
            importlib.import_module(module).register(sub)
        else:
            for name, text in declared:  # listed in --help and accepted as a choice; imported only if it runs
                sub.add_parser(name, help=text, add_help=False).add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    if not hasattr(args, "func"):  # the command word was not where _command_word looked: build it all
        args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if args.debug:
            raise
        print(f"edgecnn: error: {printable(str(e))}", file=sys.stderr)  # one line, whatever names it quotes
        return 2
    except KeyboardInterrupt:
        print("edgecnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as other CLIs do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
