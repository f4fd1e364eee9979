"""Numbers users give, checked once with one wording for the CLI and the Python API.

The Python API calls `positive_int("batch_size", value)` and friends; the CLI uses the same checks
as argparse types (`arg_type(positive_int)`), so `--batch-size 0` and `train(batch_size=0)` say the
same thing. Zero and negatives are errors, never "use the default"; `None` means the default and is
handled by the caller before it gets here.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable, Sequence

from edgecnn.errors import UserError


def _flag(name: str) -> str:
    return name if name.startswith("--") else name.replace("-", "_")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole_number(name: str, value: Any, minimum: int, bound: str) -> int:
    if not _is_int(value):
        raise UserError(f"{_flag(name)} must be a whole number, got {value!r}")
    if value < minimum:
        raise UserError(f"{_flag(name)} must be {bound}, got {value}")
    return value


def positive_int(name: str, value: Any) -> int:
    """An int ≥ 1 (bools and floats such as 2.5 or 2.0 are refused: they are always a mistake)."""
    return _whole_number(name, value, 1, "at least 1")


def non_negative_int(name: str, value: Any) -> int:
    """An int ≥ 0 (seeds, indices)."""
    return _whole_number(name, value, 0, "0 or more")


def positive_float(name: str, value: Any) -> float:
    """A finite number > 0 (learning rates, durations, budgets)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UserError(f"{_flag(name)} must be a finite number, got {value!r}")
    if value <= 0:
        raise UserError(f"{_flag(name)} must be greater than 0, got {value:g}")
    return float(value)


def non_negative_float(name: str, value: Any) -> float:
    """A finite number ≥ 0 (accuracy drops, tolerances)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UserError(f"{_flag(name)} must be a finite number, got {value!r}")
    if value < 0:
        raise UserError(f"{_flag(name)} must be 0 or more, got {value:g}")
    return float(value)


def arg_type(check: Callable[[str, Any], Any], name: str = "value") -> Callable[[str], Any]:
    """An argparse `type=` that parses the text and applies `check`, reporting argparse's way (exit 2)."""
    as_float = check in (positive_float, non_negative_float)

    def parse(text: str) -> Any:
        try:
            value = float(text) if as_float else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'number' if as_float else 'whole number'}, "
                                             f"got {text!r}") from None
        try:
            return check(name, value)
        except UserError as e:
            # argparse prefixes "argument --flag:", so drop the flag name from the message
            raise argparse.ArgumentTypeError(str(e).split(" ", 1)[1]) from None

    parse.__name__ = check.__name__.replace("_", " ")  # argparse names the type in its messages
    return parse


def check_thresholds(thresholds: Sequence[float], num_exits: int) -> list[float]:
    """The thresholds as floats, or a UserError: N exits take N-1 finite, non-negative thresholds."""
    try:
        values = [float(t) for t in thresholds]
    except (TypeError, ValueError) as e:
        raise UserError(f"thresholds must be a list of numbers, got {thresholds!r}") from e
    if len(values) != num_exits - 1:
        raise UserError(f"{num_exits} exits take {num_exits - 1} entropy threshold(s) (the final exit takes "
                        f"every sample left), got {len(values)}: {values}")
    for k, t in enumerate(values):
        if not math.isfinite(t) or t < 0:
            raise UserError(f"threshold {k} is {t}; an entropy threshold is a finite number ≥ 0 (nats; 0 sends "
                            "every sample on, ln(classes) lets almost every sample out)")
    return values


__all__ = ["arg_type", "check_thresholds", "non_negative_float", "non_negative_int", "positive_float", "positive_int"]
