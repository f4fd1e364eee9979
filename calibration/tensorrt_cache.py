"""TensorRT calibration caches: the text file TensorRT's INT8 calibrators read, and its model stamp.

The format is the one `IInt8EntropyCalibrator2.write_calibration_cache` produces: a header line
`TRT-<version>-EntropyCalibration2`, then one `tensor: <hex>` line per activation, where hex is the
big-endian float32 bit pattern of the scale (amax / 127). TensorRT itself cannot tell which network
a cache was computed for, and a cache from another model builds silently wrong engines, so edgecnn
writes a stamp next to it (`<cache>.json`: the SHA-256 of the model file it belongs to) and refuses
a cache whose stamp does not match the model it is used with.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Mapping

from edgecnn.errors import UserError

CALIBRATOR = "EntropyCalibration2"
INT8_MAX = 127.0
STAMP_KIND = "edgecnn-tensorrt-calibration-cache"


def stamp_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def trt_version_tag(version: str) -> str:
    """TensorRT's numeric version in cache headers: 10.8.0 → 100800 (major·10000 + minor·100 + patch)."""
    parts = [int(p) for p in (version.split(".") + ["0", "0"])[:3]]
    return str(parts[0] * 10000 + parts[1] * 100 + parts[2])


def write_cache(cache: Path, amax: Mapping[str, float], model_sha256: str, trt_version: str) -> list[Path]:
    """Write the cache (scales = amax / 127) and its stamp; returns both paths."""
    lines = [f"TRT-{trt_version_tag(trt_version)}-{CALIBRATOR}"]
    for name, value in amax.items():
        if not math.isfinite(value) or value < 0:
            raise UserError(f"tensor {name!r} has amax {value}, which no INT8 scale can hold; the calibration "
                            "data is broken")
        scale = max(value, 1e-12) / INT8_MAX
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    cache.write_text("\n".join(lines) + "\n")
    stamp = stamp_path(cache)
    stamp.write_text(json.dumps({"kind": STAMP_KIND, "model_sha256": model_sha256, "tensorrt_version": trt_version,
                                 "calibrator": CALIBRATOR, "tensors": len(amax)}, indent=2) + "\n")
    return [cache, stamp]


def read_cache(cache: Path, model_sha256: str) -> dict[str, float]:
    """The scales of a cache made for the model whose SHA-256 is given; a stale or unstamped one is refused."""
    cache, stamp = Path(cache), stamp_path(Path(cache))
    if not cache.is_file():
        raise UserError(f"calibration cache {cache} does not exist")
    try:
        recorded = json.loads(stamp.read_text()).get("model_sha256")
    except (OSError, json.JSONDecodeError, AttributeError):
        raise UserError(f"calibration cache {cache} has no readable stamp ({stamp.name}), so nothing says which "
                        "model it belongs to: export the INT8 artifact again to recalibrate") from None
    if recorded != model_sha256:
        raise UserError(f"calibration cache {cache} is stale: it was made for the model with SHA-256 "
                        f"{str(recorded)[:12]}…, not this one ({model_sha256[:12]}…); an engine built from it would "
                        "be silently wrong. Export the INT8 artifact again to recalibrate")
    lines = cache.read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-") or not lines[0].endswith(CALIBRATOR):
        raise UserError(f"{cache} is not a TensorRT {CALIBRATOR} cache (header {lines[0] if lines else ''!r})")
    scales = {}
    for line in lines[1:]:
        name, _, hex_scale = line.rpartition(": ")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(hex_scale))[0]
        except ValueError:
            raise UserError(f"{cache}: line {line!r} is not 'tensor: hex(float32 scale)'") from None
    return scales
