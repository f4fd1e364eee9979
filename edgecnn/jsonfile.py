"""Reading JSON that a user (or an attacker) may have handed over: bounded in size and nesting.

Manifests, results files and sidecars are small; anything larger than `MAX_JSON_BYTES`, nested deeper
than `MAX_JSON_DEPTH`, or holding an integer too long to parse is refused in one line instead of
exhausting memory or the interpreter's stack. Only regular files are read (never /dev/zero or a FIFO).
"""
from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from edgecnn.errors import UserError

MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64


class JSONFileError(UserError):
    """A JSON file that cannot be read safely: missing, not a regular file, too large, too deep or not JSON."""


def _depth(text: str) -> int:
    """The deepest nesting of objects and lists in `text`, brackets inside strings not counted."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def read_json(path: Path | str, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The parsed content of `path`, or a `JSONFileError` naming the file and what is wrong with it."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise JSONFileError(f"{path} is not a regular file; give the {what} itself")
        if info.st_size > max_bytes:
            raise JSONFileError(f"{path} is {info.st_size:,} bytes, more than a {what} can be "
                                f"({max_bytes:,}); it is not one")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError as e:
        raise JSONFileError(f"{what} {path} does not exist") from e
    except OSError as e:
        raise JSONFileError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if len(raw) > max_bytes:  # grew while being read
        raise JSONFileError(f"{path} is more than {max_bytes:,} bytes, more than a {what} can be; it is not one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{path} is not valid JSON (not UTF-8 text): it is corrupt or not a {what}") from e
    if _depth(text) > MAX_JSON_DEPTH:
        raise JSONFileError(f"{path} nests deeper than {MAX_JSON_DEPTH} levels; it is corrupt or not a {what}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise JSONFileError(f"{path} is not valid JSON ({e}): it is corrupt, truncated or not a {what}") from e
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits
        raise JSONFileError(f"{path} holds a value JSON cannot represent here ({e}); it is corrupt or not a "
                            f"{what}") from e
