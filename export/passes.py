"""What every export pass shares: the context, the `Pass` base, the `Pipeline` that runs passes, and the manifest.

    pipeline = Pipeline([PrepareForTarget(), FoldBatchNorm(), WriteTarget(), CheckParity()])
    pipeline.run(ctx, out)       # check every pass, run them in a staging directory, write the manifest, rename
    pipeline.run_passes(ctx)     # check and run them in the directory ctx.staging names (an early-exit stage)

A pass checks, then works: the `Pipeline` calls `check(ctx)` on every pass that applies before any `run(ctx)`, so a
request a pass cannot honour is refused in one line before minutes of calibration. A pass's results for the manifest
or for later passes go into `ctx.records[pass.name]`; its summary, which `run` returns, into the manifest's `passes`.

This module imports no pass but `WriteTarget` (every pipeline writes the target's files, an early-exit stage's too),
so the passes' own modules (`quantize`, `early_exit`) import it, and `pipeline` puts the default passes together.
The manifest records the export's tools and host (`tool_versions`, `host_info`), which benchmarks compare.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

import edgecnn
from edgecnn.calibration import CalibrationOptions
from edgecnn.errors import UserError
from edgecnn.export.backends import recorded_tools
from edgecnn.export.graph_io import BATCH_DIM, INPUT_NAME, OUTPUT_NAME
from edgecnn.export.manifest import ARTIFACT_KIND, SCHEMA_VERSION, describe_files, preprocessing_record, write_manifest
from edgecnn.export.onnx_graph import DEFAULT_OPSET
from edgecnn.export.staging import staging_directory
from edgecnn.layers import count_params
from edgecnn.model_ref import WeightsData
from edgecnn.registry import ModelConfig

if TYPE_CHECKING:
    from edgecnn.export.quantize import Calibrated
    from edgecnn.export.targets import Target, TargetOutput

# What writes every graph (the exporter's tools); the manifest records these and every backend's (`Backend.tools`),
# torch first, then by name.
EXPORTER_TOOLS = ("torch", "onnx", "onnxscript")
TOOLS = tuple(sorted(set(EXPORTER_TOOLS) | set(recorded_tools()), key=lambda tool: (tool != "torch", tool)))
# The manifest's mark of an INT8 artifact calibrated on generated inputs (--calib-data synthetic).
LATENCY_ONLY = {"reason": "latency only: INT8 calibrated on synthetic inputs (--calib-data synthetic), so its accuracy "
                          "is unknown and parity's top-1 bar was not applied; measure latency with it, never accuracy",
                "accuracy": None}
# The passes whose records the manifest reads (`ExportContext.records`, by `Pass.name`): the quantize pass's
# `Calibrated` gives `calibration`, check_parity's list of checks `parity`, early_exit's section `early_exit`.
QUANTIZE_PASS, PARITY_PASS, EARLY_EXIT_PASS = "quantize_int8", "check_parity", "early_exit"


@dataclass
class ExportContext:
    """Everything the passes share: the model as it is transformed, the target, the options, and the records."""
    reference: nn.Module            # the eval-mode PyTorch model, never modified by folding
    config: ModelConfig
    target: Target
    precision: str
    staging: Path                   # the directory the passes write into
    input_size: tuple[int, int, int]
    batch: int = 1
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET
    exporter: str = "auto"
    keep_io_types: bool = True
    parity_samples: int | None = None  # None: the precision's default (parity.default_samples)
    weights: dict[str, Any] = field(default_factory=lambda: {"source": "in_memory"})
    module: nn.Module | None = None  # what gets exported; passes replace it
    output: TargetOutput | None = None  # what the target wrote (WriteTarget); later passes add to it
    passes: list[dict[str, Any]] = field(default_factory=list)   # the manifest's `passes`: each run's summary
    notes: list[str] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)         # what each pass recorded, by pass name
    calibration: CalibrationOptions | None = None   # INT8 only (None: the defaults)
    output_names: tuple[str, ...] = (OUTPUT_NAME,)   # of the graph the target writes
    exit_budget_pt: float | None = None               # early-exit accuracy budget; None: the pass's default
    early_exit_form: str = "auto"                     # graph, stages, or auto: the one measured faster
    data: WeightsData | None = None   # what parity, test accuracy, calibration and exit tuning use (model_ref)
    # What a long pass is doing now (the export bar's postfix; a no-op without a bar)
    status: Callable[[str], None] = field(default=lambda detail: None, repr=False)

    def __post_init__(self) -> None:
        if self.module is None:
            self.module = self.reference
        if self.precision == "int8" and self.calibration is None:
            self.calibration = CalibrationOptions()   # auto, 512 samples, no accuracy bound

    @property
    def example(self) -> torch.Tensor:
        return torch.randn(self.batch, *self.input_size, generator=torch.Generator().manual_seed(0))

    @property
    def input_name(self) -> str:
        return INPUT_NAME

    @property
    def input_shape(self) -> list[int | str]:
        return [BATCH_DIM if self.dynamic_batch else self.batch, *self.input_size]

    @property
    def size_hint(self) -> str:
        """Said after a conversion failure when the export runs below the model's own input size."""
        if all(ours >= own for ours, own in zip(self.input_size[1:], self.config.input_size[1:])):
            return ""
        return (f" (exported at {self.input_size[1]}×{self.input_size[2]}, below the model's "
                f"{self.config.input_size[1]}×{self.config.input_size[2]}: try a larger --input-size)")

    @property
    def io_dtype(self) -> str:
        return self.output.io_dtype if self.output else "float32"

    @property
    def latency_only(self) -> bool:
        """INT8 calibrated on synthetic inputs: the artifact answers latency questions only, its accuracy is unknown."""
        return self.calibration is not None and self.calibration.synthetic

    def manifest(self, started: float, hash_files: bool = True) -> dict[str, Any]:
        """The artifact's manifest as the passes have left it (`hash_files=False`: sizes only, for a pass that opens
        the staging directory as an artifact before it is finished)."""
        cfg, out = self.config, self.output
        files = describe_files(self.staging, out.files) if hash_files else \
            {name: {"bytes": (self.staging / name).stat().st_size, "sha256": ""} for name in out.files}
        calibrated: Calibrated | None = self.records.get(QUANTIZE_PASS)
        early_exit = self.records.get(EARLY_EXIT_PASS)
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": ARTIFACT_KIND,
            "model": {"name": cfg.name, "family": cfg.family, "description": cfg.description,
                      "dataset": self.data.name if self.data else cfg.dataset, "zoo_version": edgecnn.ZOO_VERSION,
                      "edgecnn_version": edgecnn.__version__, "num_classes": cfg.num_classes,
                      "in_chans": cfg.input_size[0], "params": count_params(self.reference),
                      "weights": self.weights},
            "target": self.target.name,
            "target_description": self.target.description,
            "precision": self.precision,
            "input": {"name": INPUT_NAME, "shape": self.input_shape, "dtype": self.io_dtype, "layout": "NCHW",
                      "dynamic_batch": self.dynamic_batch},
            "output": {"name": OUTPUT_NAME, "shape": [self.input_shape[0], cfg.num_classes],
                       "dtype": self.io_dtype, "meaning": "logits (no softmax)"},
            "preprocessing": preprocessing_record(cfg, self.input_size),
            "class_names": list(cfg.class_names) if cfg.class_names else None,
            "files": files,
            "model_files": out.model_files,
            "default_backend": out.default_backend,
            "calibration": calibrated.record if calibrated else None,
            "target_info": out.info,
            "passes": self.passes,
            "parity": self.records.get(PARITY_PASS, []),
            "tools": tool_versions(),
            "export": {"created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                       "seconds": round(time.perf_counter() - started, 2), **host_info()},
            "notes": self.notes,
            **({"early_exit": early_exit} if early_exit else {}),
            **({"latency_only": LATENCY_ONLY} if self.latency_only else {}),
        }


class Pass:
    """One step of the pipeline: `check` refuses what it cannot do before any pass works, `run` transforms `ctx`,
    records its results in `ctx.records[name]` and returns its summary for the manifest's `passes`."""
    name: str

    def applies(self, ctx: ExportContext) -> bool:
        """Whether this pass has work for this export (INT8 passes skip FP32 exports, and say nothing)."""
        return True

    def check(self, ctx: ExportContext) -> None:
        """Refuse, in one line, what this pass cannot do for `ctx`: called for every applicable pass before any
        runs, so it reads the request (precision, target, options), never what an earlier pass has made."""

    def run(self, ctx: ExportContext) -> dict[str, Any]:
        raise NotImplementedError


class WriteTarget(Pass):
    name = "write_target"

    def run(self, ctx: ExportContext) -> dict[str, Any]:
        ctx.output = ctx.target.write(ctx)
        ctx.notes.extend(ctx.output.notes)
        return {"target": ctx.target.name, "files": ctx.output.files}


class Pipeline:
    """An ordered list of passes run on one ExportContext: all checked first, then run in order."""

    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes = list(passes)

    def checked(self, ctx: ExportContext) -> list[Pass]:
        """The passes that apply to `ctx`, each checked: a refusal comes before any pass has done any work."""
        applicable = [p for p in self.passes if p.applies(ctx)]
        for p in applicable:
            p.check(ctx)
        return applicable

    def run_passes(self, ctx: ExportContext) -> None:
        """Check, then run, the passes in the directory `ctx.staging` names, which exists: no staging directory of
        its own, no manifest (an early-exit stage's pipeline, inside its parent's staging directory)."""
        for p in self.checked(ctx):
            _run_pass(p, ctx)

    def run(self, ctx: ExportContext, out: Path, overwrite: bool = False, progress: bool = False) -> Path:
        """Check the passes, run them in a staging directory, write the manifest there last and rename the
        directory to `out` in one step."""
        out = Path(out)
        passes = self.checked(ctx)
        started = time.perf_counter()
        with staging_directory(out, overwrite) as staging:
            ctx.staging = staging
            bar = tqdm(passes, desc="export", unit="pass", disable=not progress, leave=False, file=sys.stderr)
            for p in bar:
                bar.set_postfix_str(p.name)
                ctx.status = lambda detail, name=p.name: bar.set_postfix_str(f"{name}: {detail}")
                _run_pass(p, ctx)
            if ctx.output is None:
                raise UserError("the pipeline wrote no model files: it needs a WriteTarget pass")
            write_manifest(staging, ctx.manifest(started))
        return out


def _run_pass(p: Pass, ctx: ExportContext) -> None:
    t0 = time.perf_counter()
    summary = p.run(ctx)
    ctx.passes.append({"name": p.name, "seconds": round(time.perf_counter() - t0, 3), **summary})


@functools.cache
def edgecnn_source_digest() -> str:
    """SHA-256 (first 16 hex digits) of the code that decides what an artifact holds: the models, calibration and
    export packages. An editable install keeps one version number through every change, so caches compare this."""
    import edgecnn.calibration

    digest = hashlib.sha256()
    for package in (Path(edgecnn.__file__).parent, Path(edgecnn.calibration.__file__).parent, Path(__file__).parent):
        for path in sorted(package.rglob("*.py")):
            digest.update(f"{package.name}/{path.relative_to(package)}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def tool_versions(extra: Sequence[str] = ()) -> dict[str, str | None]:
    """Installed versions of the export's tools (and `extra` packages); None where one is not installed."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "edgecnn": edgecnn.__version__,
                                       "edgecnn_source": edgecnn_source_digest()}
    for tool in (*TOOLS, *extra):
        try:
            versions[tool] = importlib.metadata.version(tool)
        except importlib.metadata.PackageNotFoundError:
            versions[tool] = None
    return versions


def host_info() -> dict[str, Any]:
    """The machine an export or benchmark ran on, by name and CPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


__all__ = ["EARLY_EXIT_PASS", "ExportContext", "LATENCY_ONLY", "PARITY_PASS", "Pass", "Pipeline", "QUANTIZE_PASS",
           "TOOLS", "WriteTarget", "edgecnn_source_digest", "host_info", "tool_versions"]
