"""The machine a benchmark ran on: CPU model and the instruction sets that decide INT8/BF16 speed.

Results are only comparable on the same CPU, so every results file carries this record and
`pick` matches on it (`same_machine`). The record is made by the deploy bundle's own code
(`edgecnn_bundle.machine_info`, which cannot import edgecnn), so a bundle's `bench.sh` and `edgecnn bench`
describe one machine identically.
"""
from __future__ import annotations

from typing import Any

from edgecnn.export.deploy import bundle_code
from edgecnn.export.passes import tool_versions

# Flags that change which precisions run fast: VNNI (INT8 dot products), BF16, AMX tiles, FP16 (x86); ASIMD dot
# products and FP16 arithmetic (ARM).
CPU_FLAGS: tuple[str, ...] = bundle_code().CPU_FLAGS
machine_info = bundle_code().machine_info
EXTRA_TOOLS = ("nncf", "numpy", "matplotlib")


def same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same CPU model, core count and speed-deciding flags: what latency depends on (host names change, CPUs
    do not). Cloud VMs name every generation "AMD EPYC": only the flags tell an AVX2 host from a VNNI one.
    A flag only one record lists (results written when CPU_FLAGS was shorter) is no difference."""
    flags_a, flags_b = a.get("cpu_flags") or {}, b.get("cpu_flags") or {}
    return (a.get("cpu") == b.get("cpu") and a.get("logical_cores") == b.get("logical_cores")
            and all(flags_a[flag] == flags_b[flag] for flag in flags_a.keys() & flags_b.keys()))


def flags_on(machine: dict[str, Any]) -> list[str]:
    """The speed-deciding CPU flags a machine record has, in CPU_FLAGS order."""
    return [f for f, on in (machine.get("cpu_flags") or {}).items() if on]


def describe(machine: dict[str, Any]) -> str:
    """The name plus the speed-deciding flags it has, so two "AMD EPYC ×2" hosts read apart."""
    flags = flags_on(machine)
    return f"{machine.get('name', '?')} ({', '.join(flags)})" if flags else machine.get("name", "?")


def all_tool_versions() -> dict[str, str | None]:
    return tool_versions(EXTRA_TOOLS)
