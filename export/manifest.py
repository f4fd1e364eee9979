"""The artifact contract: `manifest.json` next to the files it names, written atomically.

An artifact directory holds `manifest.json` and the model files. The manifest is the only thing
runtimes, benchmarks and deploy bundles read; `read_manifest` is the one door, and it refuses
anything that is not a complete, untampered artifact:

- schema version known, every field present and of its type (corrupt / truncated JSON → one clear line);
- `manifest_sha256`: the SHA-256 of the manifest's own canonical JSON (this field removed, keys sorted,
  no whitespace), so a record edited after the export (a model file dropped from it) is detected;
- every file in `files` present, of the recorded size and SHA-256;
- nothing read from outside the artifact: every file it names is a regular file inside it, reached without a
  symbolic link, and every file a graph reads its weights from (ONNX external data, an IR's .bin) is in `files`;
- never a staging directory: exports build in `.NAME.tmp-PID-XXXX` next to the target, write the
  manifest last and rename the whole directory in one step, so an interrupted export (Ctrl-C or
  SIGTERM cleans up; kill -9 leaves a hidden directory the next export removes) leaves no directory
  that passes as an artifact.

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
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from edgecnn.atomic import current_umask
from edgecnn.errors import UserError
from edgecnn.export.tensorrt import BUILD_LOG, ENGINE_RECORD, PLAN_FILE, TIMING_CACHE
from edgecnn.jsonfile import JSONFileError, read_json
from edgecnn.registry import ModelConfig

SCHEMA_VERSION = 2  # 2: manifest_sha256 and a typed schema
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"  # `edgecnn deploy --sign` writes it beside a manifest whose `signature` says so
ARTIFACT_KIND = "edgecnn-artifact"
DIGEST_FIELD = "manifest_sha256"
REQUIRED_FIELDS = ("schema_version", "kind", "model", "target", "precision", "input", "output",
                   "preprocessing", "class_names", "files", "model_files", "default_backend", "parity", "tools",
                   "export", DIGEST_FIELD)
# Directories an export is still building (or has just replaced): never artifacts.
_STAGING_NAME = re.compile(r"^\..+\.(tmp|old)-(\d+)-[^/]+$")
# Files edgecnn's own scripts add to an artifact after the export (build_engine.py/.sh write the engine, its
# record, the timing cache and the trtexec log).
_ADDED_LATER = frozenset({PLAN_FILE, ENGINE_RECORD, TIMING_CACHE, BUILD_LOG})
# Filesystem failures that are the destination's fault, said as one line instead of a traceback.
_DESTINATION_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


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


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON without its own digest field (sorted keys, no whitespace)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Seal the manifest with its own digest and write it; exports call this last."""
    manifest = {**manifest, DIGEST_FIELD: manifest_digest(manifest)}
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


# ---------------------------------------------------------------- schema

class _Spec:
    """A JSON type: `check` returns None when `value` fits, else what it should have been."""
    text = ""

    def check(self, value: Any, where: str) -> str | None:
        raise NotImplementedError


class _Is(_Spec):
    _NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
              list: "a list"}

    def __init__(self, *types: type) -> None:
        self.types = types
        self.text = " or ".join(self._NAMES[t] for t in types)

    def check(self, value: Any, where: str) -> str | None:
        if isinstance(value, bool) and bool not in self.types:
            return f"{where} must be {self.text}"
        ok = isinstance(value, self.types) or (float in self.types and isinstance(value, int))
        return None if ok else f"{where} must be {self.text}"


class _OneOf(_Spec):
    """One of a fixed set of strings."""

    def __init__(self, *values: str) -> None:
        self.values, self.text = values, f"one of {', '.join(values)}"

    def check(self, value: Any, where: str) -> str | None:
        return None if isinstance(value, str) and value in self.values else f"{where} must be {self.text}"


class _MayLack(_Spec):
    """A field of an `_Object` that may be absent; when present, it is `inner`."""

    def __init__(self, inner: _Spec) -> None:
        self.inner, self.text = inner, inner.text

    def check(self, value: Any, where: str) -> str | None:
        return self.inner.check(value, where)


class _Optional(_Spec):
    def __init__(self, inner: _Spec) -> None:
        self.inner, self.text = inner, f"{inner.text} or null"

    def check(self, value: Any, where: str) -> str | None:
        problem = None if value is None else self.inner.check(value, where)
        return f"{where} must be {self.text}" if problem == f"{where} must be {self.inner.text}" else problem


class _List(_Spec):
    def __init__(self, item: _Spec, non_empty: bool = False) -> None:
        self.item, self.non_empty = item, non_empty
        self.text = f"a {'non-empty ' if non_empty else ''}list, each {item.text}"

    def check(self, value: Any, where: str) -> str | None:
        if not isinstance(value, list) or (self.non_empty and not value):
            return f"{where} must be {self.text}"
        return next((e for i, v in enumerate(value) if (e := self.item.check(v, f"{where}[{i}]"))), None)


class _Map(_Spec):
    """An object of string keys to one kind of value (files by name, model files by format)."""

    def __init__(self, value: _Spec, text: str, non_empty: bool = False) -> None:
        self.value, self.text, self.non_empty = value, text, non_empty

    def check(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict) or (self.non_empty and not value):
            return f"{where} must be {self.text}"
        return next((e for k, v in value.items() if (e := self.value.check(v, f"{where}[{k!r}]"))), None)


class _Object(_Spec):
    """An object with these fields, required unless `_MayLack` (more are allowed: later passes add their own
    records)."""

    def __init__(self, **fields: _Spec) -> None:
        self.fields = fields
        self.required = [f for f, spec in fields.items() if not isinstance(spec, _MayLack)]
        self.text = f"an object with {', '.join(self.required)}"

    def check(self, value: Any, where: str) -> str | None:
        if not isinstance(value, dict):
            return f"{where} must be {self.text}"
        missing = [f for f in self.required if f not in value]
        if missing:
            return f"{where} lacks {', '.join(missing)}"
        return next((e for f, spec in self.fields.items()
                     if f in value and (e := spec.check(value[f], f"{where}.{f}"))), None)


_STR, _INT, _NUM, _BOOL, _DICT = _Is(str), _Is(int), _Is(float), _Is(bool), _Is(dict)
# Element types of an artifact's inputs and outputs that its sessions take (numpy and torch spell them alike).
TENSOR_DTYPES = ("float32", "float16", "uint8", "int8")
_DTYPE = _OneOf(*TENSOR_DTYPES)
_TENSOR = _Object(name=_STR, shape=_List(_Is(int, str), non_empty=True), dtype=_DTYPE)
_MODEL_FILES = _Map(_STR, "a non-empty object mapping each model format to a file name", non_empty=True)
MANIFEST_SCHEMA = _Object(
    schema_version=_INT, kind=_STR, target=_STR, precision=_STR, default_backend=_STR,
    model=_Object(name=_STR, family=_STR, zoo_version=_STR, num_classes=_INT, in_chans=_INT, params=_INT,
                  weights=_Object(source=_STR, path=_MayLack(_Optional(_STR)),
                                  test_accuracy=_MayLack(_Optional(_NUM)))),
    input=_Object(name=_STR, shape=_List(_Is(int, str), non_empty=True), dtype=_DTYPE, layout=_STR,
                  dynamic_batch=_BOOL),
    output=_TENSOR,
    preprocessing=_Object(steps=_List(_STR), scale=_NUM, resize=_List(_INT), channels=_INT,
                          mean=_List(_NUM), std=_List(_NUM), resize_method=_MayLack(_Optional(_Object(mode=_STR)))),
    class_names=_Optional(_List(_STR, non_empty=True)),
    files=_Map(_Object(bytes=_INT, sha256=_STR), "an object mapping each file name to its bytes and sha256"),
    model_files=_MODEL_FILES,
    # what `edgecnn inspect` and `export` print of each check, typed where present
    parity=_List(_Object(backend=_STR, samples=_INT, passed=_BOOL, measures=_MayLack(_STR),
                         tolerance=_MayLack(_NUM), max_abs_diff=_MayLack(_Optional(_NUM)),
                         top1_agreement=_MayLack(_NUM))),
    passes=_List(_Object(name=_STR, seconds=_NUM)),
    tools=_Map(_Optional(_STR), "an object mapping each tool to its version or null"),
    export=_Object(created_utc=_STR, seconds=_NUM, host=_STR, cpu=_STR),
    notes=_List(_STR), calibration=_Optional(_DICT), target_info=_DICT, manifest_sha256=_STR,
)
# What the tuning of one precision records (inspect prints these; without a validation split, only the first).
_PER_STAGE, _MEASURED = _MayLack(_List(_NUM)), _MayLack(_NUM)
_EXIT_TUNING = _Object(
    thresholds=_List(_NUM), runtime=_STR, exit_fractions=_PER_STAGE, exit_accuracy=_PER_STAGE, stage_ms=_PER_STAGE,
    accuracy=_MEASURED, final_exit_accuracy=_MEASURED, accuracy_budget_pt=_MEASURED, expected_ms=_MEASURED,
    trunk_ms=_MEASURED, expected_speedup_vs_trunk=_MEASURED)
# Optional: only a multi-exit (BranchyNet) artifact has it; written by edgecnn.export.early_exit.
EARLY_EXIT_SCHEMA = _Object(
    stages=_List(_Object(file=_STR, outputs=_Object(logits=_STR, features=_Optional(_STR)),
                         input=_TENSOR, model_files=_MODEL_FILES), non_empty=True),
    trunk=_Object(file=_STR), thresholds=_List(_NUM), exit_entropy=_STR, exit_rule=_STR,
    per_precision=_Map(_EXIT_TUNING, "an object mapping each precision to its tuning record"),
    # the single-graph form (stages, entropy and exit decision in one graph) and which form runs by default
    graph=_MayLack(_Object(file=_STR, input=_TENSOR, model_files=_MODEL_FILES)),
    form=_MayLack(_OneOf("graph", "stages")),
)


# ---------------------------------------------------------------- reading

def manifest_config(manifest: dict[str, Any]) -> ModelConfig:
    """The model an artifact's manifest describes, as a ModelConfig: its classes and its preprocessing."""
    model, pre = manifest["model"], manifest["preprocessing"]
    return ModelConfig(name=model["name"], family=model["family"], num_classes=model["num_classes"],
                       input_size=(pre["channels"], *pre["resize"]), mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                       dataset=model.get("dataset") or "unknown",
                       class_names=tuple(manifest["class_names"]) if manifest["class_names"] else None)


def read_manifest(directory: Path | str, verify: bool = True) -> dict[str, Any]:
    """The validated manifest of an artifact directory; `verify=False` skips the files' SHA-256 pass.

    Nothing outside the artifact is read: every file it names is a regular file inside `directory`, reached without
    a symbolic link, and every file a graph reads its weights from is listed (so checked like the graph itself).
    """
    directory = Path(directory)
    if _STAGING_NAME.match(directory.name):
        raise ArtifactError(f"{directory} is an unfinished export's staging directory, not an artifact; "
                            "delete it and export again")
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"{directory} is a file, not an artifact directory: give the directory an export "
                            "wrote (the one holding manifest.json)")
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory {directory} does not exist")
    path = artifact_file(directory, MANIFEST_NAME)
    if not path.is_file():
        raise ArtifactError(f"{directory} is not an edgecnn artifact: it has no {MANIFEST_NAME}; export again")
    try:
        manifest = read_json(path, "manifest")
    except JSONFileError as e:
        raise ArtifactError(f"{e}; export again") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != ARTIFACT_KIND:
        raise ArtifactError(f"{path} is not an edgecnn artifact manifest (kind is not {ARTIFACT_KIND!r})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema version {version!r}; this edgecnn reads version {SCHEMA_VERSION}: "
                            "export again with this version")
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks required fields {', '.join(missing)}; export again")
    problem = MANIFEST_SCHEMA.check(manifest, "manifest")
    if problem is None and "early_exit" in manifest:
        problem = EARLY_EXIT_SCHEMA.check(manifest["early_exit"], "manifest.early_exit")
    if problem:
        raise ArtifactError(f"{path} is damaged: {problem.removeprefix('manifest.')}; export again")
    if manifest_digest(manifest) != manifest[DIGEST_FIELD]:
        raise ArtifactError(f"{path} does not match its own {DIGEST_FIELD}: the manifest was edited after the "
                            "export; export again")
    files = manifest["files"]
    for what, name in _runtime_files(manifest):
        if name not in files:
            raise ArtifactError(f"{path}: {what} {name!r} is not listed in 'files'; export again")
    for name, entry in files.items():
        _check_file(directory, name, entry, verify)
    for name in files:
        _check_weight_files(directory, name, files)
    return manifest


def artifact_file(directory: Path, name: str) -> Path:
    """`directory / name` for a file name an artifact's manifest gives, refused in one line where it could lead
    outside the artifact: an absolute path, `..`, or a symbolic link (the file or any folder on the way to it)."""
    relative = Path(name)
    if not relative.parts or relative.is_absolute() or ".." in relative.parts:
        raise ArtifactError(f"manifest in {directory} names {name!r}, which is outside the artifact")
    path = directory
    for part in relative.parts:
        path = path / part
        if path.is_symlink():
            raise ArtifactError(f"{directory}: {path.relative_to(directory).as_posix()!r} is a symbolic link (to "
                                f"{os.readlink(path)!r}); edgecnn reads an artifact's files only from inside it, "
                                "never through a link: put the file itself there, or export again")
    return path


def _runtime_files(manifest: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(what it is, file name) for each file the manifest tells a runtime to load."""
    for model_format, name in manifest["model_files"].items():
        yield f"model file ({model_format})", name
    early_exit = manifest.get("early_exit")
    if early_exit:
        yield "early-exit trunk", early_exit["trunk"]["file"]
        for k, stage in enumerate(early_exit["stages"], 1):
            for name in {stage["file"], *stage["model_files"].values()}:
                yield f"early-exit stage {k} graph", name
        graph = early_exit.get("graph")
        if graph:
            for name in {graph["file"], *graph["model_files"].values()}:
                yield "early-exit single graph", name


def _check_file(directory: Path, name: str, entry: dict[str, Any], verify: bool) -> None:
    file = artifact_file(directory, name)
    if not file.exists():
        raise ArtifactError(f"{file} is named in the manifest but missing; the artifact is incomplete: export again")
    if not file.is_file():
        raise ArtifactError(f"{file} is named in the manifest but is not a regular file; export again")
    size, recorded = file.stat().st_size, entry["bytes"]
    if size < recorded:
        raise ArtifactError(f"{file} is {size} bytes but the manifest records {recorded}: the file was truncated; "
                            "export again")
    if size > recorded:
        raise ArtifactError(f"{file} is {size} bytes, {size - recorded} more than the manifest records: the file "
                            "was modified or appended to; export again")
    if verify and sha256_file(file) != entry["sha256"]:
        raise ArtifactError(f"{file} does not match its SHA-256 in the manifest: the file was modified; "
                            "export again")


def _check_weight_files(directory: Path, name: str, files: dict[str, Any]) -> None:
    """The files graph `name` reads its weights from (an ONNX graph's external data, an OpenVINO IR's .bin) must be
    listed: a runtime loads them with the graph, so an unlisted one would run unchecked."""
    graph = PurePosixPath(name)
    if graph.suffix == ".onnx":
        from edgecnn.export.onnx_graph import external_data_locations

        locations = external_data_locations(directory / name)
    elif graph.suffix == ".xml":
        locations = [graph.with_suffix(".bin").name]
    else:
        return
    for location in locations:
        relative = PurePosixPath(location)
        if relative.is_absolute() or ".." in relative.parts:
            raise ArtifactError(f"{directory / name} reads its weights from {location!r}, outside the artifact; "
                                "export again")
        if (graph.parent / relative).as_posix() not in files:
            raise ArtifactError(f"{directory / name} reads its weights from {location!r}, which is not listed in "
                                "'files' (so never checked): export again")


def unlisted_entries(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """What artifact `directory` holds besides its manifest (and signature), the files it lists, the folders holding
    them and what edgecnn's build scripts add later (`_ADDED_LATER`): links too (never followed); a folder once,
    not its content."""
    listed = {MANIFEST_NAME, *manifest["files"], *([SIGNATURE_NAME] if manifest.get("signature") else [])}
    folders = {parent.as_posix() for f in listed for parent in PurePosixPath(f).parents if parent != PurePosixPath(".")}
    extra = {e for e in _relative_entries(directory)
             if e not in listed and e not in folders and PurePosixPath(e).name not in _ADDED_LATER}
    return sorted(e for e in extra if not any(p.as_posix() in extra for p in PurePosixPath(e).parents))


# ---------------------------------------------------------------- writing

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
        if not (entry.name.startswith(prefix) and _STAGING_NAME.match(entry.name)):
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
    if _STAGING_NAME.match(out.name):
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
        entries = _relative_entries(out)
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
                   if e not in listed and e not in folders and Path(e).name not in _ADDED_LATER)


def _relative_entries(out: Path) -> list[str]:
    """Every file, link and directory under `out`, as paths relative to it (links are not followed)."""
    found = []
    for root, dirs, names in os.walk(out):
        base = Path(root).relative_to(out)
        found += [(base / n).as_posix() for n in dirs + names]
    return found


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


def preprocessing_record(config: ModelConfig, input_size: tuple[int, int, int]) -> dict[str, Any]:
    """What `edgecnn.data.preprocess` does, step by step, so a third party can reproduce the inputs."""
    c, h, w = input_size
    mean, std = list(config.mean), list(config.std)
    if len(mean) != c:  # as preprocess does: a mean/std of another channel count is averaged
        mean, std = [sum(mean) / len(mean)] * c, [sum(std) / len(std)] * c
    return {
        "steps": ["x = uint8 pixels (N×C×H×W) as float32 / 255",
                  f"channels to {c}: 1 → {c} repeats the grey channel; 3 → 1 is ITU-R BT.601 luma "
                  f"0.299 R + 0.587 G + 0.114 B; {c} → {c} unchanged",
                  f"resize to {h}×{w} unless already that size: bilinear, align_corners=False (half-pixel "
                  "centres), antialiased only when the source is wider than the target "
                  "(torch.nn.functional.interpolate antialias=True); after / 255, before normalisation",
                  "x = (x - mean) / std per channel",
                  "layout NCHW (input.dtype is what the graph takes)"],
        "scale": 1 / 255,
        "channels": c,
        "channel_adaptation": {"grey_to_n": "repeat the single channel",
                               "rgb_to_grey": {"standard": "ITU-R BT.601 luma", "weights": [0.299, 0.587, 0.114]}},
        "resize": [h, w],
        "resize_method": {"mode": "bilinear", "align_corners": False,
                          "antialias": "only when the source width is larger than the target width",
                          "order": "after scaling to [0, 1], before normalisation"},
        "mean": mean, "std": std,
        "implementation": "edgecnn.data.preprocess",
    }
