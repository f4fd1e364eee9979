"""Staging folders: edgecnn removes only the ones it marked as its own (a process that is gone, not one whose PID
was reused), never a user's look-alike; `report --force` replaces only the files the earlier report recorded."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgecnn.benchmarks import report as report_module
from edgecnn.benchmarks.report import write_report
from edgecnn.cli import main
from edgecnn.errors import UserError
from edgecnn.export import read_manifest
from edgecnn.export.manifest import ARTIFACT_KIND, MANIFEST_NAME, ArtifactError
from edgecnn.export.staging import STAGING_MARKER, _identity, staging_directory
from tests.test_report import SMALL, _tiny

MODEL = "lenet5_fmnist"


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def _fake_artifact(path: Path) -> Path:
    """The least `--force` accepts as edgecnn's own artifact: a manifest of its kind naming every file."""
    path.mkdir()
    (path / MANIFEST_NAME).write_text(json.dumps({"kind": ARTIFACT_KIND, "files": {}}))
    return path


def _staging_with_marker(parent: Path, name: str, identity: dict) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"half")
    (folder / STAGING_MARKER).write_text(json.dumps(identity))
    return folder


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


# ---------------------------------------------------------------- exports (point 1)

def test_export_leaves_a_users_staging_lookalikes_alone(tmp_path: Path) -> None:
    """The issue's example: folders named like staging folders, with a number that is no live PID."""
    d = tmp_path / "d"
    (d / ".myart.old-2019-05-backup").mkdir(parents=True)
    (d / ".myart.tmp-1999-draft").mkdir()
    (d / ".myart.old-2019-05-backup" / "p.txt").write_text("precious\n")
    assert main(["export", MODEL, "--target", "onnx", "--out", str(d / "myart"), "--parity-samples", "4",
                 "--no-progress"]) == 0
    assert (d / ".myart.old-2019-05-backup" / "p.txt").read_text() == "precious\n"
    assert (d / ".myart.tmp-1999-draft").is_dir()
    assert read_manifest(d / "myart")
    assert STAGING_MARKER not in os.listdir(d / "myart"), "the marker is not part of the artifact"


def test_marked_staging_is_removed_only_when_its_process_is_gone(tmp_path: Path) -> None:
    me = _identity(os.getpid())
    gone = _dead_pid()
    dead = _staging_with_marker(tmp_path, f".art.tmp-{gone}-abcd", _identity(gone))
    live = _staging_with_marker(tmp_path, f".art.tmp-{os.getpid()}-live", me)
    reused = _staging_with_marker(tmp_path, f".art.old-{os.getpid()}-reused", {**me, "start_ticks": -1})
    rebooted = _staging_with_marker(tmp_path, f".art.tmp-{os.getpid()}-boot", {**me, "boot_id": "another-boot"})
    with staging_directory(tmp_path / "art") as staging:
        assert STAGING_MARKER in os.listdir(staging), "the marker is written before anything else"
        (staging / MANIFEST_NAME).write_text(json.dumps({"kind": ARTIFACT_KIND, "files": {}}))
    assert not dead.exists() and not reused.exists() and not rebooted.exists()
    assert live.is_dir(), "a staging folder of a running process (same PID, same start) is not touched"
    assert sorted(os.listdir(tmp_path / "art")) == [MANIFEST_NAME]


def test_a_marked_staging_folder_never_reads_as_an_artifact(tmp_path: Path) -> None:
    folder = _fake_artifact(tmp_path / f".art.tmp-{os.getpid()}-abcd")
    (folder / STAGING_MARKER).write_text(json.dumps(_identity(os.getpid())))
    with pytest.raises(ArtifactError, match="staging directory, not an artifact"):
        read_manifest(folder)


# A replace (--force) killed between moving the earlier artifact aside and removing it.
KILLED_REPLACE = textwrap.dedent("""
    import os, shutil, sys
    from pathlib import Path
    from edgecnn.export import staging as staging_module

    def killed(path, *args, **kwargs):
        if ".old-" in Path(path).name:
            os._exit(9)
        return shutil.rmtree(path, *args, **kwargs)

    staging_module.shutil = type("Killed", (), {"rmtree": staticmethod(killed)})
    with staging_module.staging_directory(Path(sys.argv[1]), overwrite=True) as staging:
        (staging / "manifest.json").write_text('{"kind": "edgecnn-artifact", "files": {}}')
""")


def test_a_replace_killed_before_removing_the_earlier_artifact_is_cleaned_up_later(tmp_path: Path) -> None:
    out = _fake_artifact(tmp_path / "art")
    (out / "old.txt").write_text("earlier")
    (out / MANIFEST_NAME).write_text(json.dumps({"kind": ARTIFACT_KIND, "files": {"old.txt": {}}}))
    proc = subprocess.run([sys.executable, "-c", KILLED_REPLACE, str(out)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    [old] = [p for p in tmp_path.iterdir() if ".old-" in p.name]
    assert (old / STAGING_MARKER).is_file(), "the earlier artifact is marked before it is moved aside"
    assert sorted(os.listdir(out)) == [MANIFEST_NAME]
    with staging_directory(out, overwrite=True) as staging:
        (staging / MANIFEST_NAME).write_text(json.dumps({"kind": ARTIFACT_KIND, "files": {}}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


# ---------------------------------------------------------------- reports (points 2, 16, 17)

@pytest.fixture
def earlier_report(tmp_path: Path) -> Path:
    out = tmp_path / "report"
    write_report([_tiny()], out)
    return out


def test_report_force_refuses_files_the_earlier_report_did_not_write(earlier_report: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    (earlier_report / "my_screenshot.png").write_bytes(b"\x89PNG mine")
    (earlier_report / "notes.png").mkdir()
    (earlier_report / "notes.png" / "todo.txt").write_text("buy milk\n")
    assert main(["report", str(SMALL), "--out", str(earlier_report), "--force"]) == 2
    err = _one_line_error(capsys)
    assert "my_screenshot.png" in err and "did not write" in err
    assert (earlier_report / "my_screenshot.png").read_bytes() == b"\x89PNG mine"
    assert (earlier_report / "notes.png" / "todo.txt").read_text() == "buy milk\n"
    assert sorted(p.name for p in earlier_report.parent.iterdir()) == ["report"]


def test_report_force_refuses_a_report_file_edited_since(earlier_report: Path) -> None:
    index = earlier_report / "README.md"
    index.write_text(index.read_text() + "my own conclusions\n")
    with pytest.raises(UserError, match=r"also holds README\.md, which edgecnn did not write \(or which changed"):
        write_report([_tiny()], earlier_report, force=True)
    assert index.read_text().endswith("my own conclusions\n")


def test_report_force_replaces_an_untouched_earlier_report(earlier_report: Path) -> None:
    before = set(os.listdir(earlier_report))
    results = _tiny()
    results["machine"]["name"] = "Another machine"
    index = write_report([results], earlier_report, force=True)
    assert "Another machine" in index.read_text()
    recorded = json.loads((earlier_report / report_module.FILE_LIST).read_text())["files"]
    assert sorted(os.listdir(earlier_report)) == sorted([*recorded, report_module.FILE_LIST])
    assert set(os.listdir(earlier_report)) != before
    assert sorted(p.name for p in earlier_report.parent.iterdir()) == ["report"]


def test_report_out_of_the_working_directory_is_refused(earlier_report: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(earlier_report)
    before = sorted(os.listdir(earlier_report))
    assert main(["report", str(SMALL), "--out", ".", "--force"]) == 2
    assert "working directory, one of its parents or the home directory" in _one_line_error(capsys)
    assert sorted(os.listdir(earlier_report)) == before
    assert sorted(p.name for p in earlier_report.parent.iterdir()) == ["report"], "no ..old-* left"


def test_report_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    def disk_full(records: list, path: Path, title: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(report_module, "_plot_bars", disk_full)
    assert main(["report", str(SMALL), "--out", str(tmp_path / "r")]) == 2
    assert "no space left on device writing the report" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_reports_staging_is_removed_by_the_next_report(tmp_path: Path) -> None:
    gone = _dead_pid()
    dead = _staging_with_marker(tmp_path, f".r.tmp-{gone}-abcd", _identity(gone))
    users = tmp_path / ".r.tmp-1999-draft"
    users.mkdir()
    write_report([_tiny()], tmp_path / "r")
    assert not dead.exists() and users.is_dir()


HANGING_REPORT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edgecnn.benchmarks import report
    from edgecnn.benchmarks.schema import read_results

    def hang(results, records, staging):
        (staging / "README.md").write_text("half")
        Path(sys.argv[2]).write_text(str(staging))
        time.sleep(600)

    report._markdown = hang
    report.write_report([read_results(sys.argv[3])], sys.argv[1])
""")


def test_sigterm_during_a_report_removes_its_staging(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", HANGING_REPORT, str(tmp_path / "r"), str(ready), str(SMALL)],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (ready.exists() and ready.read_text()):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "the report died"
            assert time.monotonic() < deadline, "the report never reached its hang"
            time.sleep(0.1)
        assert (Path(ready.read_text()) / STAGING_MARKER).is_file()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != -signal.SIGTERM, "SIGTERM killed the report without cleanup"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]


def test_write_report_refuses_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match="working directory, one of its parents or the home directory"):
        write_report([_tiny()], tmp_path, force=True)
    assert list(tmp_path.iterdir()) == []
