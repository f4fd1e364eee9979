"""The artifact contract: `manifest.json` next to the files it names, written atomically.

An artifact directory holds `manifest.json` and the model files. The manifest is the only thing
runtimes, benchmarks and deploy bundles read; `read_manifest` is the one door, and it refuses
anything that is not a complete, untampered artifact:

- schema version known, required fields present (corrupt / truncated JSON → one clear line);
- every file in `files` present, of the recorded size and SHA-256;
- never a staging directory: exports build in `.NAME.tmp-PID-XXXX` next to the target, write the
  manifest last and rename the whole directory in one step, so an interrupted export leaves no
  directory that passes as an artifact.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgecnn.errors import UserError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ARTIFACT_KIND = "edgecnn-artifact"
REQUIRED_FIELDS = ("schema_version", "kind", "model", "target", "precision", "input", "output",
                   "preprocessing", "class_names", "files", "model_files", "default_backend", "parity", "tools",
                   "export")
# Directories an export is still building (or has just replaced): never artifacts.
_STAGING_NAME = re.compile(r"^\..+\.(tmp|old)-(\d+)-[^/]+$")


class ArtifactError(UserError):
    """An artifact directory is missing, incomplete, corrupt or tampered with."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_files(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each named file, for the manifest's `files` section."""
    return {name: {"bytes": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
            for name in sorted(names)}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(directory: Path | str, verify: bool = True) -> dict[str, Any]:
    """The validated manifest of an artifact directory; `verify=False` skips the SHA-256 pass."""
    directory = Path(directory)
    if _STAGING_NAME.match(directory.name):
        raise ArtifactError(f"{directory} is an unfinished export's staging directory, not an artifact; "
                            "delete it and export again")
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory {directory} does not exist")
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an edgecnn artifact: it has no {MANIFEST_NAME}; export again")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is corrupt or truncated (not valid JSON: {e}); export again") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != ARTIFACT_KIND:
        raise ArtifactError(f"{path} is not an edgecnn artifact manifest (kind is not {ARTIFACT_KIND!r})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema version {version!r}; this edgecnn reads version {SCHEMA_VERSION}: "
                            "export again with this version")
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks required fields {', '.join(missing)}; export again")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(v, dict) and "sha256" in v and "bytes" in v
                                              for v in files.values()):
        raise ArtifactError(f"{path}: 'files' must map each file name to its bytes and sha256; export again")
    for role, name in manifest["model_files"].items():
        if name not in files:
            raise ArtifactError(f"{path}: model file {name!r} ({role}) is not listed in 'files'; export again")
    for name, entry in files.items():
        _check_file(directory, name, entry, verify)
    return manifest


def _check_file(directory: Path, name: str, entry: dict[str, Any], verify: bool) -> None:
    file = directory / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise ArtifactError(f"manifest in {directory} names {name!r}, which is outside the artifact")
    if not file.is_file():
        raise ArtifactError(f"{file} is named in the manifest but missing; the artifact is incomplete: export again")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise ArtifactError(f"{file} is {size} bytes but the manifest records {entry['bytes']}: the file was "
                            "truncated or replaced; export again")
    if verify and sha256_file(file) != entry["sha256"]:
        raise ArtifactError(f"{file} does not match its SHA-256 in the manifest: the file was modified; "
                            "export again")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Staging directories left by killed exports to the same place (their process is gone)."""
    prefix = f".{out.name}."
    for entry in out.parent.glob(f"{glob.escape(prefix)}*"):
        match = _STAGING_NAME.match(entry.name)
        if match and entry.is_dir() and entry.name.startswith(prefix) and not _pid_alive(int(match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def staging_directory(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty directory next to `out`; on success it becomes `out` in one rename.

    The caller writes the manifest last. On any exception the staging directory is removed; if
    the process is killed, the staging directory (hidden, never readable as an artifact) is
    cleaned up by the next export to the same place.
    """
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --force (overwrite=True) to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; an artifact is as readable as any dir
        if out.exists() and not overwrite:  # another export got there while this one ran
            raise UserError(f"{out} appeared while exporting; pass --force (overwrite=True) to replace it")
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-{os.getpid()}-"))
            os.replace(out, old / "artifact")
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
