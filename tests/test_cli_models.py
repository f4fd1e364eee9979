"""`edgecnn list` / `edgecnn info`: the zoo as a user sees it."""
from __future__ import annotations

import pytest

import edgecnn
from edgecnn.cli import main


def test_list_filters_and_shows_counts(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "resnet*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["name", "family", "input", "params", "GMACs"]
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert set(rows) == set(edgecnn.list_models("resnet*"))
    assert rows["resnet50"][3] == "25,557,032" and rows["resnet50"][4] == "4.089"
    assert list(rows).index("resnet18") < list(rows).index("resnet101"), "natural sort order"


def test_list_no_match_exits_nonzero(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "nothing_like_this*"]) == 1
    assert "no model matches" in capsys.readouterr().out


def test_info_side_by_side(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "resnet18", "resnet18_fmnist"]) == 0
    out = capsys.readouterr().out
    assert "11,689,512 (torchvision" in out and "✓ equal" in out
    assert "1×28×28" in out and "3×224×224" in out


def test_info_unknown_model(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "resnet_18"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet_18'" in err and "resnet18" in err
