"""`edgecnn train` never loses a file, refuses bad numbers with one line, and says what it does.

Every run here is tiny: LeNet-5, a 64-image limit, one or two epochs, one thread.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import edgecnn
from edgecnn.checkpoint import load_checkpoint
from edgecnn.cli import build_parser, main
from edgecnn.errors import UserError
from edgecnn.train import evaluate, train

NAME = "lenet5_fmnist"
TINY = dict(epochs=1, batch_size=32, limit=64, threads=1, progress=False)


def _tiny_run(data: Path, out: Path, **kw) -> None:  # noqa: ANN003
    train(NAME, data=str(data), out=out, **{**TINY, **kw})


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize("flag,value,message", [
    ("--epochs", "-1", "must be at least 1, got -1"), ("--epochs", "0", "must be at least 1, got 0"),
    ("--batch", "0", "must be at least 1"), ("--batch-size", "-5", "must be at least 1"),
    ("--limit", "0", "must be at least 1"), ("--threads", "0", "must be at least 1"),
    ("--threads", "-1", "must be at least 1"), ("--lr", "-1", "must be greater than 0"),
    ("--lr", "0", "must be greater than 0"), ("--seed", "-1", "must be 0 or more"),
    ("--epochs", "2.5", "expected a whole number"),
])
def test_cli_refuses_bad_numbers_before_touching_anything(flag: str, value: str, message: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ck.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", NAME, "--out", str(out), flag, value])
    assert exit_info.value.code == 2
    named = "--batch/--batch-size" if flag in ("--batch", "--batch-size") else flag  # one flag, its old spelling
    assert f"argument {named}: {message}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw,message", [
    (dict(epochs=0), "epochs must be at least 1, got 0"), (dict(epochs=-1), "epochs must be at least 1"),
    (dict(batch_size=0), "batch_size must be at least 1"), (dict(limit=0), "limit must be at least 1"),
    (dict(threads=0), "threads must be at least 1"), (dict(lr=-1.0), "lr must be greater than 0"),
    (dict(seed=-1), "seed must be 0 or more"), (dict(epochs=2.5), "epochs must be a whole number"),
    (dict(augment="flip"), "--augment must be one of none, crop, crop[+]flip"),
])
def test_api_refuses_bad_numbers_with_the_cli_wording(kw: dict, message: str, tmp_path: Path) -> None:
    # data that does not exist: the check must come before any data is read
    with pytest.raises(UserError, match=f"^{message}"):
        train(NAME, data=str(tmp_path / "no_data"), out=tmp_path / "ck.safetensors", progress=False, **kw)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-3"])
def test_eval_refuses_bad_batch_size(value: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", NAME, "--batch-size", value])
    assert exit_info.value.code == 2 and "argument --batch/--batch-size: must be at least 1" in capsys.readouterr().err


def test_evaluate_api_refuses_bad_batch_size(fmnist_dir: Path) -> None:
    from edgecnn.data import load_dataset

    with pytest.raises(UserError, match="batch_size must be at least 1, got -3"):
        evaluate(edgecnn.create_model(NAME), load_dataset(fmnist_dir, "test"), batch_size=-3)


# ---------------------------------------------------------------- files

def test_checkpoint_path_must_be_safetensors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for stem_file in ("report.txt", "report.json", "report.log"):
        (tmp_path / stem_file).write_text("my report\n")
    before = _snapshot(tmp_path)
    assert main(["train", NAME, "--out", str(tmp_path / "report.txt"), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ending in .safetensors" in err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("out", ["", "/", ".safetensors", "run/"])
def test_out_that_is_no_checkpoint_file_name_is_one_line(out: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", NAME, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a checkpoint path is a file name ending in .safetensors" in err


@pytest.mark.parametrize("path", ["", "/"])
def test_eval_checkpoint_that_is_no_file_name_is_one_line(path: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", NAME, "--checkpoint", path]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_earlier_run_is_replaced_only_with_force(fmnist_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    out = run / "ck.safetensors"
    _tiny_run(fmnist_dir, out)
    before = _snapshot(run)
    assert set(before) == {"ck.safetensors", "ck.json", "ck.log"}
    # refused before the (missing) data is even looked at, and nothing changes
    with pytest.raises(UserError, match=r"ck.safetensors exists \(an earlier edgecnn run\); pass --force"):
        _tiny_run(tmp_path / "no_data", out)
    assert _snapshot(run) == before
    _tiny_run(fmnist_dir, out, seed=1, force=True)
    after = _snapshot(run)
    assert set(after) == set(before) and after["ck.safetensors"] != before["ck.safetensors"]


@pytest.mark.parametrize("leftover", ["ck.json", "ck.log", "ck.state.safetensors"])
def test_each_file_of_an_earlier_run_counts(leftover: str, fmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run" / "ck.safetensors"
    _tiny_run(fmnist_dir, out, epochs=2)
    state = out.with_name("ck.state.safetensors")
    if leftover == "ck.state.safetensors":  # an interrupted run leaves its state behind
        save_file({"x": torch.zeros(1)}, state, metadata={"state": "{}"})
    for name in {"ck.safetensors", "ck.json", "ck.log", "ck.state.safetensors"} - {leftover}:
        (out.parent / name).unlink(missing_ok=True)
    hint = "pass --resume to continue that run" if leftover.endswith("state.safetensors") else "pass --force"
    with pytest.raises(UserError, match=f"{leftover} exists .*; {hint}"):
        _tiny_run(fmnist_dir, out)


@pytest.mark.parametrize("user_file", ["ck.safetensors", "ck.json", "ck.log"])
def test_users_own_files_are_never_replaced_even_with_force(user_file: str, fmnist_dir: Path,
                                                            tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if user_file == "ck.safetensors":  # e.g. timm weights: not edgecnn's (no edgecnn sidecar)
        save_file({"w": torch.ones(3)}, run / user_file, metadata={"format": "pt"})
    else:
        (run / user_file).write_text('{"my": "notes"}\n' if user_file.endswith("json") else "my notes\n")
    before = _snapshot(run)
    with pytest.raises(UserError, match=f"{user_file} exists and is not an edgecnn .*never replaces it"):
        _tiny_run(fmnist_dir, run / "ck.safetensors", force=True)
    assert _snapshot(run) == before


def test_default_run_directory_is_not_overwritten(fmnist_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    train(NAME, data=str(fmnist_dir), **TINY)
    before = _snapshot(tmp_path / "runs")
    assert f"{NAME}/{NAME}.safetensors" in before
    with pytest.raises(UserError, match=f"runs/{NAME}/{NAME}.safetensors exists"):
        train(NAME, data=str(fmnist_dir), **TINY)
    assert _snapshot(tmp_path / "runs") == before


def test_resume_without_saved_state_stops(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run" / "ck.safetensors"
    assert main(["train", NAME, "--data", str(fmnist_dir), "--out", str(out), "--resume", "--limit", "64",
                 "--epochs", "1", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no saved training state" in err and "nothing to resume" in err
    assert not out.parent.exists()


def test_read_only_destination_is_one_line_and_leaves_nothing(fmnist_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only mount answers EROFS to every create, whoever asks (root included)."""
    dest = tmp_path / "ro"
    dest.mkdir()

    def read_only_mount(*args, dir=None, **kw):  # noqa: ANN001, ANN002, ANN003, A002
        if dir is not None and Path(dir).absolute().is_relative_to(dest):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, dir=dir, **kw)

    real_mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", read_only_mount)
    with pytest.raises(UserError, match=r"^cannot write .*ro/sub \(the file system is read-only\); choose a"):
        _tiny_run(fmnist_dir, dest / "sub" / "ck.safetensors")
    assert list(dest.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_directory(fmnist_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ro"
    dest.mkdir()
    dest.chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot write .*Permission denied"):
            _tiny_run(fmnist_dir, dest / "ck.safetensors")
        assert list(dest.iterdir()) == []
    finally:
        dest.chmod(0o755)


# ---------------------------------------------------------------- what the user is told

def test_help_says_each_default_once_and_documents_every_option() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("train", "eval"):
        sub = commands[name]
        assert sub.formatter_class is not __import__("argparse").ArgumentDefaultsHelpFormatter
        text = sub.format_help()
        assert "(default: None)" not in text and "the recipe's (default" not in text
        undocumented = [a.dest for a in sub._actions if a.option_strings and not a.help]
        assert undocumented == [], f"{name}: options without help: {undocumented}"


def test_redirected_output_gets_epoch_lines_not_a_frozen_bar(fmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ck.safetensors"
    proc = subprocess.run([sys.executable, "-m", "edgecnn", "train", NAME, "--data", str(fmnist_dir), "--out",
                           str(out), "--epochs", "2", "--batch-size", "32", "--limit", "64", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)  # stderr is a pipe, not a terminal
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr and "0/2" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"{NAME} epoch 1/2", f"{NAME} epoch 2/2"]
    assert proc.stdout.count("\n") == 1 and "test accuracy" in proc.stdout


def test_checkpoint_of_a_run_loads(fmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ck.safetensors"
    _tiny_run(fmnist_dir, out)
    meta = load_checkpoint(edgecnn.create_model(NAME), out)
    assert meta["schedule"]["epochs_from"] == "--epochs" and meta["schedule"]["epochs"] == 1
    assert json.loads(out.with_suffix(".log").read_text().splitlines()[-1])["final"]
