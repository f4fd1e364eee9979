"""What a MODEL argument names, and the data its weights travel with: one door for every command.

A MODEL is one of four forms (`MODEL_FORMS`), resolved by `resolve_model` for `export`, `bench`, `eval`,
`deploy`, `inspect` and the Python API (`edgecnn.export(...)`, which also takes an `nn.Module`):

- a zoo name (`resnet18_fmnist`; `bench` also takes shell patterns): its committed weights, or `--checkpoint`
  (a `.safetensors` or torchvision-style `.pth` file for that architecture);
- an edgecnn checkpoint file (`runs/x/x.safetensors`): its sidecar (`x.json`) names the architecture, the
  classes, the preprocessing and the dataset it was trained on;
- an ONNX file (`my.onnx`): the user states what a sidecar would (`Description`: input size, mean, std,
  classes, data), or the file's `metadata_props` do (keys `mean`, `std`, `class_names`, `dataset`);
- an artifact folder (`manifest.json` beside its files): used as it is, never exported again.

The data travels with the weights (`WeightsData`): the dataset a checkpoint was trained on (or that the user
states for an ONNX file or module) is the default for everything that scores or learns from data: parity,
test accuracy, INT8 calibration, `--calibrator auto`, `--max-drop`, early-exit tuning, bench accuracy. Another
dataset is used only when the user names it (`--data`, `with_data`), and then `WeightsData.instead_of` says
which one it replaced, so every output and record can say so. A dataset that is not on this machine is one
line asking for `--data`; nothing here ever falls back to Fashion-MNIST for weights not trained on it.

Public for the other commands (train/eval included): `resolve_model`, `expand_models`, `ModelRef`,
`WeightsData`, `weights_data`, `with_data`, `config_from_sidecar`, `Description`, `parse_classes`,
`parse_floats`. This module imports nothing from `edgecnn.export` (the data-flow rule).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from edgecnn.errors import DatasetError, UserError
from edgecnn.registry import ModelConfig, get_config, list_models
from edgecnn.text import printable

MODEL_FORMS = ("a zoo name (`edgecnn list`), an edgecnn checkpoint (.safetensors with its .json sidecar), "
               "an ONNX file (.onnx) or an artifact folder (with manifest.json)")
MANIFEST_NAME = "manifest.json"   # the artifact contract's file name (edgecnn.export.manifest says the same)
KINDS = ("zoo", "checkpoint", "onnx", "artifact")
# Datasets edgecnn reads by name from their default place (the others need a directory).
NAMED_DATASETS = ("fashion_mnist",)


# ---------------------------------------------------------------- the data the weights travel with

@dataclass(frozen=True)
class WeightsData:
    """The dataset a model's numbers are measured on: the weights' own, or one the user named.

    `source` is what `edgecnn.data.load_dataset` takes (a directory, or a name such as fashion_mnist);
    `origin` says how edgecnn knows it ("checkpoint sidecar", "committed weights", "--data", "ONNX metadata",
    "zoo configuration"); `instead_of` names the weights' own dataset when the user chose another one."""
    name: str
    path: str | None = None
    fingerprint: str | None = None
    origin: str = "--data"
    instead_of: str | None = None

    @property
    def source(self) -> str:
        return self.path or self.name

    @property
    def label(self) -> str:
        """How outputs name it: 'digits (/data/digits)', 'fashion_mnist'."""
        return f"{self.name} ({self.path})" if self.path else self.name

    @property
    def said(self) -> str:
        """The dataset with how it was chosen, for one line of output."""
        if self.instead_of:
            return f"{self.label} (--data, instead of the weights' own {self.instead_of})"
        return f"{self.label} ({self.origin})"

    def record(self) -> dict[str, Any]:
        """What manifests and results record (the checkpoint sidecar's keys, plus how it was chosen)."""
        return {"name": self.name, "path": self.path, "fingerprint": self.fingerprint, "origin": self.origin,
                **({"instead_of": self.instead_of} if self.instead_of else {})}

    def load(self, split: str = "test"):  # -> edgecnn.data.ImageDataset
        """The split, or one line asking for --data when it is not readable here."""
        from edgecnn.data import load_dataset

        fix = "pass --data DIR (data= in Python) with its train/ and test/ splits"
        if self.path is not None and not Path(self.path).is_dir():
            raise DatasetError(f"the dataset of these weights, {self.label} ({self.origin}), is not on this machine "
                               f"({self.path} is not a directory here): {fix}")
        try:
            return load_dataset(self.source, split)
        except DatasetError as e:
            raise DatasetError(f"the dataset of these weights, {self.label} ({self.origin}), is not readable here "
                               f"({e}); {fix}") from e

    @classmethod
    def from_record(cls, record: dict[str, Any], origin: str = "checkpoint sidecar") -> WeightsData | None:
        """From a checkpoint sidecar's or a manifest's `dataset` record; None when it names nothing."""
        if not isinstance(record, dict) or not (record.get("path") or record.get("name")):
            return None
        path = record.get("path")
        name = str(record.get("name") or Path(str(path)).name)
        return cls(name, str(path) if path else None, record.get("fingerprint"), record.get("origin") or origin,
                   record.get("instead_of"))

    @classmethod
    def named(cls, data: str | Path, origin: str = "--data", root: str | Path | None = None) -> WeightsData:
        """A dataset the user names: a known name or a directory (refused in one line when it is neither);
        `root` (--data-root) is where a named dataset lives."""
        text = str(data)
        if root is not None:
            return cls(text, str(Path(root).expanduser().resolve()), None, origin)
        if text in ("fashion_mnist", "fmnist", "fashion-mnist"):
            return cls("fashion_mnist", None, None, origin)
        path = Path(text).expanduser()
        if not path.is_dir():
            raise DatasetError(f"--data {text!r} is neither a known dataset name ({', '.join(NAMED_DATASETS)}) nor a "
                               "directory: pass a folder with train/ and test/ (one sub-folder per class in each), "
                               "CIFAR-10 batches or Fashion-MNIST IDX files")
        path = path.resolve()
        return cls(path.name, str(path), None, origin)

    def same_as(self, other: WeightsData | None) -> bool:
        return other is not None and (self.path or self.name) == (other.path or other.name)


def weights_data(config: ModelConfig, weights: dict[str, Any] | None) -> WeightsData | None:
    """The dataset of the weights an export or a benchmark is about: the record that travels with them (checkpoint
    sidecar, ONNX description, --data), else Fashion-MNIST for a zoo configuration made for it (the committed
    weights), else None: no data is known, and nothing is scored or calibrated without the user naming some."""
    found = WeightsData.from_record((weights or {}).get("dataset"))
    if found is not None:
        return found
    if config.dataset == "fashion_mnist":
        committed = (weights or {}).get("committed")
        return WeightsData("fashion_mnist", None, None, "committed weights" if committed else "zoo configuration")
    return None


def with_data(own: WeightsData | None, data: str | Path | None) -> WeightsData | None:
    """The dataset to use: `data` when the user named one (marked as replacing the weights' own when it differs),
    else the weights' own."""
    if data is None:
        return own
    chosen = data if isinstance(data, WeightsData) else WeightsData.named(data)
    if own is not None and not chosen.same_as(own):
        return replace(chosen, instead_of=own.label)
    return replace(chosen, origin=own.origin) if own is not None else chosen


# ---------------------------------------------------------------- what a user says about an ONNX file or a module

@dataclass(frozen=True)
class Description:
    """What a checkpoint's sidecar would say, stated for an ONNX file or an nn.Module: all optional.

    `input_size` is (C, H, W), or (H, W) when the channels are known (an ONNX graph's input, a zoo config);
    `mean`/`std` are per channel on the [0, 1] scale (after /255); `classes` the class names in output order;
    `data` the dataset the weights were trained on (a directory or a known name)."""
    input_size: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    data: str | None = None

    def __post_init__(self) -> None:
        if self.input_size is not None:
            size = tuple(self.input_size)
            if len(size) not in (2, 3) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                   for v in size):
                raise UserError(f"input size must be (C, H, W) or (H, W) in positive whole numbers, got "
                                f"{self.input_size!r}")
            object.__setattr__(self, "input_size", size)
        for field_name in ("mean", "std"):
            value = getattr(self, field_name)
            if value is not None:
                object.__setattr__(self, field_name, _floats(field_name, value))
        if self.std is not None and any(v <= 0 for v in self.std):
            raise UserError(f"std must be above 0 for every channel, got {list(self.std)}")
        if self.classes is not None:
            object.__setattr__(self, "classes", parse_classes(self.classes))
        if self.data is not None:
            object.__setattr__(self, "data", str(self.data))

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in ("input_size", "mean", "std", "classes", "data"))

    def merged_over(self, other: Description) -> Description:
        """This description, with `other`'s values where this one says nothing (stated beats metadata)."""
        return Description(**{f: getattr(self, f) if getattr(self, f) is not None else getattr(other, f)
                               for f in ("input_size", "mean", "std", "classes", "data")})


def _floats(name: str, value: Any) -> tuple[float, ...]:
    values = parse_floats(name, value) if isinstance(value, str) else \
        (float(value),) if isinstance(value, (int, float)) and not isinstance(value, bool) else \
        tuple(float(v) for v in value)
    if not values or any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise UserError(f"{name} must be finite numbers, one per channel, got {value!r}")
    if any(abs(v) > 1.0 for v in values) and name == "mean":
        raise UserError(f"mean {list(values)} looks like 0-255 pixel values; edgecnn normalises after scaling to "
                        "[0, 1]: divide it (and std) by 255")
    return values


def parse_floats(name: str, text: str) -> tuple[float, ...]:
    """'0.5' or '0.485,0.456,0.406' (a JSON list too) → floats; one line when it is not numbers."""
    try:
        loaded = json.loads(text) if text.strip().startswith("[") else [v for v in text.split(",") if v.strip()]
        return tuple(float(v) for v in loaded)
    except (ValueError, TypeError):
        raise UserError(f"{name} must be numbers separated by commas (e.g. 0.485,0.456,0.406), got {text!r}") from None


def parse_classes(value: str | Path | Sequence[str]) -> tuple[str, ...]:
    """Class names: a file (one per line, or a JSON list), 'a,b,c', or a sequence; refused when empty or repeated."""
    if isinstance(value, (str, Path)):
        path = Path(value)
        if path.is_file():
            from edgecnn.jsonfile import read_json

            text = path.read_text(errors="replace")
            names = read_json(path, "class names file") if text.lstrip().startswith("[") else text.splitlines()
        elif isinstance(value, Path) or "," not in str(value) and ("/" in str(value) or str(value).endswith(
                (".txt", ".json"))):
            raise UserError(f"classes file {value} not found; pass a file (one name per line) or names as a,b,c")
        else:
            names = str(value).split(",")
    else:
        names = list(value)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError("classes must be names (strings), one per output of the model")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError("classes is empty; give one name per output of the model (a,b,c or a file)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"class names must be distinct; {', '.join(repeated[:3])} repeated")
    return tuple(names)


def comparable_class_name(name: str) -> str:
    """A class name as a folder can spell it: case, spaces, punctuation ignored ('T-shirt/top' ~ 'tshirt_top')."""
    return re.sub(r"[\W_]+", "", name).casefold()


def aligned_labels(dataset_classes: Sequence[str], config: ModelConfig) -> list[int] | None:
    """Each dataset class's index among the model's outputs when the same class names come in another order;
    None when the order is the model's, or when the names do not all match (classes are then taken by index, as a
    dataset the user named with --data is scored: its records say it was another dataset)."""
    names = config.class_names
    if not names or list(dataset_classes) == list(names):
        return None
    by_name = {comparable_class_name(n): k for k, n in enumerate(names)}
    order = [by_name.get(comparable_class_name(c)) for c in dataset_classes]
    if None in order or len(set(order)) != len(order):
        return None
    return order


# ---------------------------------------------------------------- checkpoints

def config_from_sidecar(name: str, meta: dict[str, Any]) -> ModelConfig:
    """The zoo config of `name` as the checkpoint's sidecar says it was trained: class count and names, input
    channels, mean and std, and the dataset's name."""
    config = get_config(name)
    trained = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    changes: dict[str, Any] = {}
    classes = meta.get("class_names", trained.get("class_names"))
    if isinstance(trained.get("num_classes"), int) and trained["num_classes"] > 0:
        changes["num_classes"] = trained["num_classes"]
    if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
        changes["class_names"] = tuple(classes)
        changes.setdefault("num_classes", len(classes))
    elif changes.get("num_classes", config.num_classes) != config.num_classes:
        changes["class_names"] = None
    size = trained.get("input_size")
    if isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v > 0 for v in size):
        changes["input_size"] = (size[0], *config.input_size[1:])
    for key in ("mean", "std"):
        values = trained.get(key)
        if isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values):
            changes[key] = tuple(float(v) for v in values)
    data = WeightsData.from_record(meta.get("dataset"))
    if data is not None:
        changes["dataset"] = data.name
    if changes.get("class_names") and len(changes["class_names"]) != changes.get("num_classes", config.num_classes):
        raise UserError(f"the sidecar of the {name} checkpoint records {len(changes['class_names'])} class names for "
                        f"{changes.get('num_classes', config.num_classes)} classes; fix its JSON or train again")
    return replace(config, **changes)


# ---------------------------------------------------------------- MODEL arguments

@dataclass(frozen=True)
class ModelRef:
    """One resolved MODEL argument (see the module doc). `name` is the architecture for zoo names and checkpoints,
    the file's stem for ONNX files, the manifest's model name for artifacts; `label` is how outputs name it."""
    kind: str
    arg: str
    name: str
    path: Path | None = None
    checkpoint: Path | None = None   # zoo name + --checkpoint

    @property
    def label(self) -> str:
        return self.arg if self.kind != "zoo" or self.checkpoint is None else f"{self.name} ({self.checkpoint})"

    @property
    def is_file(self) -> bool:
        return self.kind in ("checkpoint", "onnx")

    def sidecar(self) -> dict[str, Any]:
        """The checkpoint's sidecar (empty for other kinds)."""
        from edgecnn.checkpoint import read_sidecar

        return read_sidecar(self.path) if self.kind == "checkpoint" else {}


def _unknown(arg: str, why: str = "") -> UserError:
    return UserError(f"unknown model {arg!r}{f' ({why})' if why else ''}: a MODEL is {MODEL_FORMS}")


def resolve_model(arg: str | Path, *, checkpoint: str | Path | None = None,
                  kinds: Sequence[str] = KINDS) -> ModelRef:
    """The MODEL a user named, or one line listing the forms (or what is wrong with the file).

    `checkpoint` (--checkpoint) goes with a zoo name only; `kinds` are the forms the command takes, others are
    refused in one line saying which command takes them."""
    text = str(arg)
    path = Path(text).expanduser()
    ref = _resolve_path(text, path) if (path.exists() or path.is_symlink()) else None
    if ref is None:
        if any(c in text for c in "/\\") or path.suffix in (".onnx", ".safetensors", ".pth", ".pt", ".json"):
            raise _unknown(text, "no such file or folder")
        from edgecnn.registry import _MODELS, _ensure_zoo_loaded

        _ensure_zoo_loaded()
        if text not in _MODELS:
            import difflib

            close = difflib.get_close_matches(text, list(_MODELS), n=3, cutoff=0.6)
            raise _unknown(text, f"did you mean {close[0]}?" if close else "not in the zoo, nor a file or folder here")
        ref = ModelRef("zoo", text, text, checkpoint=Path(checkpoint) if checkpoint is not None else None)
    elif checkpoint is not None:
        raise UserError(f"--checkpoint goes with a zoo name; {text} is {_A_KIND[ref.kind]} and brings its own weights")
    if ref.kind not in kinds:
        raise UserError(f"{text} is {_A_KIND[ref.kind]}; this command takes "
                        f"{' or '.join(_A_KIND[k] for k in kinds)}")
    return ref


_A_KIND = {"zoo": "a zoo name", "checkpoint": "an edgecnn checkpoint", "onnx": "an ONNX file",
           "artifact": "an artifact folder"}


def _resolve_path(text: str, path: Path) -> ModelRef:
    if path.is_dir():
        if not (path / MANIFEST_NAME).is_file():
            raise _unknown(text, f"a folder without {MANIFEST_NAME}, so not an artifact")
        try:
            name = json.loads((path / MANIFEST_NAME).read_text())["model"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            name = path.name  # read_manifest says what is wrong with it when the artifact is opened
        return ModelRef("artifact", text, str(name), path)
    if not path.is_file():
        raise _unknown(text, "not a regular file or folder")
    if path.suffix.lower() == ".onnx":
        return ModelRef("onnx", text, path.stem, path)
    if path.suffix == ".json" and path.with_suffix(".safetensors").is_file():
        path = path.with_suffix(".safetensors")
    if path.suffix in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        from edgecnn.checkpoint import read_sidecar

        meta = read_sidecar(path)
        if not isinstance(meta.get("model"), str):
            raise UserError(f"{text} has no edgecnn sidecar ({path.with_suffix('.json').name}) naming its "
                            "architecture: pass the zoo name with it, e.g. `edgecnn export resnet18 --checkpoint "
                            f"{text}`")
        get_config(meta["model"])  # an architecture this edgecnn does not have: one line with suggestions
        return ModelRef("checkpoint", text, meta["model"], path)
    raise _unknown(text, f"a {path.suffix or 'suffix-less'} file")


def expand_models(args: Sequence[str | Path], *, checkpoint: str | Path | None = None,
                  kinds: Sequence[str] = KINDS) -> list[ModelRef]:
    """Every MODEL argument resolved, zoo shell patterns ('*_fmnist') expanded; duplicates kept once."""
    found: list[ModelRef] = []
    for arg in args:
        text = str(arg)
        if any(c in text for c in "*?[") and not Path(text).exists():
            matched = list_models(text)
            if not matched:
                raise UserError(f"no model matches {text!r} in the zoo; run `edgecnn list` to see it "
                                f"(a MODEL is {MODEL_FORMS})")
            refs = [ModelRef("zoo", m, m) for m in matched]
        else:
            refs = [resolve_model(text, checkpoint=checkpoint, kinds=kinds)]
        found += [r for r in refs if r.label not in {f.label for f in found}]
    if not found:
        raise UserError(f"name at least one MODEL: {MODEL_FORMS}")
    return found


# ---------------------------------------------------------------- what an artifact's numbers belong to

def data_said(m: dict[str, Any]) -> str:
    """Which data an artifact's numbers (parity, test accuracy, calibration) come from, and how it was chosen."""
    data = WeightsData.from_record(m["model"]["weights"].get("dataset") or {})
    latency = "; LATENCY ONLY: INT8 calibrated on synthetic inputs, accuracy unknown" if m.get("latency_only") else ""
    return (data.said if data else "none known (parity on random inputs)") + latency


def weights_said(m: dict[str, Any]) -> str:
    """Which weights an artifact holds: where they came from and their SHA-256."""
    weights = m["model"]["weights"]
    sha = f" (sha256 {weights['sha256'][:16]})" if weights.get("sha256") else ""
    return " ".join(filter(None, (weights["source"], weights.get("path")))) + sha


def weights_line(m: dict[str, Any]) -> str:
    """Which weights and which data an artifact's numbers belong to, in one line."""
    return printable(f"weights: {weights_said(m)}; data: {data_said(m)}")


__all__ = ["Description", "KINDS", "MODEL_FORMS", "ModelRef", "WeightsData", "aligned_labels", "comparable_class_name",
           "config_from_sidecar", "data_said", "expand_models", "parse_classes", "parse_floats", "resolve_model",
           "weights_data", "weights_line", "weights_said", "with_data"]
