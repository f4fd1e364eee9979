"""Checkpoints: safetensors weights + a JSON sidecar; never arbitrary pickles.

`NAME.safetensors` holds the state dict (committed weights in fp16 to stay small; loading casts
to the model's dtype). `NAME.json` says what it is: model name, config, epochs, accuracy, wall
time, torch version, the dataset (name, path, fingerprint, class names). Training state for
`--resume` (optimizer, scheduler, epoch) goes in a separate `*.state.safetensors` with its
non-tensor parts as JSON metadata.

`load_checkpoint` is the one door for weights: edgecnn's own files, timm's `.safetensors` and
torchvision-style `.pth` state dicts (read with `torch.load(weights_only=True)`: tensors only,
never code), all key-, shape- and dtype-checked against the model the same way.
"""
from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from edgecnn.atomic import atomic_write, probe_directory
from edgecnn.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).parent / "weights"
SIDECAR_SCHEMA = 1
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")  # torch.save files: read as tensors only


def sidecar_path(path: Path | str) -> Path:
    return Path(path).with_suffix(".json")


def _cannot_write(path: Path, e: OSError) -> CheckpointError:
    why = "the file system is read-only" if e.errno == errno.EROFS else (e.strerror or str(e))
    return CheckpointError(f"cannot write {path} ({why}); choose a writable --out")


def ensure_writable_dir(directory: Path) -> None:
    """Fail now, with one line, if files cannot be created in `directory` (or its nearest existing parent).

    Probing with a real temporary file catches read-only mounts that permission bits do not show.
    """
    existing = Path(directory).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"cannot write under {directory}: {existing} is a file, not a directory; "
                              "choose another --out")
    try:
        probe_directory(existing)
    except OSError as e:
        raise _cannot_write(Path(directory), e) from e


def _atomic_write(path: Path, content: Any) -> None:
    """Write through a temp file in the same directory, then rename: no half-written file survives."""
    atomic_write(path, content, error=lambda e: _cannot_write(path, e))


def save_checkpoint(model: nn.Module, path: Path | str, metadata: dict[str, Any],
                    dtype: torch.dtype = torch.float32) -> Path:
    """Save weights (floating tensors cast to `dtype`) and the sidecar describing them."""
    path = Path(path)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    sidecar = {"schema": SIDECAR_SCHEMA, "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""),
               **metadata}
    _atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"model": str(metadata.get("model", ""))}))
    _atomic_write(sidecar_path(path), json.dumps(sidecar, indent=2) + "\n")
    return path


def read_sidecar(path: Path | str) -> dict[str, Any]:
    """The sidecar of an edgecnn checkpoint; empty when there is none."""
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint sidecar {side} is not valid JSON ({e}); restore it or delete it") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint sidecar {side} is not a JSON object; restore it or delete it")
    return meta


def is_edgecnn_sidecar(path: Path | str) -> bool:
    """Whether `path` is a sidecar edgecnn wrote (so `--force` may replace it)."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("schema") == SIDECAR_SCHEMA and "model" in meta and "torch" in meta


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None


def is_edgecnn_checkpoint(path: Path | str) -> bool:
    """A safetensors checkpoint edgecnn saved: its header names the model and an edgecnn sidecar sits next to it."""
    meta = _safetensors_metadata(Path(path))
    return bool(meta and meta.get("model")) and is_edgecnn_sidecar(sidecar_path(path))


def is_edgecnn_training_state(path: Path | str) -> bool:
    meta = _safetensors_metadata(Path(path))
    return bool(meta and "state" in meta)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({e}); re-train or re-copy it") from e


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A torch.save'd state dict (plain, or under "state_dict"/"model"), unpickled as tensors only."""
    import pickle

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it reads fine
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "Unsupported" in line),
                      "objects other than tensors")
        raise CheckpointError(f"checkpoint {path} holds more than tensors ({detail}); edgecnn loads only tensors "
                              "from .pth files and never runs code from them") from e
    except Exception as e:  # noqa: BLE001 - any other failure of torch.load means a damaged file
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch.save file ({type(e).__name__}); "
                              "re-download or re-copy it") from e
    if isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()):
        obj = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v)
                                                       for k, v in obj.items()):
        raise CheckpointError(f"checkpoint {path} is not a state dict (a dict of tensors, possibly under "
                              "'state_dict' or 'model'); save one with torch.save(model.state_dict(), path)")
    return obj


def read_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: safetensors, or a torch.save file read with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return _read_torch_file(path)
    raise CheckpointError(f"checkpoint {path}: unknown format {path.suffix or '(no suffix)'}; use a "
                          f"{SAFETENSORS_SUFFIX} file or a torch state dict ({', '.join(TORCH_SUFFIXES)})")


def load_checkpoint(model: nn.Module, path: Path | str) -> dict[str, Any]:
    """Load weights strictly into `model`; return the sidecar metadata (empty if there is none)."""
    meta = read_sidecar(path)
    model_name = getattr(getattr(model, "config", None), "name", None)
    if meta.get("model") and model_name and meta["model"] != model_name:
        raise CheckpointError(f"checkpoint {path} was trained for {meta['model']!r}, not {model_name!r}")
    tensors = read_tensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit {model_name or type(model).__name__}: "
                              f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                              f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
    bad = [k for k in own if own[k].shape != tensors[k].shape]
    if bad:
        raise CheckpointError(f"checkpoint {path} does not fit: {bad[0]} is {tuple(tensors[bad[0]].shape)}, "
                              f"the model wants {tuple(own[bad[0]].shape)} ({len(bad)} mismatches)")
    wrong_kind = [k for k in own if own[k].is_floating_point() != tensors[k].is_floating_point()]
    if wrong_kind:
        k = wrong_kind[0]
        raise CheckpointError(f"checkpoint {path} does not fit: {k} is {str(tensors[k].dtype).replace('torch.', '')}, "
                              f"the model wants {str(own[k].dtype).replace('torch.', '')} ({len(wrong_kind)} "
                              "tensors of the wrong kind); the file was not saved from this model's weights")
    nonfinite = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise CheckpointError(f"checkpoint {path} has NaN/Inf values in {nonfinite[0]}; it is unusable")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)
    return meta


def committed_checkpoint(name: str) -> Path | None:
    """The Fashion-MNIST weights trained and committed with edgecnn for `name`, if any."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    return path if path.is_file() else None


# ---------------------------------------------------------------- training state for --resume

def save_training_state(path: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any, extra: dict[str, Any], rng: dict[str, torch.Tensor]) -> None:
    """Model, optimizer, scheduler and RNG state in one safetensors file: tensors flat, the rest as JSON."""
    tensors = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.contiguous()
    meta = {
        "param_groups": opt["param_groups"],
        "optim_scalars": {f"{pid}.{k}": v for pid, st in opt["state"].items() for k, v in st.items()
                          if not torch.is_tensor(v)},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **extra,
    }
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(meta)}))


def load_training_state(path: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore model/optimizer/scheduler in place; return (JSON metadata, RNG states)."""
    tensors = read_tensors(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["state"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not an edgecnn training state (no 'state' metadata)") from e
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"training state {path} does not fit this model: {str(e).splitlines()[0]}") from e
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta["optim_scalars"].items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    return meta, {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
