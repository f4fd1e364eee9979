#!/usr/bin/env python3
"""Time this bundle's model on this device and write the result in edgecnn's benchmark results schema.

    python3 bench.py [--iters 200] [--warmup 20] [--rounds 5] [--batch N] [--threads N] [--power] [--out FILE]

Warm-up, then timed calls in rounds; p50/p90/p99, throughput; on a Jetson the power mode (nvpmodel -q) and
the clock state (jetson_clocks --show), and with --power the board's input power sampled by tegrastats
(energy per inference). The JSON merges into `edgecnn report` with results from any other machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True

from pathlib import Path  # noqa: E402

try:
    import numpy as np

    import edgecnn_bundle as b
except ImportError as e:  # the bundle's requirements are not installed for this interpreter
    print(f"bench.py: error: {e.name} is not installed for {sys.executable}: pip install -r requirements.txt "
          "(./setup.sh says what else is missing)", file=sys.stderr)
    sys.exit(2)


def _command(args: list[str]) -> str | None:
    """A tool's output (first 2000 characters), or None where the tool is absent or refuses."""
    if not shutil.which(args[0]):
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout + done.stderr).strip()[:2000] or None


def jetson_state() -> dict:
    """Power mode and clock state of a Jetson; empty elsewhere."""
    if not Path("/etc/nv_tegra_release").is_file():
        return {}
    return {"l4t": Path("/etc/nv_tegra_release").read_text().splitlines()[0].strip("# "),
            "nvpmodel": _command(["nvpmodel", "-q"]),
            "jetson_clocks": _command(["jetson_clocks", "--show"]) or _command(["sudo", "-n", "jetson_clocks", "--show"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=b.positive, default=200, help="timed calls (default: 200)")
    p.add_argument("--warmup", type=b.positive, default=20, help="untimed calls first (default: 20)")
    p.add_argument("--rounds", type=b.positive, default=5, help="the timed calls are split into rounds (default: 5)")
    p.add_argument("--batch", type=b.positive, help="batch size (default: the graph's, 1 if dynamic)")
    p.add_argument("--threads", type=b.positive, help="CPU threads of the runtime (default: the runtime's)")
    p.add_argument("--backend", help="runtime (default: the bundle's; see run.py)")
    p.add_argument("--images", type=Path, metavar="IMAGE|FOLDER",
                   help="time on these images, preprocessed as run.py does (default: seeded noise; an early-exit "
                        "model's latency depends on its inputs, so give real ones)")
    p.add_argument("--power", action="store_true", help="Jetson: sample tegrastats for energy per inference")
    p.add_argument("--out", type=Path, help="results JSON (default: bench-HOST-TARGET-PRECISION.json here)")
    p.add_argument("--force", action="store_true", help="replace --out if it is an earlier results file")
    args = p.parse_args(argv)
    try:
        manifest = b.load_manifest()
        bundle = manifest["bundle"]
        out = args.out or Path(f"bench-{os.uname().nodename}-{bundle['target']}-{manifest['precision']}.json")
        if out.exists() and not (args.force and _is_results(out)):
            raise b.BundleError(f"{out} exists; pass --force to replace earlier results, or choose another --out"
                                if _is_results(out) else f"{out} exists and is not a results file; choose another --out")
        static = manifest["input"]["shape"][0]
        if isinstance(static, int) and args.batch not in (None, static):
            raise b.BundleError(f"this graph takes batch {static} only; drop --batch or deploy with another batch")
        batch = static if isinstance(static, int) else (args.batch or 1)
        if args.power and not shutil.which("tegrastats"):
            raise b.BundleError("--power samples tegrastats, which is not on this machine (Jetsons only)")
        backend = b.pick_backend(manifest, args.backend, lambda line: print(f"note: {line}", file=sys.stderr))
        rss_before = _rss_mb()
        t0 = time.perf_counter()
        model = b.Model(manifest, backend, args.threads)
        x = _inputs(manifest, batch, args.images)
        model.classify(x)
        load_s = time.perf_counter() - t0
        rss_delta = max(0.0, _rss_mb() - rss_before)
        b.timed(lambda: model.classify(x), args.warmup)
        sampler, log = _start_tegrastats() if args.power else (None, None)
        per_round = -(-args.iters // args.rounds)
        rounds = [b.timed(lambda: model.classify(x), per_round) for _ in range(args.rounds)]
        power_mw = _stop_tegrastats(sampler, log) if sampler else None
    except b.BundleError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 2
    times = [t for r in rounds for t in r]
    stats = b.latency_stats(times, batch)
    record = {
        "model": manifest["model"]["name"], "family": manifest["model"]["family"], "runtime": backend,
        "target": manifest["target"], "precision": manifest["precision"],
        "executed_precision": model.executed_precision(), "batch": batch, "threads": args.threads or os.cpu_count(),
        "flow": "edgecnn", "peer": None, "input_shape": manifest["input"]["shape"],
        "latency_ms": {k: v for k, v in stats.items() if k not in ("throughput", "iterations")},
        "throughput": stats["throughput"], "iterations": stats["iterations"], "rounds": len(rounds),
        **b.percent_spread(rounds),
        "memory": {"rss_delta_mb": round(rss_delta, 1), "process_peak_rss_mb": round(_peak_rss_mb(), 1)},
        "load_seconds": round(load_s, 3),
        "artifact": {"path": str(b.HERE), "reused": True, "bytes": sum(f["bytes"] for f in manifest["files"].values()),
                     "parity_passed": all(p["passed"] for p in manifest["parity"]) if manifest["parity"] else None},
        "weights": manifest["model"]["weights"].get("source"), "accuracy": None,
        "session": {"backend": backend, "bundle_target": bundle["target"], "version": model.stages[0].version(),
                    "threads": args.threads or "default", "stages": len(model.stages)},
        "deploy_bundle": {"target": bundle["target"], "created_utc": bundle["created_utc"]},
    }
    if len(model.stages) > 1:  # where the timed batch left the network
        exits = model.classify(x)[1]
        record["early_exit"] = {"thresholds": model.thresholds, "inputs": settings_inputs(args.images),
                                "exit_fractions": [round(float((exits == k).mean()), 4) for k in range(len(model.stages))]}
    if power_mw is not None:
        record["power"] = {"source": "tegrastats VDD_IN / POM_5V_IN (board input)", "mean_mw": round(power_mw, 1),
                           "energy_mj_per_inference": round(power_mw * stats["mean"] / 1e3 / batch, 4)}
    settings = {"iters": args.iters, "warmup": args.warmup, "rounds": args.rounds, "batch": batch,
                "threads": args.threads, "backend": backend, "power": args.power,
                "inputs": settings_inputs(args.images)}
    command = " ".join(shlex.quote(a) for a in ["bench.py", *(sys.argv[1:] if argv is None else argv)])
    document = b.results_document(record, command, settings, jetson_state())
    fd, tmp = tempfile.mkstemp(dir=out.absolute().parent, prefix=f".{out.name}.tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(document, f, indent=1)
        f.write("\n")
    os.replace(tmp, out)
    lat = record["latency_ms"]
    print(f"{record['model']} {backend} {record['precision']} batch {batch}: p50 {lat['p50']:.3f} ms, "
          f"p90 {lat['p90']:.3f}, p99 {lat['p99']:.3f}, {record['throughput']:.1f} samples/s"
          + (f", {record['power']['energy_mj_per_inference']:.2f} mJ/inference" if "power" in record else ""))
    print(f"wrote {out}")
    return 0


def settings_inputs(images: Path | None) -> str:
    return str(images) if images else "seeded standard-normal noise"


def _inputs(manifest: dict, batch: int, images: Path | None) -> np.ndarray:
    """One batch: the given images (repeated to fill it), preprocessed, or seeded standard-normal noise."""
    if images is None:
        return np.random.default_rng(0).standard_normal((batch, *manifest["input"]["shape"][1:])).astype(np.float32)
    pixels = [b.decode_image(path) for path in b.image_paths(images)[:batch]]
    x = np.stack([b.to_input(p, manifest["preprocessing"]) for p in pixels])
    return np.resize(x, (batch, *x.shape[1:]))


def _is_results(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("kind") == b.RESULTS_KIND
    except (OSError, ValueError, AttributeError):
        return False


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _start_tegrastats() -> tuple[subprocess.Popen, Path]:
    log = Path(tempfile.mkstemp(prefix="edgecnn-tegrastats-")[1])
    sampler = subprocess.Popen(["tegrastats", "--interval", "100"], stdout=open(log, "w"), stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return sampler, log


def _stop_tegrastats(sampler: subprocess.Popen, log: Path) -> float | None:
    sampler.terminate()
    sampler.wait(timeout=10)
    lines = log.read_text().splitlines()
    log.unlink()
    return b.tegrastats_power_mw(lines)


if __name__ == "__main__":
    sys.exit(main())
