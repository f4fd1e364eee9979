"""`edgecnn bench --resume`: whether an earlier results file may be continued, and whether the records it keeps
still describe the artifacts on disk.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecnn.benchmarks.machine import describe, machine_info, same_machine
from edgecnn.benchmarks.schema import config_name, read_results
from edgecnn.errors import UserError

if TYPE_CHECKING:
    from edgecnn.benchmarks.settings import SweepSettings


def resumable(out: Path, settings: SweepSettings) -> dict[str, Any]:
    """The earlier results in `out`, if this run may continue them: not edited since edgecnn wrote them (their
    digest), same settings (the model list may grow) and the same machine; otherwise one line saying what
    differs. The records kept are re-verified against their artifacts (`verify_kept`)."""
    earlier = read_results(out, verify_digest=True)
    if not same_machine(earlier["machine"], machine_info()):
        raise UserError(f"{out} was measured on {describe(earlier['machine'])}, not this machine; --resume only "
                        "continues a run on the machine that started it (choose another --out)")
    now = settings.to_dict()
    differ = [k for k, v in earlier["settings"].items() if k != "models" and now.get(k) != v]
    if differ:
        listed = ", ".join(f"{k} {earlier['settings'][k]!r} → {now.get(k)!r}" for k in differ)
        raise UserError(f"{out} was measured with other settings ({listed}); --resume continues only the same "
                        "sweep: repeat its command (see the file's 'command') or choose another --out")
    return earlier


def verify_kept(out: Path, records: list[dict[str, Any]]) -> None:
    """Each kept record's artifact must still be there, intact (its files' hashes), and the very export it
    timed (its manifest_sha256): a record is kept as measured only while it describes what is on disk."""
    from edgecnn.export.manifest import DIGEST_FIELD, ArtifactError, read_manifest

    again = "drop --resume and pass --force to measure again"
    digests: dict[str, str] = {}
    for r in records:
        path, label = r["artifact"]["path"], f"{r['model']} {config_name(r)} b{r['batch']} t{r['threads']}"
        if path not in digests:
            try:
                digests[path] = read_manifest(path)[DIGEST_FIELD]
            except ArtifactError as e:
                raise UserError(f"{out}: the artifact {label} was timed on no longer verifies ({e}); "
                                f"its record cannot be kept: {again}") from e
        if digests[path] != r["artifact"].get("manifest_sha256"):
            raise UserError(f"{out}: {path} is not the export {label} was timed on (exported again "
                            f"since); its record cannot be kept: {again}")


__all__ = ["resumable", "verify_kept"]
