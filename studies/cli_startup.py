"""How long `edgecnn --help`, `edgecnn list` and `edgecnn info` take from a cold process, next to torch's import.

The bars: `--help` under 1 s, `list` under 2 s beyond `python -c "import torch"`. Each command runs in a
fresh process, in interleaved rounds (torch, --help, list, info, torch, …) so load hits all alike; the
median wall time and the median CPU time (user + sys of the child, steadier on a shared machine) of each
are recorded. Writes benchmarks/results/cli_startup.json.

    python studies/cli_startup.py [--rounds 5] [--edgecnn "python -m edgecnn"]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cli_startup.json"
BARS_S = {"help": 1.0, "list_beyond_torch": 2.0}


def _timed(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of argv in a fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--edgecnn", default=f"{sys.executable} -m edgecnn", help="how to start edgecnn")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    edgecnn = shlex.split(args.edgecnn)
    commands = {"import_torch": [sys.executable, "-c", "import torch"], "help": [*edgecnn, "--help"],
                "list": [*edgecnn, "list"], "info": [*edgecnn, "info", "resnet50"]}
    load_before = os.getloadavg()[0]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, argv in commands.items():
            times[name].append(_timed(argv))
    medians = {name: {"wall_s": round(statistics.median(w for w, _ in runs), 3),
                      "cpu_s": round(statistics.median(c for _, c in runs), 3)} for name, runs in times.items()}
    beyond = {kind: round(medians["list"][kind] - medians["import_torch"][kind], 3) for kind in ("wall_s", "cpu_s")}
    result = {"benchmark": "cli_startup", "commands": {n: shlex.join(a) for n, a in commands.items()},
              "rounds": args.rounds, "median": medians, "list_beyond_torch": beyond, "bars_s": BARS_S,
              "within_bars": medians["help"]["wall_s"] < BARS_S["help"]
              and beyond["wall_s"] < BARS_S["list_beyond_torch"],
              "cpu_count": os.cpu_count(), "load_average_1m_before": round(load_before, 2),
              "load_average_1m_after": round(os.getloadavg()[0], 2),
              "measured_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "note": "fresh process per run, interleaved rounds, medians. On a shared machine wall time "
                      "follows the load; CPU time (user + sys) is the steadier figure."}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(" · ".join(f"{n} {m['wall_s']:.2f} s ({m['cpu_s']:.2f} s CPU)" for n, m in medians.items())
          + f" · list beyond torch {beyond['wall_s']:.2f} s → {args.out}")
    return 0 if result["within_bars"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
