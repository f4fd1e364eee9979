"""One wording for bad numbers, in the Python API and as argparse types."""
from __future__ import annotations

import argparse
import math

import pytest

from edgecnn.errors import UserError
from edgecnn.validation import (arg_type, non_negative_float, non_negative_int, positive_float,
                                positive_int)


@pytest.mark.parametrize("value", [0, -1, -5, 2.5, 2.0, "2", "two", None, True])
def test_positive_int_refuses(value: object) -> None:
    with pytest.raises(UserError, match="batch_size must"):
        positive_int("batch_size", value)


def test_accepted_values_come_back() -> None:
    assert positive_int("threads", 3) == 3
    assert non_negative_int("seed", 0) == 0
    assert positive_float("lr", 1) == 1.0 and isinstance(positive_float("lr", 1), float)
    assert non_negative_float("max_drop", 0.0) == 0.0


@pytest.mark.parametrize("check,value", [(non_negative_int, -1), (positive_float, 0.0), (positive_float, -1e-3),
                                         (positive_float, math.nan), (positive_float, math.inf),
                                         (non_negative_float, -0.5), (non_negative_float, math.nan)])
def test_number_checks_refuse(check, value) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match="^--x must"):
        check("--x", value)


def test_argparse_type_says_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=arg_type(positive_int))
    parser.add_argument("--lr", type=arg_type(positive_float))
    assert parser.parse_args(["--epochs", "3", "--lr", "0.1"]).epochs == 3
    for argv, message in [(["--epochs", "0"], "must be at least 1, got 0"),
                          (["--epochs", "x"], "expected a whole number, got 'x'"),
                          (["--lr", "-1"], "must be greater than 0, got -1")]:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
