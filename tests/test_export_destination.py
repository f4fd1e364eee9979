"""Where an export may write: --force replaces only edgecnn's own output, decided before any work; SIGTERM
cleans up like Ctrl-C; a read-only destination is one line and leaves nothing behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgecnn.cli import main
from edgecnn.errors import UserError
from edgecnn.export import export_registered, read_manifest
from edgecnn.export import pipeline as pipeline_module
from edgecnn.export.staging import STAGING_MARKER, _identity
from tests.test_export_artifact import _start_export, _wait_for_hang

MODEL = "lenet5_fmnist"


@pytest.fixture
def no_model_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused destination must be refused before the model is built or anything is exported."""
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built before the destination was checked")

    monkeypatch.setattr(pipeline_module, "load_source_model", fail)


def _users_folder(path: Path) -> dict[str, str]:
    (path / "sub").mkdir(parents=True)
    files = {"thesis.txt": "four years of work", "sub/notes.md": "# notes"}
    for name, text in files.items():
        (path / name).write_text(text)
    return files


def _assert_intact(path: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        assert (path / name).read_text() == text, f"{name} was lost"


def test_force_never_replaces_a_users_folder(tmp_path: Path, no_model_build: None,
                                             capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "mine"
    files = _users_folder(folder)
    assert main(["export", MODEL, "--out", str(folder), "--force", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not an edgecnn artifact" in err and "--force replaces only" in err
    _assert_intact(folder, files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], "no staging directory left"
    with pytest.raises(UserError, match="not an edgecnn artifact; choose another --out"):  # without --force
        export_registered(MODEL, out=folder)


@pytest.mark.parametrize("where", [".", "..", "home"])
def test_cwd_its_parents_and_home_are_never_a_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     no_model_build: None, where: str) -> None:
    work = tmp_path / "home" / "work"
    files = _users_folder(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = str(tmp_path / "home") if where == "home" else where
    with pytest.raises(UserError, match="working directory, one of its parents or the home directory"):
        export_registered(MODEL, out=out, overwrite=True)
    _assert_intact(work, files)


def test_an_artifact_with_a_users_file_in_it_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "art"
    export_registered(MODEL, out=out, parity_samples=4)
    (out / "results.csv").write_text("mine")
    with pytest.raises(UserError, match=r"also holds results\.csv, which edgecnn did not write"):
        export_registered(MODEL, out=out, overwrite=True, parity_samples=4)
    assert (out / "results.csv").read_text() == "mine" and read_manifest(out)


def test_dead_staging_leftovers_go_and_a_staging_name_is_refused(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    leftover = tmp_path / f".art.tmp-{dead}-abcd"
    leftover.mkdir()
    (leftover / "model.onnx").write_bytes(b"half")
    (leftover / STAGING_MARKER).write_text(json.dumps(_identity(int(dead))))  # edgecnn's own, so it may go
    with pytest.raises(UserError, match="named like edgecnn's staging directories"):
        export_registered(MODEL, out=leftover, overwrite=True)
    export_registered(MODEL, out=tmp_path / "art", parity_samples=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"], "the dead export's leftover was removed"


def test_symlink_is_not_followed_or_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    files = _users_folder(folder)
    (tmp_path / "link").symlink_to(folder)
    with pytest.raises(UserError, match="symbolic link"):
        export_registered(MODEL, out=tmp_path / "link", overwrite=True)
    _assert_intact(folder, files)


def test_sigterm_during_an_export_removes_its_staging_directory(tmp_path: Path) -> None:
    out, markers = tmp_path / "art", tmp_path / "markers"
    markers.mkdir()
    proc = _start_export(out, markers, hang_at=3)
    try:
        staging = _wait_for_hang(proc, markers)
        assert (staging / "model.xml").exists()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != -signal.SIGTERM, "SIGTERM killed the export without cleanup"
    assert not staging.exists(), "SIGTERM left the staging directory behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["markers"]


def test_sigterm_handler_is_restored_after_an_export(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    export_registered(MODEL, out=tmp_path / "art", parity_samples=4)
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.fixture
def read_only(tmp_path: Path):
    """A read-only directory holding an artifact: a read-only tmpfs when root (root ignores modes), else 0555."""
    ro = tmp_path / "ro"
    ro.mkdir()
    root = os.geteuid() == 0
    if root and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(ro)],
                               capture_output=True).returncode != 0:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    try:
        export_registered(MODEL, out=ro / "art", parity_samples=4)
        if root:
            subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        else:
            (ro / "art").chmod(0o555)
            ro.chmod(0o555)
        yield ro
    finally:
        if root:
            subprocess.run(["umount", str(ro)], check=False)
        else:
            ro.chmod(0o755)
            (ro / "art").chmod(0o755)


def test_read_only_destination_is_one_line_and_leaves_nothing(read_only: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    before = sorted(os.listdir(read_only)), sorted(os.listdir(read_only / "art"))
    for out, extra in ((read_only / "new", []), (read_only / "art", ["--force"])):
        assert main(["export", MODEL, "--out", str(out), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "read-only" in err, err
    assert (sorted(os.listdir(read_only)), sorted(os.listdir(read_only / "art"))) == before
    assert read_manifest(read_only / "art")


@pytest.mark.parametrize("name,size,message", [
    ("inception_v3", (32, 32), "below inception_v3's smallest input 75x75"),
    ("lenet5", (4, 4), "below lenet5's smallest input 32x32"),
    (MODEL, (100_000, 100_000), "100000x100000 is too large: an export at that size needs about"),
])
def test_input_size_is_refused_before_the_model_is_built(tmp_path: Path, no_model_build: None, name: str,
                                                         size: tuple[int, int], message: str) -> None:
    with pytest.raises(UserError, match=message):
        export_registered(name, out=tmp_path / "a", input_size=size)
    assert list(tmp_path.iterdir()) == []


def test_input_size_below_what_a_model_takes_says_its_smallest(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """Models without a recorded minimum are probed: the smallest side that runs is found and said."""
    assert main(["export", MODEL, "--input-size", "4x4", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "4x4 is too small for lenet5_fmnist: its smallest input is 28x28" in err
    assert list(tmp_path.iterdir()) == []
