"""Libraries' own chatter kept out of edgecnn's output, which is the report the user reads."""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterator


@contextlib.contextmanager
def silenced(*loggers: str, stdout: bool = False) -> Iterator[None]:
    """Raise the named loggers ("" is the root) to ERROR, and swallow print() output too when `stdout`.

    The quantizers log advice about their own defaults (edgecnn's flow is the point) and print progress; the
    failures that matter are raised as exceptions, never only logged.
    """
    found = [logging.getLogger(name or None) for name in loggers]
    levels = [logger.level for logger in found]
    for logger in found:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if stdout else contextlib.nullcontext():
            yield
    finally:
        for logger, level in zip(found, levels):
            logger.setLevel(level)
