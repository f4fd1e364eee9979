"""Passes are units: the Pipeline checks every pass that applies before any pass runs, and a pass's results go into
`ctx.records` under its name, where the manifest reads them."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgecnn.calibration import CalibrationOptions
from edgecnn.errors import UserError
from edgecnn.export.manifest import read_manifest
from edgecnn.export.pipeline import CheckParity, ExportContext, Pass, Pipeline, WriteTarget, export_registered
from edgecnn.export.quantize import Quantize

MODEL = "lenet5_fmnist"


class Records(Pass):
    """Says whether it ran."""
    name = "records"

    def __init__(self) -> None:
        self.ran = False

    def run(self, ctx: ExportContext) -> dict:
        self.ran = True
        return {}


class Refuses(Pass):
    name = "refuses"

    def check(self, ctx: ExportContext) -> None:
        raise UserError("refused before any work")

    def run(self, ctx: ExportContext) -> dict:
        raise AssertionError("a pass whose check refused must never run")


class RefusesElsewhere(Refuses):
    """Refuses, but has no work for this export: never checked."""

    def applies(self, ctx: ExportContext) -> bool:
        return False


def test_a_later_pass_check_refuses_before_any_pass_runs(tmp_path: Path) -> None:
    first = Records()
    with pytest.raises(UserError, match="refused before any work"):
        export_registered(MODEL, "onnx", "fp32", tmp_path / "art", pipeline=Pipeline([first, WriteTarget(), Refuses()]))
    assert not first.ran and list(tmp_path.iterdir()) == [], "nothing ran, nothing written"


def test_int8_refusals_are_the_quantize_pass_check(tmp_path: Path) -> None:
    first = Records()
    pipeline = Pipeline([first, WriteTarget(), Quantize()])
    with pytest.raises(UserError, match="calibrator 'entropy' does not exist for the openvino target"):
        export_registered(MODEL, "openvino", "int8", tmp_path / "art", pipeline=pipeline,
                          calibration=CalibrationOptions(calibrator="entropy"))
    assert not first.ran and list(tmp_path.iterdir()) == []


def test_a_pass_that_does_not_apply_is_not_checked_and_records_go_to_the_manifest(tmp_path: Path) -> None:
    first = Records()
    export_registered(MODEL, "onnx", "fp32", tmp_path / "art", parity_samples=4,
                      pipeline=Pipeline([first, WriteTarget(), CheckParity(), RefusesElsewhere()]))
    m = read_manifest(tmp_path / "art")
    assert first.ran and [p["name"] for p in m["passes"]] == ["records", "write_target", "check_parity"]
    assert [p["backend"] for p in m["parity"]] == ["onnxruntime"] and m["calibration"] is None
