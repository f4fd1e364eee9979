"""The artifact contract: `manifest.json` next to the files it names, its schema and its validation.

An artifact directory holds `manifest.json` and the model files. The manifest is the only thing
runtimes, benchmarks and deploy bundles read; `read_manifest` is the one door, and it refuses
anything that is not a complete, untampered artifact:

- schema version known, every field present and of its type (corrupt / truncated JSON → one clear line);
- `manifest_sha256`: the SHA-256 of the manifest's own canonical JSON (this field removed, keys sorted,
  no whitespace), so a record edited after the export (a model file dropped from it) is detected;
- every file in `files` present, of the recorded size and SHA-256;
- nothing read from outside the artifact: every file it names is a regular file inside it, reached without a
  symbolic link, and every file a graph reads its weights from (ONNX external data, an IR's .bin) is in `files`;
- never a staging directory (`.NAME.tmp-PID-XXXX`, `STAGING_NAME`): exports build there and rename the whole
  directory in one step, so an interrupted export leaves no directory that passes as an artifact.

How an artifact gets onto disk safely (staging directories, destination checks, `--force` replacing only edgecnn's
own output, leftovers of killed exports) is `edgecnn.export.staging`. Reading a manifest imports neither torch nor
the model zoo; `manifest_config` imports the zoo's `ModelConfig` when called.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterator

from edgecnn.errors import UserError
from edgecnn.export.tensorrt import BUILD_LOG, ENGINE_RECORD, PLAN_FILE, TIMING_CACHE
from edgecnn.jsonfile import JSONFileError, read_json

if TYPE_CHECKING:
    from edgecnn.registry import ModelConfig

SCHEMA_VERSION = 2  # 2: manifest_sha256 and a typed schema
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"  # `edgecnn deploy --sign` writes it beside a manifest whose `signature` says so
ARTIFACT_KIND = "edgecnn-artifact"
DIGEST_FIELD = "manifest_sha256"
REQUIRED_FIELDS = ("schema_version", "kind", "model", "target", "precision", "input", "output",
                   "preprocessing", "class_names", "files", "model_files", "default_backend", "parity", "tools",
                   "export", DIGEST_FIELD)
# Directories an export is still building (or has just replaced): never artifacts (edgecnn.export.staging makes them).
STAGING_NAME = re.compile(r"^\..+\.(tmp|old)-(\d+)-[^/]+$")
# Files edgecnn's own scripts add to an artifact after the export (build_engine.py/.sh write the engine, its
# record, the timing cache and the trtexec log).
ADDED_LATER = frozenset({PLAN_FILE, ENGINE_RECORD, TIMING_CACHE, BUILD_LOG})


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
    from edgecnn.registry import ModelConfig  # the model zoo (and torch) only when asked

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
    if STAGING_NAME.match(directory.name):
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
        from edgecnn.export.graph_io import external_data_locations

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
    them and what edgecnn's build scripts add later (`ADDED_LATER`): links too (never followed); a folder once,
    not its content."""
    listed = {MANIFEST_NAME, *manifest["files"], *([SIGNATURE_NAME] if manifest.get("signature") else [])}
    folders = {parent.as_posix() for f in listed for parent in PurePosixPath(f).parents if parent != PurePosixPath(".")}
    extra = {e for e in relative_entries(directory)
             if e not in listed and e not in folders and PurePosixPath(e).name not in ADDED_LATER}
    return sorted(e for e in extra if not any(p.as_posix() in extra for p in PurePosixPath(e).parents))


def relative_entries(out: Path) -> list[str]:
    """Every file, link and directory under `out`, as paths relative to it (links are not followed)."""
    found = []
    for root, dirs, names in os.walk(out):
        base = Path(root).relative_to(out)
        found += [(base / n).as_posix() for n in dirs + names]
    return found


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


__all__ = ["ADDED_LATER", "ARTIFACT_KIND", "ArtifactError", "DIGEST_FIELD", "EARLY_EXIT_SCHEMA", "MANIFEST_NAME",
           "MANIFEST_SCHEMA", "REQUIRED_FIELDS", "SCHEMA_VERSION", "SIGNATURE_NAME", "STAGING_NAME", "TENSOR_DTYPES",
           "artifact_file", "describe_files", "manifest_config", "manifest_digest", "preprocessing_record",
           "read_manifest", "relative_entries", "sha256_file", "unlisted_entries", "write_manifest"]
