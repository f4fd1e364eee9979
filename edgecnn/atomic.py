"""Files written in one step: a temporary file beside the target, renamed over it.

A Ctrl-C, a full disk or a crash never leaves half a file where the target was, nor the temporary file: on any
failure it is removed and the target is as it was. Every file edgecnn writes this way goes through
`atomic_write` (a folder of files, an artifact or a report, is staged whole instead: see
`edgecnn.export.staging.marked_staging`).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

Content = Union[str, bytes, Callable[[str], object]]
ErrorMap = Callable[[OSError], BaseException]


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back): what a new file's mode is masked by."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: Path | str, content: Content, *, mode: int | None = None,
                 error: ErrorMap | None = None) -> Path:
    """Write `content` to `path` in one step and return `path`.

    `content` is text, bytes, or a function that writes the file whose name it is given (a library that
    saves to a path). The file gets `mode`, by default what `open()` would give a new file (0o666 less the
    umask; the temporary file alone would be 0600). `path`'s folder is made when missing. An `OSError`
    (making the folder or the temporary file, writing, renaming) is raised as `error(e)` when `error` is
    given, chained to it; anything else is raised as it is, and in every case nothing is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    except OSError as e:
        if error is None:
            raise
        raise error(e) from e
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
        else:
            with os.fdopen(fd, "wb" if isinstance(content, bytes) else "w") as f:
                f.write(content)
        os.chmod(tmp, 0o666 & ~current_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and error is not None:
            raise error(e) from e
        raise
    return path


def probe_directory(directory: Path | str, prefix: str = ".edgecnn-write-probe.") -> None:
    """Raise the `OSError` a file created in `directory` would meet (a read-only mount, a full disk, no
    permission), now rather than after minutes of work; nothing is left there."""
    fd, probe = tempfile.mkstemp(dir=directory, prefix=prefix)
    os.close(fd)
    os.unlink(probe)


__all__ = ["atomic_write", "current_umask", "probe_directory"]
