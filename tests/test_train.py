"""Training, checkpoints and the train/eval commands, on tiny generated data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import edgecnn
from edgecnn.checkpoint import load_checkpoint, save_checkpoint
from edgecnn.cli import main
from edgecnn.errors import CheckpointError
from edgecnn.layers import AuxOutputs
from edgecnn.train import RECIPES, loss_fn, lr_factor, train

SMALL = "resnet18_fmnist"


def test_training_learns_and_writes_checkpoint(fmnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run" / "m.safetensors"
    result = train(SMALL, epochs=3, batch_size=32, data=str(fmnist_dir), out=out, progress=False, threads=1)
    assert result.test_accuracy > 25.0, "3 epochs on 540 images must beat chance (10 %) clearly"
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["model"] == SMALL and meta["epochs"] == 3 and meta["test_accuracy"] == result.test_accuracy
    assert meta["data_fingerprint"] and meta["torch"] == torch.__version__ and meta["wall_time_s"] > 0
    lines = [json.loads(x) for x in out.with_suffix(".log").read_text().splitlines()]
    assert [x["epoch"] for x in lines[:-1]] == [1, 2, 3] and lines[-1]["final"]
    assert not out.with_name("m.state.safetensors").exists(), "training state is removed once training ends"

    model = edgecnn.create_model(SMALL)
    load_checkpoint(model, out)
    from edgecnn.data import load_dataset
    from edgecnn.train import evaluate
    assert evaluate(model, load_dataset(fmnist_dir, "test")) == pytest.approx(result.test_accuracy, abs=0.01)


def test_same_seed_same_weights(fmnist_dir: Path, tmp_path: Path) -> None:
    runs = [train(SMALL, epochs=1, batch_size=64, data=str(fmnist_dir), out=tmp_path / f"{i}.safetensors",
                  progress=False, threads=1, limit=128) for i in range(2)]
    a, b = (edgecnn.create_model(SMALL) for _ in range(2))
    load_checkpoint(a, runs[0].checkpoint)
    load_checkpoint(b, runs[1].checkpoint)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_after_interruption_matches_uninterrupted_run(fmnist_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kw = dict(epochs=2, batch_size=64, data=str(fmnist_dir), progress=False, threads=1, limit=128)
    full = train(SMALL, out=tmp_path / "full.safetensors", **kw)

    import edgecnn.train as train_mod
    real_evaluate, calls = train_mod.evaluate, []

    def interrupt_in_epoch_two(*a, **k):  # the val pass of epoch 2: epoch 1's state is on disk
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    out = tmp_path / "part.safetensors"
    monkeypatch.setattr(train_mod, "evaluate", interrupt_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(SMALL, out=out, **kw)
    assert out.with_name("part.state.safetensors").exists() and not out.exists()
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    resumed = train(SMALL, out=out, resume=True, **kw)

    a, b = edgecnn.create_model(SMALL), edgecnn.create_model(SMALL)
    load_checkpoint(a, full.checkpoint)
    load_checkpoint(b, resumed.checkpoint)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert [json.loads(x).get("epoch") for x in out.with_suffix(".log").read_text().splitlines()] == [1, 2, None]


def test_aux_loss_is_weighted() -> None:
    target = torch.tensor([0, 1])
    logits, aux = torch.randn(2, 3), torch.randn(2, 3)
    plain = loss_fn(logits, target, 0.3, 0.0)
    with_aux = loss_fn(AuxOutputs(logits, (aux, aux)), target, 0.3, 0.0)
    aux_loss = torch.nn.functional.cross_entropy(aux, target)
    assert torch.allclose(with_aux, plain + 2 * 0.3 * aux_loss)
    smoothed = loss_fn(logits, target, 0.0, 0.1)
    assert not torch.allclose(smoothed, plain)


def test_inception_v3_recipe_is_the_papers() -> None:
    r = RECIPES["inception_v3"]
    assert (r.optimizer, r.lr, r.batch_size, r.rmsprop_alpha, r.rmsprop_eps) == ("rmsprop", 0.045, 32, 0.9, 1.0)
    f = lr_factor(r, epochs=10, steps_per_epoch=5)
    assert f(0) == 1.0 and f(9) == 1.0 and f(10) == pytest.approx(0.94) and f(20) == pytest.approx(0.94 ** 2)


def _save_small(tmp_path: Path) -> Path:
    model = edgecnn.create_model(SMALL)
    return save_checkpoint(model, tmp_path / "ok.safetensors", {"model": SMALL}, dtype=torch.float16)


def test_checkpoint_round_trip_fp16(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = edgecnn.create_model(SMALL)
    path = save_checkpoint(model, tmp_path / "c.safetensors", {"model": SMALL, "epochs": 1}, dtype=torch.float16)
    other = edgecnn.create_model(SMALL)
    meta = load_checkpoint(other, path)
    assert meta["epochs"] == 1 and meta["dtype"] == "float16"
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert b.dtype == a.dtype
        assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-3), k
    assert oct(path.stat().st_mode & 0o777) != "0o600"


def test_truncated_checkpoint_rejected(tmp_path: Path) -> None:
    path = _save_small(tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(edgecnn.create_model(SMALL), path)


def test_checkpoint_for_another_model_rejected(tmp_path: Path) -> None:
    path = _save_small(tmp_path)
    with pytest.raises(CheckpointError, match="trained for 'resnet18_fmnist'"):
        load_checkpoint(edgecnn.create_model("resnet18"), path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(edgecnn.create_model("resnet18"), path)


def test_nan_checkpoint_rejected(tmp_path: Path) -> None:
    model = edgecnn.create_model(SMALL)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    path = save_checkpoint(model, tmp_path / "nan.safetensors", {"model": SMALL})
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(edgecnn.create_model(SMALL), path)


def test_pickle_checkpoint_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.safetensors"
    torch.save(edgecnn.create_model(SMALL).state_dict(), path)
    with pytest.raises(CheckpointError):
        load_checkpoint(edgecnn.create_model(SMALL), path)


def test_cli_eval_and_bad_input(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _save_small(tmp_path)
    assert main(["eval", SMALL, "--checkpoint", str(path), "--data", str(fmnist_dir)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["eval", "resnet18", "--checkpoint", str(path), "--data", str(fmnist_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained for" in err
    assert main(["train", "no_such_model"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_cli_user_error_has_no_traceback_but_debug_does(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "edgecnn", "eval", SMALL, "--checkpoint", str(tmp_path / "missing.safetensors")]
    quiet = subprocess.run(cmd, capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr and "not found" in quiet.stderr
    loud = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True)
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_ddp_two_processes_on_cpu(fmnist_dir: Path, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node=2` runs the same command unchanged (DDP over gloo)."""
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "edgecnn",
         "train", SMALL, "--data", str(fmnist_dir), "--epochs", "1", "--batch-size", "32", "--limit", "128",
         "--out", str(out), "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["train"]["world_size"] == 2
    assert proc.stdout.count("test accuracy") == 1, "only rank 0 reports"
