"""`edgecnn list` / `edgecnn info`: the zoo as a user sees it, and a command line that starts fast."""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

import edgecnn
from edgecnn.cli import COMMAND_MODULES, declared_commands, main
from edgecnn.cli.table import human_count


def test_list_filters_and_shows_counts(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "resnet*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["name", "family", "input", "params", "MACs"]
    rows = {line.split()[0]: line.split() for line in out[2:]}
    assert set(rows) == set(edgecnn.list_models("resnet*"))
    assert rows["resnet50"][3] == "25,557,032" and rows["resnet50"][4] == "4.09G"
    assert list(rows).index("resnet18") < list(rows).index("resnet101"), "natural sort order"


def test_list_prints_small_macs_in_units_that_fit(capsys: pytest.CaptureFixture) -> None:
    """LeNet-5 by hand: conv 6·28·28·25 + 16·10·10·150, fc 400·120 + 120·84 + 84·10 = 416,520 MACs."""
    assert main(["list", "lenet5_fmnist"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[4] == "416.52k"
    assert human_count(416_520) == "416.52k" and human_count(999) == "999" and human_count(1.82e9) == "1.82G"


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


def _modules_after(argv: list[str]) -> set[str]:
    code = ("import sys\nfrom edgecnn.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sys.modules), file=sys.stderr)" % (argv,))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(run.stderr.splitlines()[-1].split())


def test_help_imports_no_framework() -> None:
    """`edgecnn --help` lists every command without importing torch or any runtime (studies/cli_startup.py
    measures the time)."""
    loaded = _modules_after(["--help"])
    assert not loaded & {"torch", "onnx", "onnxruntime", "openvino", "numpy"}, loaded & {"torch", "onnx", "numpy"}


def test_list_imports_no_exporter_or_runtime() -> None:
    loaded = _modules_after(["list", "lenet5*"])
    assert "torch" in loaded and not loaded & {"onnx", "onnxruntime", "openvino", "edgecnn.export"}


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_declared_commands_match_what_register_adds(module: str) -> None:
    """The --help listing read from source must equal the commands the module really registers."""
    sub = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(module).register(sub)
    registered = [(a.dest, a.help) for a in sub._choices_actions]
    assert declared_commands(module) == registered, "if not plain add_parser calls, --help imports the module"


def test_every_command_still_parses_after_a_lazy_build(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    for module in COMMAND_MODULES:
        for name, _ in declared_commands(module) or []:
            assert f"    {name} " in listing
    with pytest.raises(SystemExit):
        main(["lisst"])
    assert "invalid choice: 'lisst'" in capsys.readouterr().err
