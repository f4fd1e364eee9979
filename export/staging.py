"""Writing edgecnn's output safely: staging directories renamed into place in one step, destination checks.

Exports (and `edgecnn report`, `edgecnn deploy`) build in `.NAME.tmp-PID-XXXX` next to the target, write the
manifest last and rename the whole directory in one step, so an interrupted export (Ctrl-C or SIGTERM cleans up;
kill -9 leaves a hidden directory the next export removes) leaves no directory that passes as an artifact
(`edgecnn.export.manifest.read_manifest` refuses staging names).

`--force` (overwrite=True) replaces only edgecnn's own output: an artifact (a readable manifest of
edgecnn's kind naming every file there). Anything else, and the working directory, its parents and
the home directory, are refused before any work is done. A leftover staging directory is removed only
if it carries edgecnn's marker (`STAGING_MARKER`: the PID, boot and start time of the process that
made it) and that process is gone; `edgecnn report` stages its output the same way (`marked_staging`).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from edgecnn.atomic import current_umask
from edgecnn.errors import UserError
from edgecnn.export.manifest import (_INT, _STR, ADDED_LATER, ARTIFACT_KIND, MANIFEST_NAME, SIGNATURE_NAME,
                                     STAGING_NAME, _Object, _Optional, relative_entries)
from edgecnn.jsonfile import JSONFileError, read_json

# Filesystem failures that are the destination's fault, said as one line instead of a traceback.
_DESTINATION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


# Written first into every staging directory, and into an earlier artifact before it is moved aside: which process
# owns the directory. Only a directory carrying it is ever removed as a leftover, and only once that process is gone
# (a user's `.NAME.old-2019-backup` is never touched). It is taken out just before the final rename.
STAGING_MARKER = ".edgecnn-staging.json"
_MARKER_KIND = "edgecnn-staging"
_MARKER_SCHEMA = _Object(kind=_STR, pid=_INT, boot_id=_Optional(_STR), start_ticks=_Optional(_INT))
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot, field 22 of /proc/PID/stat); None where /proc is silent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # the command name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _identity(pid: int) -> dict[str, Any]:
    """What tells process `pid` from a later one given the same number: the boot and when it started."""
    return {"kind": _MARKER_KIND, "pid": pid, "boot_id": _boot_id(), "start_ticks": _start_ticks(pid)}


def _mark(directory: Path) -> None:
    (directory / STAGING_MARKER).write_text(json.dumps(_identity(os.getpid())))


def _unmark(directory: Path) -> None:
    (directory / STAGING_MARKER).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_alive(owner: dict[str, Any]) -> bool:
    """Whether the process a marker names still runs: same boot, PID alive, same start (not a reused PID)."""
    boot = _boot_id()
    if owner["boot_id"] and boot and owner["boot_id"] != boot:
        return False
    if not _pid_alive(owner["pid"]):
        return False
    started = _start_ticks(owner["pid"])
    return owner["start_ticks"] is None or started is None or started == owner["start_ticks"]


def _marker_owner(path: Path) -> dict[str, Any] | None:
    """The process named by `path`'s staging marker; None when edgecnn did not mark `path` as its own."""
    marker = path / STAGING_MARKER
    if path.is_symlink() or not path.is_dir() or marker.is_symlink():
        return None
    try:
        owner = read_json(marker, "staging marker", max_bytes=4096)
    except JSONFileError:
        return None
    fits = _MARKER_SCHEMA.check(owner, "marker") is None and owner["kind"] == _MARKER_KIND and owner["pid"] > 0
    return owner if fits else None


def _remove_stale_staging(out: Path) -> None:
    """Staging directories edgecnn marked, next to `out`, whose process is gone (killed exports or reports)."""
    prefix = f".{out.name}."
    for entry in out.parent.glob(f"{glob.escape(prefix)}*"):
        if not (entry.name.startswith(prefix) and STAGING_NAME.match(entry.name)):
            continue
        owner = _marker_owner(entry)
        if owner is not None and not _owner_alive(owner):
            shutil.rmtree(entry, ignore_errors=True)


def _protected(out: Path) -> bool:
    """The working directory, its parents and the home directory: never edgecnn's output."""
    cwd = Path.cwd().resolve()
    protected = {cwd, *cwd.parents}
    with contextlib.suppress(RuntimeError, KeyError):  # no home directory known
        protected.add(Path.home().resolve())
    return out.resolve() in protected


def check_target(out: Path | str) -> Path:
    """`out` made absolute, or one line refusing a place edgecnn never writes its output (exports and reports)."""
    out = Path(out).absolute()
    if _protected(out):
        raise UserError(f"{out} is the working directory, one of its parents or the home directory; edgecnn never "
                        "writes its output there: choose a new directory for --out")
    if STAGING_NAME.match(out.name):
        raise UserError(f"{out.name} is named like edgecnn's staging directories, which are never read as output; "
                        "choose another --out")
    return out


def shown(names: list[str]) -> str:
    """The first few of `names` for a one-line message."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _foreign_entries(out: Path) -> list[str] | None:
    """Entries of `out` edgecnn did not write; None when `out` is not an edgecnn artifact at all."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        entries = relative_entries(out)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("kind") != ARTIFACT_KIND:
        return None
    files = manifest.get("files")
    listed = {MANIFEST_NAME, STAGING_MARKER, *(files if isinstance(files, dict) else ()),
              *([SIGNATURE_NAME] if manifest.get("signature") else [])}
    # sub-directories holding listed files (an early-exit stage's stageK/) are edgecnn's, as is what the build
    # scripts add beside any model file (model.plan, engine.json, ...)
    folders = {parent.as_posix() for f in listed for parent in Path(f).parents if parent != Path(".")}
    return sorted(e for e in entries
                   if e not in listed and e not in folders and Path(e).name not in ADDED_LATER)


def _check_replaceable(out: Path) -> None:
    """Refuse, in one line, to replace anything but an edgecnn artifact."""
    if out.is_symlink():
        raise UserError(f"{out} is a symbolic link; edgecnn replaces only directories it wrote: choose another --out")
    if not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose another --out")
    foreign = _foreign_entries(out)
    if foreign is None:
        raise UserError(f"{out} exists and is not an edgecnn artifact (no readable {MANIFEST_NAME} of kind "
                        f"{ARTIFACT_KIND!r}); --force replaces only edgecnn's own output: choose another --out")
    if foreign:
        raise UserError(f"{out} is an edgecnn artifact but also holds {shown(foreign)}, which edgecnn did not write; "
                        "move them out or choose another --out")


def _check_writable(out: Path) -> None:
    """The directory the artifact goes into (or its nearest existing ancestor) and `out` itself, if replaced."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {parent}: it is read-only (or not yours); choose another --out")
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"{out} is read-only, so edgecnn cannot replace it; make it writable or choose another --out")


def check_destination(out: Path | str, overwrite: bool = False) -> Path:
    """Decide, before any work is done, whether an export may write `out`; its absolute path if so."""
    out = check_target(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            if _foreign_entries(out) is None:
                raise UserError(f"{out} already exists and is not an edgecnn artifact; choose another --out")
            raise UserError(f"{out} already exists; pass --force (overwrite=True) to replace it")
        _check_replaceable(out)
    _check_writable(out)
    return out


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so cleanup runs; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def destination_error(out: Path, e: OSError, what: str) -> UserError:
    """One line for a filesystem failure while writing `what` (the artifact, the report) to `out`."""
    reason = str(e.strerror or e)
    where = f" ({e.filename})" if e.filename else ""
    remedy = "free some space or choose another --out" if e.errno in (errno.ENOSPC, errno.EDQUOT) else \
        "choose another --out"
    return UserError(f"{reason[:1].lower()}{reason[1:]} writing the {what} {out}{where}; nothing was written: {remedy}")


@contextlib.contextmanager
def staging_directory(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty directory next to `out`; on success it becomes the artifact `out` in one rename.

    The caller writes the manifest last. `out` is checked (`check_destination`) before any work is done.
    """
    out = check_destination(out, overwrite)
    with marked_staging(out, "artifact", lambda now: _check_replacing(now, overwrite)) as staging:
        yield staging


def _check_replacing(out: Path, overwrite: bool) -> None:
    """At the final rename: whether what is at `out` now (not when the export started) may be replaced."""
    if not overwrite:
        raise UserError(f"{out} appeared while exporting; pass --force (overwrite=True) to replace it")
    _check_replaceable(out)


@contextlib.contextmanager
def marked_staging(out: Path, what: str, check_replace: Callable[[Path], None]) -> Iterator[Path]:
    """Yield an empty directory, marked as this process's, next to the absolute `out`; on success it becomes `out`.

    `check_replace` raises unless what is at `out` at the final rename may be replaced. On any exception
    (SIGTERM included) the staging directory is removed; if the process is killed, the staging directory
    (hidden, never readable as an artifact) is removed by the next export or report to the same place.
    """
    with _sigterm_as_interrupt():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(out)
            staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
        except OSError as e:
            raise destination_error(out, e, what) from e
        try:
            _mark(staging)
            yield staging
            os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700; the output is as readable as any dir
            _commit(staging, out, check_replace)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            if e.errno in _DESTINATION_ERRNOS:
                raise destination_error(out, e, what) from e
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _commit(staging: Path, out: Path, check_replace: Callable[[Path], None]) -> None:
    """Rename `staging` to `out`, moving edgecnn's earlier output aside first (and back if that fails)."""
    if not (out.exists() or out.is_symlink()):
        _unmark(staging)
        os.replace(staging, out)
        return
    check_replace(out)
    old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _mark(out)  # before the move: killed between the move and the removal, the next run removes it
        os.rename(out, old)
    except BaseException:
        _unmark(out)
        raise
    try:
        _unmark(staging)
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        _unmark(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["STAGING_MARKER", "check_destination", "check_target", "destination_error", "marked_staging", "shown",
           "staging_directory"]
