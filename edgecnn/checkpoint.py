"""Checkpoints: safetensors weights + a JSON sidecar; never pickle.

`NAME.safetensors` holds the state dict (committed weights in fp16 to stay small; loading casts
to the model's dtype). `NAME.json` says what it is: model name, config, epochs, accuracy, wall
time, torch version, data fingerprint. Training state for `--resume` (optimizer, scheduler,
epoch) goes in a separate `*.state.safetensors` with its non-tensor parts as JSON metadata.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from edgecnn.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).parent / "weights"
SIDECAR_SCHEMA = 1


def sidecar_path(path: Path | str) -> Path:
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temp file in the same directory, then rename: no half-written file survives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is as readable as any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: nn.Module, path: Path | str, metadata: dict[str, Any],
                    dtype: torch.dtype = torch.float32) -> Path:
    """Save weights (floating tensors cast to `dtype`) and the sidecar describing them."""
    path = Path(path)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    sidecar = {"schema": SIDECAR_SCHEMA, "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""),
               **metadata}
    _atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"model": str(metadata.get("model", ""))}))
    _atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2) + "\n"))
    return path


def read_sidecar(path: Path | str) -> dict[str, Any]:
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


def read_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({e}); re-train or re-copy it") from e


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
    from safetensors import safe_open

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
