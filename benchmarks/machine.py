"""The machine a benchmark ran on: CPU model and the instruction sets that decide INT8/BF16 speed.

Results are only comparable on the same CPU, so every results file carries this record and
`pick` matches on it (`same_machine`).
"""
from __future__ import annotations

import os
import platform
from typing import Any

from edgecnn.export.pipeline import tool_versions

# Flags that change which precisions run fast: VNNI (INT8 dot products), BF16, AMX tiles, FP16.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
EXTRA_TOOLS = ("nncf", "numpy", "matplotlib")


def _cpuinfo() -> tuple[str, set[str], int]:
    """CPU model name, flags and physical core count from /proc/cpuinfo (Linux); fallbacks elsewhere."""
    model, flags, cores = platform.processor() or platform.machine(), set(), set()
    physical_id = "0"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "model name":
                    model = value
                elif key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "physical id":
                    physical_id = value
                elif key == "core id":
                    cores.add((physical_id, value))
    except OSError:
        pass
    return model, flags, len(cores) or (os.cpu_count() or 1)


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        return None


def machine_info() -> dict[str, Any]:
    cpu, flags, physical = _cpuinfo()
    logical = os.cpu_count() or 1
    return {"name": f"{cpu} ×{logical}", "cpu": cpu, "logical_cores": logical, "physical_cores": physical,
            "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS}, "memory_gb": _memory_gb(),
            "os": platform.platform(), "host": platform.node(), "arch": platform.machine(),
            "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same CPU model, core count and speed-deciding flags: what latency depends on (host names change, CPUs
    do not). Cloud VMs name every generation "AMD EPYC": only the flags tell an AVX2 host from a VNNI one."""
    return (a.get("cpu") == b.get("cpu") and a.get("logical_cores") == b.get("logical_cores")
            and a.get("cpu_flags") == b.get("cpu_flags"))


def flags_on(machine: dict[str, Any]) -> list[str]:
    """The speed-deciding CPU flags a machine record has, in CPU_FLAGS order."""
    return [f for f, on in (machine.get("cpu_flags") or {}).items() if on]


def describe(machine: dict[str, Any]) -> str:
    """The name plus the speed-deciding flags it has, so two "AMD EPYC ×2" hosts read apart."""
    flags = flags_on(machine)
    return f"{machine.get('name', '?')} ({', '.join(flags)})" if flags else machine.get("name", "?")


def all_tool_versions() -> dict[str, str | None]:
    return tool_versions(EXTRA_TOOLS)
