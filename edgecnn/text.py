"""Names read from files (models, machines, classes) shown on a terminal or in Markdown: control characters
escaped, so a name cannot move the cursor, recolour the terminal or start a new line of output."""
from __future__ import annotations


def printable(s: str) -> str:
    """`s` with every non-printable character (newlines, ANSI escapes, ...) replaced by its repr-style escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
