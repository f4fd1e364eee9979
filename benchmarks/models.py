"""What `edgecnn bench` measures for each MODEL argument (`edgecnn.model_ref`): weights, data, artifacts, reference.

A `BenchModel` is one MODEL as the harness needs it: which weights (their SHA-256, said in every record), which
dataset accuracy is measured on (the weights' own; --data only when the user names it, and then the record says
what it replaced), the preprocessing of the accuracy images, the artifact of each (target, precision, batch) —
exported and cached for zoo names, checkpoints and ONNX files, used as it is for an artifact folder, never exported
again — and the FP32 reference its predictions are compared with (PyTorch for zoo models and checkpoints, the
source ONNX in ONNX Runtime for ONNX files, rebuilt from the manifest's record for an artifact when it can be).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecnn.errors import UserError
from edgecnn.export.backends import target_runtimes
from edgecnn.export.manifest import manifest_config
from edgecnn.model_ref import Description, ModelRef, WeightsData, config_from_sidecar, weights_data, with_data
from edgecnn.registry import ModelConfig, get_config

if TYPE_CHECKING:
    import torch.nn as nn

    from edgecnn.calibration import CalibrationOptions

# Which runtime runs which artifact target, from the backends ({"onnx": "onnxruntime", ...}).
TARGET_RUNTIMES = target_runtimes()


@dataclass
class BenchModel:
    """One MODEL argument, resolved for the harness (see the module doc)."""
    ref: ModelRef
    config: ModelConfig
    weights: dict[str, Any]              # source, path, sha256 (seed for a random init)
    data: WeightsData | None             # what accuracy is measured on
    description: Description = field(default_factory=Description)   # an ONNX file's, as stated
    manifest: dict[str, Any] | None = None                            # an artifact folder's
    _reference: list[Any] = field(default_factory=list)               # [the reference, or None], once loaded

    @property
    def label(self) -> str:
        return self.ref.label

    @property
    def latency_only(self) -> bool:
        return bool(self.manifest and self.manifest.get("latency_only"))

    def record_fields(self, measured: bool) -> dict[str, Any]:
        """What every record of this model says about its weights and data (`measured`: whether accuracy was)."""
        return {"weights_sha256": self.weights.get("sha256"), "architecture": self.config.name,
                "dataset": self.data.record() if measured and self.data else None, "latency_only": self.latency_only}

    # ------------------------------------------------------------------ which combinations it has

    def why_not(self, runtime: str, target: str | None, precision: str, batch: int) -> str | None:
        """Why this model has no configuration for (runtime, precision, batch); None when it has one."""
        if self.ref.kind == "onnx" and target is None:
            return ("an ONNX file has no PyTorch model: its FP32 reference is the file itself in ONNX Runtime "
                    "(each record's agreement is measured against it)")
        if self.manifest is None:
            return None
        m = self.manifest
        first = m["input"]["shape"][0]
        if TARGET_RUNTIMES.get(m["target"]) != runtime or m["precision"] != precision or \
                (isinstance(first, int) and first != batch):
            return (f"{self.label} is an artifact ({TARGET_RUNTIMES.get(m['target'], m['target'])} {m['precision']} "
                    f"at batch {first}), benched as it is and never exported again")
        return None

    # ------------------------------------------------------------------ artifacts

    def own_artifact(self, target: str, precision: str, batch: int) -> Path:
        """An artifact folder itself, for its own combination; one line for any other (it is never re-exported)."""
        why = self.why_not(TARGET_RUNTIMES.get(target, target), target, precision, batch)
        if why:
            raise UserError(why)
        return self.ref.path

    def cache_name(self, target: str, precision: str, batch: int,
                   calibration: CalibrationOptions | None = None) -> str:
        """The cache folder of one combination; INT8 calibrated other than by calibrator and sample count alone
        (--calib-data, --max-drop, --placement, --fallback) gets a folder of its own, tagged by those options."""
        precision = f"{precision}{_calibration_tag(calibration)}"
        if self.ref.kind == "zoo":
            return f"{self.ref.name}-{target}-{precision}-b{batch}"
        return f"{self.ref.name}-{self.weights['sha256'][:12]}-{target}-{precision}-b{batch}"

    def matches(self, manifest: dict[str, Any], target: str, precision: str, batch: int,
                calibration: CalibrationOptions | None) -> bool:
        """Whether a cached artifact is what an export now would be: weights, data, target, precision, input shape,
        the calibrator asked for, and the tools and edgecnn code that made it."""
        from edgecnn.export.passes import tool_versions

        weights = manifest["model"]["weights"]
        recorded = WeightsData.from_record(weights.get("dataset") or {})
        same_data = (recorded is None) == (self.data is None) and (self.data is None or self.data.same_as(recorded))
        return (manifest["target"] == target and manifest["precision"] == precision
                and manifest["input"]["shape"] == [batch, *self.config.input_size]
                and all(weights.get(k) == v for k, v in self.weights.items() if k in ("source", "sha256", "seed"))
                and same_data and manifest.get("tools") == tool_versions()
                and (calibration is None or _calibrated_as(manifest.get("calibration") or {}, calibration)))

    def export(self, target: str, precision: str, batch: int, path: Path,
               calibration: CalibrationOptions | None, data: str | None) -> None:
        """Export this model's artifact for one combination into `path` (replacing an earlier edgecnn one)."""
        from edgecnn.export.api import export

        if self.manifest is not None:
            raise UserError(f"{self.label} is an artifact, benched as it is and never exported again")
        described = self.description
        kwargs = {"mean": described.mean, "std": described.std, "classes": described.classes,
                  "input_size": described.input_size} if self.ref.kind == "onnx" else {}
        export(self.ref.path if self.ref.is_file else self.ref.name, target, precision, path, batch=batch,
               overwrite=path.exists(), calibration=calibration, fail_on_parity=False,
               data=described.data if self.ref.kind == "onnx" else data, **kwargs)

    # ------------------------------------------------------------------ the FP32 reference

    def reference_module(self) -> nn.Module | None:
        """The FP32 model the artifacts are compared with; None for an artifact whose source cannot be rebuilt."""
        if not self._reference:
            self._reference.append(self._load_reference())
        return self._reference[0]

    def _load_reference(self) -> nn.Module | None:
        from edgecnn.export.onnx_source import load_onnx_source
        from edgecnn.export.source import load_source_model, rebuild_source_model

        if self.ref.kind == "onnx":
            return load_onnx_source(self.ref.path, self.description)[0]
        if self.manifest is None:
            return load_source_model(self.ref.name, self.ref.path if self.ref.kind == "checkpoint" else None)[0]
        weights = self.manifest["model"]["weights"]
        try:
            if weights["source"] == "onnx":
                from edgecnn.export.manifest import sha256_file

                if sha256_file(weights["path"]) != weights["sha256"]:
                    return None
                described = Description(input_size=self.config.input_size, mean=self.config.mean,
                                        std=self.config.std, classes=self.config.class_names)
                return load_onnx_source(weights["path"], described)[0]
            return rebuild_source_model(self.manifest["model"])
        except (UserError, OSError):
            return None  # no reference: accuracy is still measured, its drop and agreement are not


def _calibration_tag(calibration: CalibrationOptions | None) -> str:
    """'' for the default recipe, else '.' and a short hash of the options that change what INT8 computes."""
    if calibration is None:
        return ""
    extra = {**{k: v for k, v in (("data", str(calibration.data) if calibration.data else None),
                                  ("synthetic", calibration.synthetic or None), ("max_drop", calibration.max_drop),
                                  ("quantizer", calibration.quantizer))
                if v is not None}, **calibration.float_choices}
    if not extra:
        return ""
    return "." + hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]


def _calibrated_as(record: dict[str, Any], calibration: CalibrationOptions) -> bool:
    """Whether an INT8 artifact's calibration record is what `calibration` asks for: calibrator and sample count."""
    return (record.get("requested") == calibration.calibrator
            and (record.get("calibration_samples") or {}).get("samples") == calibration.samples)


def bench_model(ref: ModelRef, data: str | None = None, data_root: str | None = None,
                description: Description | None = None) -> BenchModel:
    """`ref` as the harness measures it; `data` (--data, with --data-root) replaces the weights' own dataset."""
    from edgecnn.export.manifest import sha256_file

    description = description or Description()
    chosen = None if data is None else WeightsData.named(data, root=data_root)
    if ref.kind == "onnx":
        from edgecnn.export.onnx_source import load_onnx_source

        stated = replace(description, data=chosen.source if chosen else description.data)
        module, weights, _ = load_onnx_source(ref.path, stated)
        return BenchModel(ref, module.config, {k: weights[k] for k in ("source", "path", "sha256")},
                          weights_data(module.config, weights), stated, _reference=[module])
    if ref.kind == "artifact":
        from edgecnn.export.manifest import read_manifest

        manifest = read_manifest(ref.path)
        config = manifest_config(manifest)
        weights = manifest["model"]["weights"]
        own = weights_data(config, weights)
        return BenchModel(ref, config, {k: weights.get(k) for k in ("source", "path", "sha256")},
                          with_data(own, chosen), manifest=manifest)
    if ref.kind == "checkpoint":
        meta = ref.sidecar()
        config = config_from_sidecar(ref.name, meta)
        weights = {"source": "checkpoint", "path": str(Path(ref.path).absolute()), "sha256": sha256_file(ref.path)}
        return BenchModel(ref, config, weights, with_data(weights_data(config, {"dataset": meta.get("dataset")}),
                                                          chosen))
    from edgecnn.checkpoint import committed_checkpoint
    from edgecnn.export.source import DEFAULT_SEED

    config = get_config(ref.name)
    path = committed_checkpoint(ref.name)
    weights = {"source": "checkpoint", "path": str(path), "sha256": sha256_file(path)} if path else \
        {"source": "random_init", "seed": DEFAULT_SEED}
    return BenchModel(ref, config, weights, with_data(weights_data(config, {"committed": bool(path)}), chosen))


__all__ = ["BenchModel", "bench_model"]
