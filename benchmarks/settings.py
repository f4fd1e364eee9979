"""What a sweep measures: the runtimes, each running one export target's artifacts, and `SweepSettings`.

    from edgecnn.benchmarks.settings import SweepSettings
    settings = SweepSettings(models=["resnet18_fmnist"], runtimes=["onnxruntime", "openvino"]).validated()

Runtimes run the artifacts of one export target each (`RUNTIMES`); which precisions a runtime can do comes from its
target's registry entry, so a precision a target gains is benchmarked without touching the harness, and a
combination it lacks is listed as skipped with the reason (`Runtime.precision_missing`, `calibration_missing`).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from edgecnn.benchmarks.peers import DEFAULT_CALIBRATION_SAMPLES
from edgecnn.errors import UserError
from edgecnn.export.backends import BACKENDS
from edgecnn.validation import non_negative_float, positive_float, positive_int

if TYPE_CHECKING:
    from edgecnn.calibration import CalibrationOptions
    from edgecnn.model_ref import Description

DEFAULT_CACHE = Path("artifacts/bench")
DEFAULT_ROUNDS = 5
CALIBRATED_PRECISION = "int8"  # the precision whose exports calibrate on data (edgecnn.export's quantize pass)


@dataclass(frozen=True)
class Runtime:
    """A runtime backend and the export target whose artifacts it runs (None: the PyTorch reference)."""
    name: str
    target: str | None
    unavailable: Callable[[], str | None]

    @property
    def precisions(self) -> tuple[str, ...]:
        from edgecnn.export.targets import TARGETS

        return TARGETS[self.target].precisions if self.target else ("fp32",)

    def precision_missing(self, precision: str) -> str | None:
        if precision in self.precisions:
            return None
        if self.target is None:
            return "torch is the eager FP32 reference; it runs fp32 only"
        return f"the {self.target} target exports {', '.join(self.precisions)}, not {precision}"

    def calibration_missing(self, precision: str, calibration: CalibrationOptions) -> str | None:
        """Why this runtime's target cannot calibrate `precision` as asked (a calibrator its quantizer lacks)."""
        if precision != CALIBRATED_PRECISION or self.target is None:
            return None
        from edgecnn.export.quantize import check_int8

        try:
            check_int8(self.target, calibration)
        except UserError as e:
            return str(e)
        return None


# One per backend (`edgecnn.export.backends`), the eager reference first.
RUNTIMES: dict[str, Runtime] = {b.name: Runtime(b.name, b.target_name, b.unavailable) for b in BACKENDS.values()}
# The torch reference rebuilds the model from the weight record of this target's FP32 artifact.
REFERENCE_TARGET = "onnx"


def all_precisions() -> list[str]:
    """Every precision some runtime can run, fp32 first (the reference every other is compared with)."""
    found = {p for r in RUNTIMES.values() for p in r.precisions}
    return ["fp32"] + sorted(found - {"fp32"})


@dataclass
class SweepSettings:
    models: Sequence[str]                      # names or shell patterns ('*_fmnist')
    runtimes: Sequence[str] = tuple(RUNTIMES)
    precisions: Sequence[str] | None = None    # None: every precision some target exports
    batches: Sequence[int] = (1,)
    threads: Sequence[int] | None = None       # None: one setting, all logical cores
    warmup_s: float = 2.0
    duration_s: float | None = 10.0            # timed seconds per configuration, split over the rounds
    iters: int | None = None                   # or timed calls per configuration (replaces duration_s)
    rounds: int = DEFAULT_ROUNDS
    peers: bool = False
    data: str | None = None                    # accuracy dataset; default: the weights' own (model_ref.WeightsData)
    data_root: str | None = None
    mean: str | None = None                    # ONNX files without metadata_props: as `edgecnn export --mean`
    std: str | None = None
    classes: str | None = None
    accuracy_samples: int | None = None        # None: the whole test split
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    calibrator: str = "auto"                   # INT8 exports' calibrator (edgecnn.calibration.CALIBRATOR_NAMES)
    calib_samples: int | None = None           # INT8 exports' calibration images (None: `edgecnn export`'s default)
    calib_data: str | None = None              # INT8 exports: as `edgecnn export --calib-data` (a folder or synthetic)
    max_drop: float | None = None              # ... --max-drop, --placement, --fallback
    placement: str | None = None
    fallback: str | None = None
    quantizer: str | None = None               # INT8 exports: as `edgecnn export --quantizer` (None: each target's own)
    cache_dir: Path = DEFAULT_CACHE

    def validated(self) -> SweepSettings:
        """The settings with patterns expanded and every name and number checked (one UserError each)."""
        from edgecnn.model_ref import expand_models

        models = [ref.label for ref in expand_models(self.models)]
        self.description()  # --mean, --std, --classes that do not parse: one line
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown or not self.runtimes:
            raise UserError(f"unknown runtime {', '.join(map(repr, unknown)) or '(none given)'} in --runtimes; "
                            f"choose from {', '.join(RUNTIMES)}")
        precisions = list(self.precisions) if self.precisions else all_precisions()
        bad = [p for p in precisions if p not in all_precisions()]
        if bad:
            raise UserError(f"unknown precision {', '.join(map(repr, bad))}; the targets here export "
                            f"{', '.join(all_precisions())}")
        if self.iters is not None and self.duration_s is not None:
            raise UserError("give --duration-s or --iters, not both")
        if self.iters is None and self.duration_s is None:
            raise UserError("give --duration-s or --iters: how long to time each configuration")
        self.calibration_options()  # an unknown calibrator: one line naming the known ones
        return replace(
            self, models=models, runtimes=list(dict.fromkeys(self.runtimes)),
            precisions=list(dict.fromkeys(precisions)),
            batches=sorted({positive_int("--batch", b) for b in self.batches}, reverse=True),
            threads=sorted({positive_int("--threads", t) for t in (self.threads or [os.cpu_count() or 1])}),
            warmup_s=non_negative_float("--warmup-s", self.warmup_s),
            duration_s=None if self.duration_s is None else positive_float("--duration-s", self.duration_s),
            iters=None if self.iters is None else positive_int("--iters", self.iters),
            rounds=positive_int("--rounds", self.rounds),
            accuracy_samples=None if self.accuracy_samples is None
            else positive_int("--accuracy-samples", self.accuracy_samples),
            calibration_samples=positive_int("--calibration-samples", self.calibration_samples),
            cache_dir=Path(self.cache_dir))

    def calibration_options(self) -> CalibrationOptions:
        """What INT8 exports calibrate with: the same options object `edgecnn export --calibrator` builds."""
        from edgecnn.calibration import CalibrationOptions

        from edgecnn.calibration import SYNTHETIC

        given = {k: v for k, v in (("samples", self.calib_samples), ("max_drop", self.max_drop),
                                   ("placement", self.placement), ("fallback", self.fallback),
                                   ("quantizer", self.quantizer)) if v is not None}
        if self.calib_data == SYNTHETIC:
            given["synthetic"] = True
        elif self.calib_data is not None:
            given["data"] = self.calib_data
        return CalibrationOptions(calibrator=self.calibrator, **given)

    def description(self) -> Description:
        """What ONNX files without metadata_props are said to take (--mean, --std, --classes)."""
        from edgecnn.model_ref import Description

        return Description(mean=self.mean, std=self.std, classes=self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


__all__ = ["CALIBRATED_PRECISION", "DEFAULT_CACHE", "DEFAULT_ROUNDS", "REFERENCE_TARGET", "RUNTIMES", "Runtime",
           "SweepSettings", "all_precisions"]
