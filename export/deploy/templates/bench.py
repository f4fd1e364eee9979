#!/usr/bin/env python3
"""Time this bundle's model on this device and write the result in edgecnn's benchmark results schema.

    python3 bench.py [--iters 200] [--warmup 20] [--rounds 5] [--batch N] [--threads N] [--power] [--out FILE]

Warm-up, then timed calls in rounds; p50/p90/p99, throughput; on a Jetson the power mode (nvpmodel -q) and
the clock state (jetson_clocks --show), and with --power the board's input power sampled by tegrastats
(energy per inference). With --images a labelled folder (one sub-folder per class, named as the model's classes)
every image is scored too, and the record holds its top-1 accuracy, so `edgecnn pick` can answer from results
measured on the device. The JSON merges into `edgecnn report` with results from any other machine.
"""
import sys

# As run.py: this folder off sys.path before any other import, so nothing dropped into the bundle is imported.
if __name__ == "__main__" and not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
    del sys.path[0]
sys.dont_write_bytecode = True

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, Iterator, List, Optional  # noqa: E402

# run.py's start-up, by path: numpy and the bundle's code (edgecnn_bundle.py), or one line and exit 2
_spec = importlib.util.spec_from_file_location("run", Path(__file__).resolve().with_name("run.py"))
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)
b, np = run.b, run.np


def _command(args: List[str]) -> Optional[str]:
    """A tool's output (first 2000 characters), or None where the tool is absent or refuses."""
    if not shutil.which(args[0]):
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout + done.stderr).strip()[:2000] or None


def jetson_state() -> Dict[str, Any]:
    """Power mode and clock state of a Jetson; empty elsewhere."""
    if not Path("/etc/nv_tegra_release").is_file():
        return {}
    return {"l4t": Path("/etc/nv_tegra_release").read_text().splitlines()[0].strip("# "),
            "nvpmodel": _command(["nvpmodel", "-q"]),
            "jetson_clocks": _command(["jetson_clocks", "--show"]) or _command(["sudo", "-n", "jetson_clocks", "--show"])}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=b.positive, default=200, help="timed calls (default: 200)")
    p.add_argument("--warmup", type=b.positive, default=20, help="untimed calls first (default: 20)")
    p.add_argument("--rounds", type=b.positive, default=5, help="the timed calls are split into rounds (default: 5)")
    p.add_argument("--batch", type=b.positive, help="batch size (default: the graph's, 1 if dynamic)")
    p.add_argument("--threads", type=b.positive, help="CPU threads of the runtime (default: the runtime's)")
    p.add_argument("--backend", help="runtime (default: the bundle's; see run.py)")
    p.add_argument("--images", type=Path, metavar="IMAGE|FOLDER",
                   help="time on these images, preprocessed as run.py does (default: seeded noise; an early-exit "
                        "model's latency depends on its inputs, so give real ones); a labelled folder (one "
                        "sub-folder per class) is also scored, and its top-1 recorded")
    p.add_argument("--max-image-pixels", type=b.positive, default=b.DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                   help="refuse --images of more pixels, unread (decompression bombs; default: %(default)s)")
    p.add_argument("--power", action="store_true", help="Jetson: sample tegrastats for energy per inference")
    p.add_argument("--out", type=Path, help="results JSON (default: bench-HOST-TARGET-PRECISION.json here)")
    p.add_argument("--force", action="store_true", help="replace --out if it is an earlier results file")
    p.add_argument("--verify-key", type=Path, metavar="PUB.pem",
                   help="refuse the bundle unless manifest.json.sig is its signature by this Ed25519 public key")
    args = p.parse_args(argv)
    try:
        return _bench(args, " ".join(shlex.quote(a) for a in ["bench.py", *(sys.argv[1:] if argv is None else argv)]))
    except b.BundleError as e:
        print(f"bench.py: error: {b.printable(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return run.interrupted()


def _bench(args: argparse.Namespace, command: str) -> int:
    """Check everything, time the model, then write the results file in one step (nothing written otherwise)."""
    manifest = b.load_manifest(verify_key=args.verify_key)
    bundle = manifest["bundle"]
    out = args.out or Path(f"bench-{os.uname().nodename}-{bundle['target']}-{manifest['precision']}.json")
    _check_out(out, args.force)
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
    x = _inputs(manifest, batch, args.images, args.max_image_pixels)
    model.classify(x)
    load_s = time.perf_counter() - t0
    rss_delta = max(0.0, _rss_mb() - rss_before)
    accuracy = _accuracy(model, manifest, args.images, args.max_image_pixels)
    print(f"timing {manifest['model']['name']} on {backend}: {args.warmup} warm-up calls, then {args.iters} in "
          f"{args.rounds} rounds", file=sys.stderr)
    b.timed(lambda: model.classify(x), args.warmup)
    per_round = -(-args.iters // args.rounds)
    with _tegrastats(args.power) as power:
        rounds = [b.timed(lambda: model.classify(x), per_round) for _ in range(args.rounds)]
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
        "weights": manifest["model"]["weights"].get("source"), "accuracy": accuracy,
        **_provenance(manifest, accuracy),
        "session": {"backend": backend, "bundle_target": bundle["target"], "version": model.stages[0].version(),
                    "threads": args.threads or "default", "stages": len(model.stages)},
        "deploy_bundle": {"target": bundle["target"], "created_utc": bundle["created_utc"]},
    }
    if len(model.stages) > 1:  # where the timed batch left the network
        exits = model.classify(x)[1]
        record["early_exit"] = {"thresholds": model.thresholds, "form": model.form,
                                "inputs": settings_inputs(args.images),
                                "exit_fractions": [round(float((exits == k).mean()), 4) for k in range(len(model.stages))]}
    power_mw = power.get("mean_mw")
    if args.power and power_mw is None:
        print("warning: --power found none of the input-power rails this bundle knows in tegrastats' output "
              f"({', '.join(source.split(':')[0] for _, source in b.INPUT_POWER_RAILS)}); no power recorded",
              file=sys.stderr)
    if power_mw is not None:
        record["power"] = {"source": f"tegrastats {power['source']}", "mean_mw": round(power_mw, 1),
                           "energy_mj_per_inference": round(power_mw * stats["mean"] / 1e3 / batch, 4)}
    settings = {"iters": args.iters, "warmup": args.warmup, "rounds": args.rounds, "batch": batch,
                "threads": args.threads, "backend": backend, "power": args.power,
                "inputs": settings_inputs(args.images)}
    write_results(out, b.results_document(record, command, settings, jetson_state()))
    lat = record["latency_ms"]
    print(f"{record['model']} {backend} {record['precision']} batch {batch}: p50 {lat['p50']:.3f} ms, "
          f"p90 {lat['p90']:.3f}, p99 {lat['p99']:.3f}, {record['throughput']:.1f} samples/s"
          + (f", {record['power']['energy_mj_per_inference']:.2f} mJ/inference" if "power" in record else "")
          + (f", top-1 {accuracy['top1']:.2f}% ({accuracy['correct']}/{accuracy['samples']})" if accuracy else ""))
    print(f"wrote {out}")
    return 0


def _check_out(out: Path, force: bool) -> None:
    """Before any timing: --out goes into an existing folder, and replaces only an earlier results file."""
    if not out.absolute().parent.is_dir():
        raise b.BundleError(f"{out.parent} is not an existing folder, so --out {out} cannot be written: create it "
                            "or choose another --out")
    if os.path.lexists(out):
        if not _is_results(out):
            raise b.BundleError(f"{out} exists and is not a results file; choose another --out")
        if not force:
            raise b.BundleError(f"{out} exists; pass --force to replace earlier results, or choose another --out")


def write_results(out: Path, document: Dict[str, Any]) -> None:
    """`document` into `out` in one step: a temporary file beside it, renamed over it. On any failure (a full
    disk, Ctrl-C) the temporary file is removed and `out` is as it was."""
    try:
        fd, tmp = tempfile.mkstemp(dir=out.absolute().parent, prefix=f".{out.name}.tmp-")
    except OSError as e:
        raise b.BundleError(f"cannot write {out}: {e.strerror or e}; nothing was written: choose another "
                            "--out") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=1)
            f.write("\n")
        os.replace(tmp, out)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            raise b.BundleError(f"cannot write {out}: {e.strerror or e}; nothing was written: free some space or "
                                "choose another --out") from None
        raise


def _accuracy(model: Any, manifest: Dict[str, Any], images: Optional[Path], max_pixels: int) -> Optional[Dict[str, Any]]:
    """Top-1 on --images when it is a labelled folder (every image in a sub-folder named as a class); else None."""
    if images is None:
        return None
    paths = b.image_paths(images)
    labels = b.labelled_images(images, paths, manifest["class_names"])
    if labels is None:
        print(f"note: {b.printable(str(images))} is not a labelled folder (one sub-folder per class, named as the "
              "model's classes), so no accuracy is recorded", file=sys.stderr)
        return None
    print(f"scoring {len(paths)} labelled images", file=sys.stderr)
    logits, _ = b.classify_images(model, paths, manifest, max_pixels)
    return b.accuracy_record(logits.argmax(axis=1), labels, images, manifest)


def _provenance(manifest: Dict[str, Any], accuracy: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Which weights (their SHA-256) and which data the record's numbers belong to, as edgecnn's bench says."""
    digest = manifest["model"]["weights"].get("sha256")
    found: Dict[str, Any] = {"architecture": manifest["model"]["name"]}
    if isinstance(digest, str) and len(digest) == 64:
        found["weights_sha256"] = digest
    if accuracy is not None:
        found["dataset"] = {"name": accuracy["dataset"], "path": accuracy["path"], "origin": "bench.sh --images"}
    return found


def settings_inputs(images: Optional[Path]) -> str:
    return str(images) if images else "seeded standard-normal noise"


def _inputs(manifest: Dict[str, Any], batch: int, images: Optional[Path], max_pixels: int) -> "np.ndarray":
    """One batch: the given images (repeated to fill it), preprocessed, or seeded standard-normal noise."""
    if images is None:
        return np.random.default_rng(0).standard_normal((batch, *manifest["input"]["shape"][1:])).astype(np.float32)
    pixels = [b.decode_image(path, max_pixels) for path in b.image_paths(images)[:batch]]
    x = np.stack([b.to_input(p, manifest["preprocessing"]) for p in pixels])
    return np.resize(x, (batch, *x.shape[1:]))


def _is_results(path: Path) -> bool:
    try:
        document = b.read_json(path, "results file", "")
    except b.BundleError:
        return False
    return isinstance(document, dict) and document.get("kind") == b.RESULTS_KIND


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def _tegrastats(enabled: bool) -> Iterator[Dict[str, Optional[float]]]:
    """With `enabled`, tegrastats samples the board's input power while the block runs; the mean (mW) lands in the
    yielded dict. The sampler and its log are gone afterwards, whatever happened (Ctrl-C included)."""
    power: Dict[str, Optional[float]] = {}
    if not enabled:
        yield power
        return
    fd, name = tempfile.mkstemp(prefix="edgecnn-tegrastats-")
    log = Path(name)
    try:
        with os.fdopen(fd, "w") as sink:
            sampler = subprocess.Popen(["tegrastats", "--interval", "100"], stdout=sink, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            yield power
        finally:
            sampler.terminate()
            sampler.wait(timeout=10)
        power["mean_mw"], power["source"] = b.tegrastats_power(log.read_text().splitlines())
    finally:
        log.unlink()


if __name__ == "__main__":
    sys.exit(main())
