"""What a deploy bundle's run.py and bench.py do, with the Python standard library, numpy, Pillow and one
runtime (ONNX Runtime, OpenVINO or TensorRT): nothing from edgecnn, no torch.

Everything comes from manifest.json beside this file: the files and their SHA-256 (checked before any model
is loaded), the input name/shape/dtype, the preprocessing steps, the class names, the early-exit stages and
thresholds. edgecnn writes this file once into every bundle (and tests it against its own preprocessing).

What the checks protect against: the hashes and `manifest_sha256` catch a damaged or incomplete copy and an
accidental edit, not an attacker (anyone can recompute them). A bundle signed by `edgecnn deploy --sign` carries
manifest.json.sig, an Ed25519 signature of manifest.json's bytes; `--verify-key PUB` checks it before anything
else, and then every listed file against the signed hashes. Nothing in the bundle folder is ever imported
through sys.path (run.py and bench.py take their own folder off it and load this file, and build_engine.py,
by path), so a file the manifest does not list never runs; `run.py --check` names such files.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import json
import math
import os
import platform
import re
import stat
import sys
import time
import types
import warnings
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"    # `edgecnn deploy --sign`: Ed25519 over manifest.json's bytes, raw 64 bytes
DIGEST_FIELD = "manifest_sha256"
BUNDLE_KIND = "edgecnn-deploy-bundle"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MAX_MANIFEST_BYTES = 16 << 20      # a bundle's manifest is a few KiB; a larger one is not a manifest
MAX_SIDE = 8192                    # pixels per side of the model input: larger is a corrupt or hostile manifest
MAX_BATCH = 4096
MAX_CLASSES = 100_000
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485   # Pillow's own decompression-bomb limit (--max-image-pixels raises it)
IMAGE_CHUNK = 256                  # images decoded and run at a time (a folder may hold thousands)
# What a TensorRT bundle's setup.sh writes beside its graphs (the engine, its record) and at the top (the timing
# cache, trtexec's log): edgecnn's own output, although no manifest can list it.
DEVICE_BUILT = ("model.plan", "engine.json", "timing.cache", "build_engine.log")


def positive(text: str) -> int:
    """argparse type of the bundle scripts' counts: 0 and negatives are errors, not defaults."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


class BundleError(Exception):
    """Something the user can fix; run.py and bench.py print it as one line and exit 2."""


def printable(text: str) -> str:
    """`text` with control and other invisible characters escaped (\\n, \\x1b, \\u202e): a class or file name
    printed by the bundle can never move the cursor, recolour the terminal or fake another line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # as edgecnn's text.printable


# ---------------------------------------------------------------- small JSON files, read defensively

def read_small_file(path: Path, what: str, remedy: str, max_bytes: int = MAX_MANIFEST_BYTES) -> bytes:
    """The bytes of the regular file `path` (no symbolic link, directory or device), at most `max_bytes`."""
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            raise BundleError(f"{path} is a symbolic link, not the {what} itself; {remedy}")
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path} is not a regular file (a folder or a device), so not the {what}; {remedy}")
        if info.st_size > max_bytes:
            raise BundleError(f"{path} is {info.st_size:,} bytes, more than a {what} can be ({max_bytes:,}); {remedy}")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise BundleError(f"{path} is missing; {remedy}") from None
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror or e}; {remedy}") from None
    if len(raw) > max_bytes:  # grew while being read
        raise BundleError(f"{path} is more than {max_bytes:,} bytes, more than a {what} can be; {remedy}")
    return raw


def parse_json(raw: bytes, path: Path, what: str, remedy: str) -> Any:
    """`raw` parsed, or one line: not UTF-8 JSON, nested too deep to parse, or a number of thousands of digits."""
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BundleError(f"{path} nests deeper than Python parses, so it is not a {what}; {remedy}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is corrupt or not a {what} (not valid JSON: {e}); {remedy}") from None
    except ValueError:  # Python 3.11+ refuses integers of more than 4300 digits
        raise BundleError(f"{path} holds a number thousands of digits long, so it is not a {what}; {remedy}") from None


def read_json(path: Path, what: str, remedy: str) -> Any:
    return parse_json(read_small_file(path, what, remedy), path, what, remedy)


# ---------------------------------------------------------------- the manifest and the files it names

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON without its own digest field (as edgecnn's manifest_digest)."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_FIELD}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def load_manifest(directory: Path = HERE, verify: bool = True, verify_key: Path | None = None) -> dict[str, Any]:
    """The bundle's manifest, after checking (with `verify_key`) its signature, its own digest, the type and size
    of every field the scripts read, and every listed file: inside the bundle, a regular file, its size and SHA-256."""
    path = directory / MANIFEST
    again = "copy the bundle again"
    raw = read_small_file(path, "bundle manifest", f"this folder is not a complete edgecnn bundle: {again}")
    if verify_key is not None:
        verify_signature(directory, raw, verify_key)
    manifest = parse_json(raw, path, "bundle manifest", again)
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} holds a JSON {type(manifest).__name__}, not an edgecnn bundle manifest; {again}")
    if manifest_digest(manifest) != manifest.get(DIGEST_FIELD):
        raise BundleError(f"{path} was edited after edgecnn wrote it (its {DIGEST_FIELD} does not match); {again}")
    problem = manifest_problem(manifest)
    if problem:
        raise BundleError(f"{path} is damaged: {problem}; {again}")
    for name, entry in manifest["files"].items():
        file = listed_file(directory, name)
        if file.stat().st_size != entry["bytes"] or (verify and _sha256(file) != entry["sha256"]):
            raise BundleError(f"{file} was altered (its size or SHA-256 differs from manifest.json); {again}")
    return manifest


def listed_file(directory: Path, name: str) -> Path:
    """The bundle's file `name`: a relative path inside the bundle, no symbolic link on the way, a regular file."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\0" in name:
        raise BundleError(f"{directory / MANIFEST} names {name!r}, which is not a file inside the bundle; "
                          "copy the bundle again")
    path = directory
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise BundleError(f"{path} is a symbolic link; a bundle holds its files themselves: copy the bundle again "
                              "without links (cp -rL)")
    if not path.exists():
        raise BundleError(f"{path} is missing from the bundle; copy the bundle again")
    if not path.is_file():
        raise BundleError(f"{path} is not a regular file; copy the bundle again")
    return path


# Every field run.py and bench.py read: its type, and bounds on whatever sizes an array or a loop.
_MISSING = object()


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_number(x) for x in v)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _names(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(k, str) and isinstance(n, str) for k, n in v.items())


def _file_entries(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(
        isinstance(name, str) and isinstance(e, dict) and _int_in(0, 2**62)(e.get("bytes"))
        and isinstance(e.get("sha256"), str) and len(e["sha256"]) == 64 for name, e in v.items())


def _float_dtype(v: Any) -> bool:
    try:
        return isinstance(v, str) and np.dtype(v).kind == "f"
    except TypeError:
        return False


def _input_shape(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 4 and (isinstance(v[0], str) or _int_in(1, MAX_BATCH)(v[0]))
            and all(_int_in(1, MAX_SIDE)(d) for d in v[1:]))


_FIELDS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("model.name", _text, "a string"),
    ("model.family", _text, "a string"),
    ("model.num_classes", _int_in(1, MAX_CLASSES), f"an integer from 1 to {MAX_CLASSES:,}"),
    ("model.weights", lambda v: isinstance(v, dict), "an object"),
    ("target", _text, "a string"),
    ("precision", _text, "a string"),
    ("input.name", _text, "a string"),
    ("input.shape", _input_shape, f"[batch, channels, height, width]: a batch of 1 to {MAX_BATCH} (or a name), "
                                  f"the others 1 to {MAX_SIDE}"),
    ("input.dtype", _float_dtype, "a float type name (float32, float16)"),
    ("preprocessing.scale", _number, "a number"),
    ("preprocessing.channels", _int_in(1, 4), "1, 2, 3 or 4"),
    ("preprocessing.resize", lambda v: isinstance(v, list) and len(v) == 2 and all(_int_in(1, MAX_SIDE)(s) for s in v),
     f"[height, width], each an integer from 1 to {MAX_SIDE}"),
    ("preprocessing.mean", _numbers, "a list of numbers"),
    ("preprocessing.std", lambda v: _numbers(v) and all(s != 0 for s in v), "a list of non-zero numbers"),
    ("class_names", lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v)),
     "null or a list of strings"),
    ("files", _file_entries, "an object mapping each file name to its bytes and 64-digit sha256"),
    ("model_files", _names, "an object mapping each model format to a file name"),
    ("parity", lambda v: isinstance(v, list) and all(isinstance(p, dict) and isinstance(p.get("passed"), bool)
                                                    for p in v), "a list of checks, each with passed true or false"),
    ("bundle.kind", lambda v: v == BUNDLE_KIND, repr(BUNDLE_KIND)),
    ("bundle.target", _text, "a string"),
    ("bundle.backend", lambda v: v in RUNNERS, "the name of a runtime run.py knows"),
    ("bundle.fallback", lambda v: v in RUNNERS, "the name of a runtime run.py knows"),
    ("bundle.created_utc", _text, "a string"),
)


def _at(manifest: dict[str, Any], field: str) -> Any:
    value: Any = manifest
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the manifest's fields, as a phrase; None when run.py and bench.py can use all of them."""
    for field, fits, expected in _FIELDS:
        value = _at(manifest, field)
        if value is _MISSING:
            return f"it lacks {field}"
        if not fits(value):
            return f"{field} must be {expected}"
    pre, names = manifest["preprocessing"], manifest["class_names"]
    channels, classes = pre["channels"], manifest["model"]["num_classes"]
    if manifest["input"]["shape"][1:] != [channels, *pre["resize"]]:
        return "input.shape does not match preprocessing (channels and resize)"
    if names is not None and len(names) != classes:
        return f"class_names has {len(names)} names for model.num_classes {classes}"
    if any(len(pre[key]) not in (1, channels) for key in ("mean", "std")):
        return f"preprocessing.mean and std must have 1 or {channels} values"
    if channels == 1 and not (_numbers(_at(pre, "channel_adaptation.rgb_to_grey.weights"))
                              and len(pre["channel_adaptation"]["rgb_to_grey"]["weights"]) == 3):
        return "preprocessing.channel_adaptation.rgb_to_grey.weights must be 3 numbers"
    graphs = [manifest["model_files"]]
    section = manifest.get("early_exit")
    if section is not None:
        stages = section.get("stages") if isinstance(section, dict) else None
        if not (isinstance(stages, list) and stages and all(
                isinstance(s, dict) and _names(s.get("model_files")) and _text(_at(s, "input.name")) for s in stages)):
            return "early_exit.stages must be a non-empty list of stages, each with model_files and input.name"
        thresholds = section.get("thresholds")
        if not (isinstance(thresholds, list) and len(thresholds) >= len(stages) - 1
                and all(_number(t) for t in thresholds)):
            return f"early_exit.thresholds must be {len(stages) - 1} numbers"
        graphs += [s["model_files"] for s in stages]
        graph = section.get("graph")
        if graph is not None:
            if not (isinstance(graph, dict) and _names(graph.get("model_files")) and _text(_at(graph, "input.name"))
                    and _text(_at(graph, "thresholds_input.name")) and _text(_at(graph, "outputs.logits"))
                    and _text(_at(graph, "outputs.exit"))):
                return ("early_exit.graph must have model_files, input.name, thresholds_input.name and outputs "
                        "logits and exit")
            graphs.append(graph["model_files"])
        if section.get("form", "stages") not in ("graph", "stages") or \
                (section.get("form") == "graph" and graph is None):
            return "early_exit.form must be graph (with early_exit.graph) or stages"
    for files in graphs:
        unlisted = sorted(set(files.values()) - set(manifest["files"]))
        if unlisted:
            return f"model file {unlisted[0]!r} is not listed (with its SHA-256) in files"
    return None


def unlisted_files(manifest: dict[str, Any], directory: Path = HERE) -> list[str]:
    """What the bundle folder holds besides the files the manifest lists and what edgecnn's own scripts write for
    this bundle (its signature; a TensorRT bundle's engines, their records, the timing cache and the build log).

    Such files are never verified, imported or loaded; `run.py --check` names them, and `edgecnn deploy --force`
    refuses to replace a bundle holding them.
    """
    files = manifest.get("files")
    expected = {MANIFEST, *(files if isinstance(files, dict) else ())}
    if manifest.get("signature"):
        expected.add(SIGNATURE)
    bundle = manifest.get("bundle")
    if isinstance(bundle, dict) and bundle.get("backend") == "tensorrt":
        folders = {PurePosixPath(name).parent for name in expected}
        expected |= {(folder / name).as_posix() for folder in folders for name in DEVICE_BUILT}
    holding = {parent.as_posix() for name in expected for parent in PurePosixPath(name).parents}
    found = []
    for root, dirs, names in os.walk(directory):
        base = PurePosixPath(Path(root).relative_to(directory).as_posix())
        for name in sorted(dirs):
            if (base / name).as_posix() not in holding:
                found.append(f"{(base / name).as_posix()}/")
                dirs.remove(name)  # named once, not descended into
        found += [(base / name).as_posix() for name in names if (base / name).as_posix() not in expected]
    return sorted(found)


def verify_signature(directory: Path, manifest_bytes: bytes, key_path: Path) -> None:
    """Refuse, in one line, a bundle whose manifest.json is not signed by the Ed25519 key whose public half is
    the PEM file `key_path` (a missing signature included): then every listed file is as its signer made it."""
    try:
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        raise BundleError("--verify-key checks the bundle's Ed25519 signature with the cryptography package, which "
                          "is not installed here: pip install cryptography") from None
    pem = read_small_file(key_path, "public key", "give the signer's public key PEM file", max_bytes=1 << 16)
    try:
        public = load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BundleError(f"{key_path} is not a PEM public key; make it from the signing key with "
                          "openssl pkey -in KEY.pem -pubout -out KEY.pub.pem") from None
    if not isinstance(public, Ed25519PublicKey):
        raise BundleError(f"{key_path} is not an Ed25519 public key; edgecnn signs bundles with Ed25519")
    path = directory / SIGNATURE
    if not os.path.lexists(path):
        raise BundleError(f"this bundle is not signed ({path} is missing), and --verify-key asks for a signed one: "
                          "do not run it; deploy it again with --sign")
    signature = read_small_file(path, "signature", "deploy the bundle again with --sign", max_bytes=1024)
    try:
        public.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(f"{directory / MANIFEST} does not match its signature under {key_path}: the bundle was "
                          "changed after it was signed, or signed with another key; do not run it") from None


def bundle_module(name: str, directory: Path = HERE) -> types.ModuleType:
    """The bundle's own `name`.py (a listed file), loaded by its path: the bundle folder is never on sys.path."""
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- preprocessing, as the manifest spells it

def _resize_weights(size_in: int, size_out: int, antialias: bool) -> np.ndarray:
    """(size_out, size_in) bilinear weights with half-pixel centres (align_corners=False); with
    `antialias` and a reduction the triangle filter widens by the scale (as PIL and torch's antialias do)."""
    scale = size_in / size_out
    support = scale if antialias and scale > 1 else 1.0
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    for i in range(size_out):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), size_in)
        taps = np.arange(lo, hi)
        w = np.clip(1.0 - np.abs((taps + 0.5 - centre) / support), 0.0, None)
        weights[i, lo:hi] = w / w.sum()
    return weights


def resize(x: np.ndarray, height: int, width: int, antialias: bool) -> np.ndarray:
    """C×H×W float32 → C×height×width, bilinear (separable weights per axis)."""
    rows = _resize_weights(x.shape[1], height, antialias)
    cols = _resize_weights(x.shape[2], width, antialias)
    return np.einsum("hH,cHW,wW->chw", rows, x.astype(np.float64), cols).astype(np.float32)


def to_input(pixels: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """uint8 C×H×W pixels → the float32 C×H×W the model takes, step by step as manifest['preprocessing'] says."""
    x = pixels.astype(np.float32) * np.float32(pre["scale"])
    channels = pre["channels"]
    if x.shape[0] != channels:
        if x.shape[0] == 1:
            x = np.repeat(x, channels, axis=0)
        elif x.shape[0] == 3 and channels == 1:
            weights = pre["channel_adaptation"]["rgb_to_grey"]["weights"]
            x = np.tensordot(np.asarray(weights, dtype=np.float32), x, axes=1)[None]
        else:
            raise BundleError(f"cannot adapt a {x.shape[0]}-channel image to this {channels}-channel model")
    height, width = pre["resize"]
    if x.shape[1:] != (height, width):
        x = resize(x, height, width, antialias=x.shape[2] > width)
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(-1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def decode_image(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """C×H×W pixels on the 0–255 scale (grey stays one channel, anything else becomes RGB), or one line saying
    why not. 8-bit images come back as uint8; 16-bit ones (I;16) are scaled by 255/65535 and float ones (F, read
    as 0–1) by 255, as float32, so no precision is lost and nothing is clipped to black or white. An image of more
    than `max_pixels` pixels (a decompression bomb, or just huge) is refused before it is decoded."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise BundleError("Pillow is not installed here, and run.py decodes images with it: "
                          "pip install -r requirements.txt") from None

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # Pillow only warns up to twice its limit
            Image.MAX_IMAGE_PIXELS = max_pixels
            with Image.open(path) as image:
                image.load()
                array = _pixel_values(image, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BundleError(f"{path} has more pixels than --max-image-pixels allows ({max_pixels:,}): a decompression "
                          "bomb or a huge image; pass --max-image-pixels N to raise the limit if you trust the "
                          "file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        raise BundleError(f"{path} is not an image Pillow can decode ({type(e).__name__}: {detail}); give a PNG, "
                          "JPEG or BMP file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _pixel_values(image: Any, path: Path) -> np.ndarray:
    """H×W (grey) or H×W×3 values on the 0–255 scale, by the image mode's real range (never guessed)."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit PNG/PGM/TIFF (older Pillows say "I")
        values = np.asarray(image, dtype=np.float64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise BundleError(f"{path} holds 32-bit integer pixels (beyond 0–65535), whose range run.py cannot know; "
                              "save it as an 8- or 16-bit image")
        return (values * (255 / 65535)).astype(np.float32)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise BundleError(f"{path} holds floating-point pixels outside 0–1, so their range is unknown; run.py "
                              "reads float images as 0–1 only: save it as an 8- or 16-bit image")
        return values * np.float32(255)
    grey = image.mode in ("1", "L", "LA", "La")
    return np.asarray(image.convert("L" if grey else "RGB"))


def image_paths(target: Path) -> list[Path]:
    """The image itself, or a folder's images (sorted, recursively)."""
    if target.is_dir():
        found = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise BundleError(f"{target} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return found
    if not target.exists():
        raise BundleError(f"{target} does not exist; give an image file or a folder of images")
    return [target]


def comparable_class_name(name: str) -> str:
    """A class name as a folder can spell it: case, spaces and punctuation ignored ('T-shirt/top' ~ 'tshirt_top'),
    as edgecnn matches a dataset's class sub-folders to a model's classes."""
    return re.sub(r"[\W_]+", "", name).casefold()


def labelled_images(folder: Path, paths: Sequence[Path], class_names: Sequence[str]) -> list[int] | None:
    """Each image's true class (an index into `class_names`) when `folder` is labelled: every image sits in a
    sub-folder named as one of the model's classes (one sub-folder per class, any order, as `edgecnn eval --data`
    reads one). None when it is not (a flat folder, or sub-folders with other names, e.g. train/ and test/)."""
    if not folder.is_dir() or not class_names:
        return None
    by_name = {comparable_class_name(n): k for k, n in enumerate(class_names)}
    labels = []
    for path in paths:
        parts = path.relative_to(folder).parts
        label = by_name.get(comparable_class_name(parts[0])) if len(parts) > 1 else None
        if label is None:
            return None
        labels.append(label)
    return labels


def classify_images(model: "Model", paths: Sequence[Path], manifest: dict[str, Any],
                    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N×classes) of every image, and the exit each took (None for a single-graph model): decoded and run
    IMAGE_CHUNK images at a time, in the batches the graph takes (a static batch's padding dropped)."""
    logits, exits = [], []
    for start in range(0, len(paths), IMAGE_CHUNK):
        chunk = [decode_image(path, max_pixels) for path in paths[start:start + IMAGE_CHUNK]]
        results = [model.classify(x) for x in batch_of(chunk, manifest)]
        logits.append(np.concatenate([z for z, _ in results])[:len(chunk)])
        if results[0][1] is not None:
            exits.append(np.concatenate([e for _, e in results])[:len(chunk)])
    return np.concatenate(logits), np.concatenate(exits) if exits else None


def accuracy_record(predictions: np.ndarray, labels: Sequence[int], folder: Path,
                    manifest: dict[str, Any]) -> dict[str, Any]:
    """Top-1 on a labelled folder, as edgecnn's bench records accuracy (a results record's `accuracy`); a folder
    named train, val or test is that split of the dataset its parent folder names."""
    where = folder.resolve()
    split = where.name if where.name in ("train", "val", "test") else None
    correct = int((np.asarray(predictions) == np.asarray(labels)).sum())
    return {"dataset": where.parent.name if split else where.name, "split": split or "all", "path": str(where),
            "samples": len(labels), "correct": correct, "top1": round(100.0 * correct / len(labels), 3),
            "classes": manifest["model"]["num_classes"], "reference_top1": None, "drop": None,
            "agreement_vs_torch_fp32": None, "labels": "the class sub-folders of the images"}


# ---------------------------------------------------------------- runtimes: one class each, registered once

RUNNERS: dict[str, type["Runner"]] = {}


def register_runner(cls: type["Runner"]) -> type["Runner"]:
    RUNNERS[cls.name] = cls
    return cls


class Runner:
    """One graph on one runtime: `run_all(x)` returns every output, in the graph's order."""
    name = ""
    model_format = ""           # the key of model_files it reads

    def __init__(self, path: Path, input_name: str, threads: int | None) -> None:
        self.path, self.input_name, self.threads = path, input_name, threads

    def run_all(self, x: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Every output for input `x` (and `extra`, the other inputs by name: the single early-exit graph's
        thresholds)."""
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def executed_precision(self, artifact_precision: str) -> str:
        return artifact_precision


@register_runner
class OnnxRuntimeRunner(Runner):
    name, model_format = "onnxruntime", "onnx"

    def __init__(self, path: Path, input_name: str, threads: int | None) -> None:
        super().__init__(path, input_name, threads)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_all(self, x: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        return self._session.run(None, {self.input_name: x, **(extra or {})})

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__


@register_runner
class OpenVinoRunner(Runner):
    name, model_format = "openvino", "openvino"
    _HINTS = {"fp32": "f32", "int8": "f32", "fp16": "f16", "bf16": "bf16"}

    def __init__(self, path: Path, input_name: str, threads: int | None, precision: str = "fp32") -> None:
        super().__init__(path, input_name, threads)
        import openvino as ov

        core = ov.Core()
        hint = self._HINTS.get(precision, "f32")
        if hint == "f16" and "FP16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            hint = "f32"  # as edgecnn's session: FP16 weights run in f32 on CPUs without FP16 arithmetic
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()

    def run_all(self, x: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        self._request.infer({self.input_name: x, **(extra or {})})
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self._compiled.outputs))]

    def version(self) -> str:
        import openvino as ov

        return ov.get_version()

    def executed_precision(self, artifact_precision: str) -> str:
        """The element types entering the compiled model's convolutions and matrix products."""
        found: dict[str, int] = {}
        names = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "u8": "int8", "i8": "int8"}
        for op in self._compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "GroupConvolution",
                                                                           "FullyConnected", "MatMul"):
                element = names.get(op.input(0).get_element_type().get_type_name(), "other")
                found[element] = found.get(element, 0) + 1
        return "+".join(sorted(found, key=found.get, reverse=True)) or artifact_precision


class _Cuda:
    """The few CUDA runtime calls a TensorRT engine needs, through ctypes (JetPack ships libcudart): device and
    pinned host memory, asynchronous copies and the runner's own stream. Buffers live as long as the runner's
    process (one set per input shape)."""
    HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2
    LIBRARIES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12")

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        names = [n for n in (ctypes.util.find_library("cudart"), *self.LIBRARIES) if n]
        self.lib = None
        for name in names:
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError as e:
                error = e
        if self.lib is None:
            raise BundleError(f"the CUDA runtime library is not loadable ({error}); install JetPack's CUDA "
                              "(nvidia-jetpack) or run with --backend onnxruntime") from None
        self.ctypes = ctypes
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(self.stream)), "cudaStreamCreate")

    def _check(self, code: int, call: str) -> None:
        if code != 0:
            raise RuntimeError(f"{call} failed with CUDA error {code}")

    def malloc(self, nbytes: int) -> int:
        pointer = self.ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(self.ctypes.byref(pointer), self.ctypes.c_size_t(max(nbytes, 1))),
                    "cudaMalloc")
        return pointer.value

    def pinned(self, shape: tuple, dtype: object) -> tuple[int, np.ndarray]:
        """Page-locked host memory as a numpy array (copies to and from it run asynchronously)."""
        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        pointer = self.ctypes.c_void_p()
        self._check(self.lib.cudaMallocHost(self.ctypes.byref(pointer), self.ctypes.c_size_t(nbytes)),
                    "cudaMallocHost")
        raw = (self.ctypes.c_char * nbytes).from_address(pointer.value)
        return pointer.value, np.frombuffer(raw, dtype=np.uint8)[:int(np.prod(shape)) * np.dtype(dtype).itemsize] \
            .view(dtype).reshape(shape)

    def copy_async(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        self._check(self.lib.cudaMemcpyAsync(self.ctypes.c_void_p(dst), self.ctypes.c_void_p(src),
                                             self.ctypes.c_size_t(nbytes), kind, self.stream), "cudaMemcpyAsync")

    def synchronize(self) -> None:
        self._check(self.lib.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")


@register_runner
class TensorRTRunner(Runner):
    """A model.plan built on this device by setup.sh (TensorRT 10 API: named I/O tensors, execute_async_v3)."""
    name, model_format = "tensorrt", "tensorrt_plan"

    def __init__(self, path: Path, input_name: str, threads: int | None) -> None:
        super().__init__(path, input_name, threads)
        import tensorrt as trt

        build_engine = bundle_module("build_engine")  # the artifact's own build script, beside this file

        try:  # before deserialising: an engine built for another GPU or TensorRT fails there, or worse
            build_engine.check_engine_record(path)
        except build_engine.EngineMismatch as e:
            raise BundleError(str(e)) from None
        self.trt, self.cuda = trt, _Cuda()
        self._engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise BundleError(f"{path} is not an engine this TensorRT can run; build it again with ./setup.sh")
        self._context = self._engine.create_execution_context()
        self._outputs = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)
                         if self._engine.get_tensor_mode(self._engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT]
        static = self._engine.get_tensor_shape(input_name)[0]
        self.max_batch = static if static > 0 else self._engine.get_tensor_profile_shape(input_name, 0)[2][0]
        self._buffers: dict = {}
        self._bound: tuple | None = None

    def run_all(self, x: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Every output for a batch, in chunks of the engine profile's largest batch (a TensorRT bundle runs the
        stage loop: it has no single early-exit graph, so no other input)."""
        x = np.ascontiguousarray(x, dtype=self.trt.nptype(self._engine.get_tensor_dtype(self.input_name)))
        chunks = [self._run_chunk(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return [np.concatenate(parts).astype(np.float32) for parts in zip(*chunks)]

    def _bind(self, shape: tuple) -> dict:
        """Device and pinned host buffers for this input shape, made on its first call and kept (allocating per
        call, with pageable copies, would be timed as inference), bound to the execution context."""
        if shape != self._bound:
            if not self._context.set_input_shape(self.input_name, shape):
                raise BundleError(f"the engine does not take input shape {list(shape)}; build it again with "
                                  "./setup.sh --batch/--max-batch covering it")
            if shape not in self._buffers:
                names = [self.input_name, *self._outputs]
                shapes = [shape, *(tuple(self._context.get_tensor_shape(n)) for n in self._outputs)]
                dtypes = [self.trt.nptype(self._engine.get_tensor_dtype(n)) for n in names]
                self._buffers[shape] = {n: (self.cuda.malloc(int(np.prod(sh)) * np.dtype(dt).itemsize),
                                            *self.cuda.pinned(sh, dt)) for n, sh, dt in zip(names, shapes, dtypes)}
            for name, (device, _, _) in self._buffers[shape].items():
                self._context.set_tensor_address(name, device)
            self._bound = shape
        return self._buffers[shape]

    def _run_chunk(self, x: np.ndarray) -> list[np.ndarray]:
        cuda, buffers = self.cuda, self._bind(tuple(x.shape))
        device, host_pointer, host = buffers[self.input_name]
        host[...] = x
        cuda.copy_async(device, host_pointer, host.nbytes, cuda.HOST_TO_DEVICE)
        if not self._context.execute_async_v3(cuda.stream.value or 0):
            raise RuntimeError("TensorRT failed to run the engine")
        for name in self._outputs:
            device, host_pointer, host = buffers[name]
            cuda.copy_async(host_pointer, device, host.nbytes, cuda.DEVICE_TO_HOST)
        cuda.synchronize()
        return [buffers[name][2].copy() for name in self._outputs]

    def version(self) -> str:
        return self.trt.__version__


def open_runner(backend: str, path: Path, input_name: str, threads: int | None, precision: str) -> Runner:
    cls = RUNNERS[backend]
    try:
        if cls is OpenVinoRunner:
            return cls(path, input_name, threads, precision)
        return cls(path, input_name, threads)
    except ImportError as e:
        raise BundleError(f"the {backend} runtime is not importable here ({e}): "
                          "pip install -r requirements.txt, or run ./setup.sh to see what is missing") from None
    except (BundleError, KeyboardInterrupt):
        raise
    except Exception as e:  # each runtime raises its own types for a model it cannot read
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise BundleError(f"the {backend} runtime cannot load {path} ({detail}); the file matches manifest.json, so "
                          "the bundle was made for another runtime version or altered: deploy it again") from None


# ---------------------------------------------------------------- the model: one graph, or the early-exit loop

def softmax_entropy(logits: np.ndarray) -> np.ndarray:
    """Entropy of softmax(logits) per row, natural log (as the manifest's early_exit.exit_entropy says)."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=1)


class Model:
    """The bundle's model on one runtime: `classify(x)` → (logits, exit stage per sample or None)."""

    def __init__(self, manifest: dict[str, Any], backend: str, threads: int | None = None,
                 directory: Path = HERE) -> None:
        self.manifest, self.backend, self.directory = manifest, backend, directory
        cls = RUNNERS[backend]
        precision = manifest["precision"]
        section = manifest.get("early_exit")
        self.thresholds: list[float] = list(section["thresholds"]) if section else []
        if section:
            self.stages = [open_runner(backend, self._file(stage["model_files"], cls), stage["input"]["name"],
                                       threads, precision) for stage in section["stages"]]
        else:
            self.stages = [open_runner(backend, self._file(manifest["model_files"], cls), manifest["input"]["name"],
                                       threads, precision)]
        # The single early-exit graph (manifest early_exit.form "graph"): one call per image runs exactly the
        # stages it needs; a batch of more images runs the stage loop, as edgecnn's runtime does.
        self.graph: Runner | None = None
        graph = section.get("graph") if section else None
        if graph and section.get("form") == "graph" and cls.model_format in graph["model_files"]:
            self.graph = open_runner(backend, self._file(graph["model_files"], cls), graph["input"]["name"], threads,
                                     precision)
            self._thresholds_feed = {graph["thresholds_input"]["name"]: np.asarray(self.thresholds, np.float32)}
        self.dtype = np.dtype(manifest["input"]["dtype"])

    @property
    def form(self) -> str | None:
        """How early exit runs here at batch 1: the single graph or the stage loop (None: no early exit)."""
        return None if len(self.stages) == 1 else "graph" if self.graph is not None else "stages"

    def _file(self, model_files: dict[str, str], cls: type[Runner]) -> Path:
        if cls.model_format == "tensorrt_plan":
            return engine_path(self.directory, model_files)
        return self.directory / model_files[cls.model_format]

    def classify(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = x.astype(self.dtype)
        if len(self.stages) == 1:
            return self.stages[0].run_all(x)[0].astype(np.float32), None
        if self.graph is not None and x.shape[0] == 1:
            logits, exit_taken = self.graph.run_all(x, self._thresholds_feed)[:2]
            return logits.astype(np.float32).reshape(1, -1), np.asarray(exit_taken, np.int64).reshape(1)
        n, last = x.shape[0], len(self.stages) - 1
        logits = np.empty((n, self.manifest["model"]["num_classes"]), dtype=np.float32)
        exits = np.full(n, last)
        index = np.arange(n)
        for k, stage in enumerate(self.stages):  # exit at stage k when entropy < thresholds[k]
            outputs = stage.run_all(x)
            if k == last:
                logits[index] = outputs[0]
                break
            exit_logits, entropy, features = outputs[0], outputs[1].reshape(-1), outputs[2]
            leave = entropy < self.thresholds[k]
            logits[index[leave]], exits[index[leave]] = exit_logits[leave], k
            index, x = index[~leave], features[~leave]
            if not len(index):
                break
        return logits, exits

    def executed_precision(self) -> str:
        return self.stages[0].executed_precision(self.manifest["precision"])


def engine_path(directory: Path, model_files: dict[str, str]) -> Path:
    """Where setup.sh builds a graph's TensorRT engine: beside the ONNX it came from, as .plan."""
    return directory / Path(model_files["onnx"]).with_suffix(".plan")


def pick_backend(manifest: dict[str, Any], requested: str | None, say: Callable[[str], None],
                 directory: Path = HERE) -> str:
    """The backend asked for, else the bundle's; a Jetson bundle without a built engine falls back to its
    CPU runtime and says so."""
    bundle = manifest["bundle"]
    if requested:
        if requested not in (bundle["backend"], bundle["fallback"]):
            raise BundleError(f"this {bundle['target']} bundle runs on {bundle['backend']}"
                              f"{' or ' + bundle['fallback'] if bundle['fallback'] != bundle['backend'] else ''}, "
                              f"not {requested}")
        return requested
    if bundle["backend"] == "tensorrt":
        graphs = [s["model_files"] for s in manifest["early_exit"]["stages"]] if manifest.get("early_exit") \
            else [manifest["model_files"]]
        if not all(engine_path(directory, files).is_file() for files in graphs):
            say("no TensorRT engine is built here (run ./setup.sh on the Jetson to build it): "
                f"falling back to {bundle['fallback']} on the CPU")
            return bundle["fallback"]
        if importlib.util.find_spec("tensorrt") is None:  # e.g. trtexec built the engine, run from a virtualenv
            say(f"the engine is built, but TensorRT's Python module is not importable from {sys.executable} "
                "(sudo apt install python3-libnvinfer; a virtualenv sees it only when made with "
                f"--system-site-packages): falling back to {bundle['fallback']} on the CPU")
            return bundle["fallback"]
    return bundle["backend"]


def batch_of(images: Sequence[np.ndarray], manifest: dict[str, Any]) -> list[np.ndarray]:
    """Preprocessed inputs in the batches the graph takes (a static batch is padded with zeros)."""
    static = manifest["input"]["shape"][0]
    size = static if isinstance(static, int) else max(len(images), 1)
    pre = manifest["preprocessing"]
    x = np.stack([to_input(p, pre) for p in images])
    batches = []
    for start in range(0, len(x), size):
        chunk = x[start:start + size]
        if len(chunk) < size:
            chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        batches.append(chunk)
    return batches


# ---------------------------------------------------------------- benchmarks, in edgecnn's results schema

RESULTS_SCHEMA_VERSION = 1
RESULTS_KIND = "edgecnn-bench-results"


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """As edgecnn's benchmarks.stats: milliseconds per call (mean, p50/p90/p99, min, max, std), samples/s."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    stats = {"mean": ms.mean(), **{f"p{q}": np.percentile(ms, q) for q in (50, 90, 99)},
             "min": ms.min(), "max": ms.max(), "std": ms.std(ddof=1) if len(ms) > 1 else 0.0}
    return {**{k: round(float(v), 4) for k, v in stats.items()},
            "throughput": round(float(batch * 1e3 / stats["mean"]), 2), "iterations": len(ms)}


def _cpuinfo() -> tuple[str, set[str], int]:
    model, flags, cores, physical = platform.processor() or platform.machine(), set(), set(), "0"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "model name":
                    model = value
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key == "physical id":
                    physical = value
                elif key == "core id":
                    cores.add((physical, value))
    except OSError:
        pass
    try:  # ARM boards (Jetson) name themselves in the device tree rather than in /proc/cpuinfo
        model = Path("/proc/device-tree/model").read_text().strip("\x00\n ") or model
    except OSError:
        pass
    return model, flags, len(cores) or (os.cpu_count() or 1)


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
             "amx_bf16", "amx_fp16", "asimd", "asimddp", "fphp")


def machine_info() -> dict[str, Any]:
    cpu, flags, physical = _cpuinfo()
    logical = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            memory = round(next(int(line.split()[1]) for line in f if line.startswith("MemTotal:")) / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        memory = None
    return {"name": f"{cpu} ×{logical}", "cpu": cpu, "logical_cores": logical, "physical_cores": physical,
            "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS}, "memory_gb": memory, "os": platform.platform(),
            "host": platform.node(), "arch": platform.machine(),
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def tool_versions() -> dict[str, str | None]:
    import importlib.metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for tool in ("numpy", "pillow", "onnxruntime", "openvino", "tensorrt", "torch"):
        try:
            versions[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            versions[tool] = None
    return versions


# The board's input power per Jetson module, as tegrastats names its rails ("NAME current/average", mW), in the
# order they are looked for; AGX Orin has no single input rail: its module power is the sum of three.
INPUT_POWER_RAILS = (
    (("VDD_IN",), "VDD_IN: module input (Orin NX, Orin Nano, Xavier NX)"),
    (("POM_5V_IN",), "POM_5V_IN: module input (Nano, TX1, TX2)"),
    (("VIN",), "VIN: module input (Thor)"),
    (("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"), "VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0: module power (AGX Orin)"),
)


def tegrastats_rails(line: str) -> dict[str, float]:
    """Each rail's current reading (mW) on one tegrastats line."""
    import re

    return {m.group(1): float(m.group(2)) for m in re.finditer(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?", line)}


def tegrastats_power(lines: Sequence[str]) -> tuple[float | None, str | None]:
    """Mean board input power (mW) over tegrastats lines, and which rail(s) it is; (None, None) when none of
    INPUT_POWER_RAILS is there (the caller says so: a module this code does not know)."""
    samples = [tegrastats_rails(line) for line in lines]
    for rails, source in INPUT_POWER_RAILS:
        values = [sum(sample[r] for r in rails) for sample in samples if all(r in sample for r in rails)]
        if values:
            return sum(values) / len(values), source
    return None, None


def results_document(record: dict[str, Any], command: str, settings: dict[str, Any],
                     device: dict[str, Any]) -> dict[str, Any]:
    machine = machine_info()
    if device:
        machine["device"] = device
    return {"schema_version": RESULTS_SCHEMA_VERSION, "kind": RESULTS_KIND, "command": command,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "complete": True,
            "machine": machine, "tools": tool_versions(), "settings": settings,
            "timing": {"clock": "time.perf_counter around one runtime call (preprocessing excluded)",
                       "latency": "milliseconds per call (one batch); throughput = batch / mean",
                       "source": "an edgecnn deploy bundle's bench.sh"},
            "records": [record], "skipped": []}


def percent_spread(rounds: Sequence[Sequence[float]]) -> dict[str, Any]:
    medians = [float(np.median(r)) * 1e3 for r in rounds if len(r)]
    centre = float(np.median(medians))
    return {"round_p50_ms": [round(m, 4) for m in medians],
            "spread_pct": round(100 * (max(medians) - min(medians)) / centre, 2) if centre > 0 else 0.0}


def timed(run: Callable[[], Any], iterations: int) -> list[float]:
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times
