"""Every command's --help: it exits 0, every option has text, and each default is said once."""
from __future__ import annotations

import re

import pytest

from edgecnn.cli import COMMAND_MODULES, declared_commands, main

COMMANDS = [name for module in COMMAND_MODULES for name, _ in declared_commands(module) or []]


def test_every_command_is_listed() -> None:
    assert {"list", "info", "train", "eval", "export", "inspect", "bench", "report", "pick", "deploy"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_says_each_default_once(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text
    assert not re.search(r"default: [^()]*\) \(default", text), text
    assert f"usage: edgecnn {command}" in text
