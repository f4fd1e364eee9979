"""`edgecnn.export(model, target, precision, out, ...)`: export whatever the user brings, in one call.

    import edgecnn
    edgecnn.export("resnet18_fmnist", "openvino", "int8", "art/r18")                 # a zoo name
    edgecnn.export("runs/lenet/lenet5_fmnist.safetensors", "onnx", "int8", "art/l")   # a checkpoint + sidecar
    edgecnn.export("my.onnx", "onnx", "int8", "art/mine", mean=0.5, std=0.5, classes="a,b,c", data="digits/")
    edgecnn.export(net, "onnx", "fp32", "art/net", input_size=(1, 28, 28), mean=0.5, std=0.5,
                   classes=["zero", "one"], data="digits/")                            # an nn.Module

`input_size`, `mean`, `std`, `classes` and `data` say what a checkpoint's sidecar would (`model_ref.Description`):
for an ONNX file or a module they describe the weights (`data` is the dataset they were trained on); a zoo name or a
checkpoint brings its own, so there `data` is another dataset to score and calibrate on (said and recorded) and
`input_size` (H, W) only resizes. Every other keyword goes to `export_model` (batch, calibration, ...). A failed
parity check raises `ParityError` (its `.result` is the written artifact); `fail_on_parity=False` returns it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from edgecnn.errors import UserError
from edgecnn.export.onnx_source import load_onnx_source
from edgecnn.export.pipeline import ExportResult, export_model, export_registered
from edgecnn.export.source import DEFAULT_SEED
from edgecnn.model_ref import Description, WeightsData, resolve_model
from edgecnn.registry import ModelConfig

EXPORT_KINDS = ("zoo", "checkpoint", "onnx")


def default_out(name: str, target: str, precision: str) -> Path:
    return Path("artifacts") / f"{name}-{target}-{precision}"


def export(model: nn.Module | str | Path, target: str = "onnx", precision: str = "fp32", out: Path | str | None = None,
           *, checkpoint: Path | str | None = None, input_size: Sequence[int] | None = None,
           mean: float | Sequence[float] | str | None = None, std: float | Sequence[float] | str | None = None,
           classes: Sequence[str] | str | Path | None = None, data: str | Path | None = None,
           seed: int | None = None, **options: Any) -> ExportResult:
    """Export a zoo name, a checkpoint file, an ONNX file or an nn.Module to one artifact directory (module doc)."""
    described = Description(input_size=tuple(input_size) if input_size is not None else None, mean=mean, std=std,
                            classes=classes)
    if seed is not None and (isinstance(model, nn.Module) or Path(str(model)).exists()):
        raise UserError("seed is the initialisation of a zoo model without weights; this model brings its own")
    if isinstance(model, nn.Module):
        model.config = module_config(model, described, data)
        stated = WeightsData.named(data, origin="stated") if data is not None else None
        weights = {"source": "in_memory", "dataset": stated.record() if stated else None}
        return export_model(model, target, precision, out or default_out(model.config.name, target, precision),
                            weights=weights, **options)
    ref = resolve_model(model, checkpoint=checkpoint, kinds=EXPORT_KINDS)
    out = out or default_out(ref.name, target, precision)
    if ref.kind == "onnx":
        source, weights, notes = load_onnx_source(ref.path, replace(described, data=data))
        source.export_notes = notes
        return export_model(source, target, precision, out, weights=weights, **options)
    stated = [k for k in ("mean", "std", "classes") if getattr(described, k) is not None]
    if stated:
        raise UserError(f"{', '.join(stated)} describe ONNX files and modules; {ref.label} brings its own "
                        "(the zoo's configuration or the checkpoint's sidecar)")
    if described.input_size is not None and len(described.input_size) != 2:
        raise UserError(f"input_size for {ref.label} is (height, width): its channels are the model's")
    return export_registered(ref.name, target, precision, out,
                             checkpoint=ref.path if ref.kind == "checkpoint" else ref.checkpoint,
                             input_size=described.input_size, data=data, seed=DEFAULT_SEED if seed is None else seed,
                             **options)


def module_config(model: nn.Module, described: Description, data: str | Path | None) -> ModelConfig:
    """The ModelConfig of a user's module: its own `.config` (a zoo model) with what was stated, or one built from
    the statement; one line saying what to add when the input size is unknown."""
    dataset = WeightsData.named(data).name if data is not None else None
    base = getattr(model, "config", None)
    if isinstance(base, ModelConfig):
        changes: dict[str, Any] = {k: v for k, v in (("mean", described.mean), ("std", described.std),
                                                      ("dataset", dataset)) if v is not None}
        if described.input_size is not None:
            size = described.input_size
            changes["input_size"] = size if len(size) == 3 else (base.input_size[0], *size)
        if described.classes is not None:
            if len(described.classes) != base.num_classes:
                raise UserError(f"{len(described.classes)} class names for a model with {base.num_classes} outputs")
            changes["class_names"] = described.classes
        return replace(base, **changes)
    if described.input_size is None or len(described.input_size) != 3:
        raise UserError(f"say what the {type(model).__name__} takes: input_size=(C, H, W), with mean=, std=, "
                        "classes= and data= (the dataset it was trained on) as you know them")
    size = described.input_size
    outputs = _output_count(model, size)
    if described.classes is not None and len(described.classes) != outputs:
        raise UserError(f"{len(described.classes)} class names for a module with {outputs} outputs")
    return ModelConfig(name=type(model).__name__.lower(), family="user", input_size=size, num_classes=outputs,
                       mean=described.mean or (0.0,) * size[0], std=described.std or (1.0,) * size[0],
                       dataset=dataset or "unknown", class_names=described.classes,
                       description=f"a user's {type(model).__name__}")


def _output_count(model: nn.Module, size: tuple[int, ...]) -> int:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(torch.zeros(1, *size))
    except RuntimeError as e:
        raise UserError(f"the {type(model).__name__} does not run on a 1×{'×'.join(map(str, size))} input "
                        f"({str(e).splitlines()[0]}); give the input_size it takes") from e
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise UserError(f"the {type(model).__name__} must return N×classes logits in eval mode")
    return int(logits.shape[1])


__all__ = ["default_out", "export", "module_config"]
