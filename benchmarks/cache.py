"""The artifact cache: one static-batch artifact per model × target × precision × batch under `--cache`, exported by
`edgecnn.export` and reused while its manifest matches (`BenchModel.matches`); what sits there and is not edgecnn's
is never overwritten. The peers' artifacts are kept there too (`peers.peer_artifact`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecnn.benchmarks.models import BenchModel, bench_model
from edgecnn.errors import UserError

if TYPE_CHECKING:
    from edgecnn.calibration import CalibrationOptions


def cached_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of an edgecnn artifact at `path` (None if it is corrupt, so it may be rebuilt);
    a UserError if something that is not edgecnn's sits there."""
    from edgecnn.export.manifest import ARTIFACT_KIND, MANIFEST_NAME, ArtifactError, read_manifest

    try:
        return read_manifest(path)
    except ArtifactError:
        try:
            ours = json.loads((path / MANIFEST_NAME).read_text()).get("kind") == ARTIFACT_KIND
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise UserError(f"{path} exists and is not an edgecnn artifact; move it or choose another --cache "
                            "(edgecnn never overwrites what it did not write)") from None
        return None


def ensure_artifact(model: str | BenchModel, target: str, precision: str, batch: int, cache_dir: Path,
                    calibration: CalibrationOptions | None = None, data: str | None = None) -> tuple[Path, bool]:
    """(path, reused): the artifact for this combination — an artifact folder itself, else exported unless a
    matching one is cached; `calibration` (INT8 only) is how the export calibrates, and part of the match; `data`
    (--data) replaces the weights' own dataset. `model` is a BenchModel or a MODEL argument."""
    from edgecnn.model_ref import resolve_model

    bench = model if isinstance(model, BenchModel) else bench_model(resolve_model(model), data)
    if bench.manifest is not None:
        return bench.own_artifact(target, precision, batch), True
    path = Path(cache_dir) / bench.cache_name(target, precision, batch, calibration)
    if path.exists():
        manifest = cached_manifest(path)
        if manifest is not None and bench.matches(manifest, target, precision, batch, calibration):
            return path, True
    bench.export(target, precision, batch, path, calibration, data)
    return path, False


__all__ = ["cached_manifest", "ensure_artifact"]
