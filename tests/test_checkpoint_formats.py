"""`load_checkpoint` is the one door for weights: edgecnn's safetensors, timm's, and torchvision-style .pth."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import edgecnn
from edgecnn.checkpoint import load_checkpoint, save_checkpoint
from edgecnn.cli import main
from edgecnn.errors import CheckpointError

NAME = "lenet5_fmnist"


def _trained_like(seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return edgecnn.create_model(NAME)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_int32_checkpoint_refused(tmp_path: Path) -> None:
    """The weights cast to int32 fit by key and shape but are garbage (they scored 10 %): refuse them."""
    path = save_checkpoint(_trained_like(), tmp_path / "int.safetensors", {"model": NAME}, dtype=torch.int32)
    with pytest.raises(CheckpointError, match=r"is int32, the model wants float32"):
        load_checkpoint(edgecnn.create_model(NAME), path)


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd, "epoch": 7},
                                  lambda sd: {"model": sd, "optimizer": {"lr": 0.1}}],
                         ids=["plain", "state_dict", "model"])
def test_torch_state_dict_loads(tmp_path: Path, wrap) -> None:  # noqa: ANN001
    source = _trained_like()
    path = tmp_path / "lenet.pth"
    torch.save(wrap(source.state_dict()), path)
    target = edgecnn.create_model(NAME)
    assert not _same_weights(source, target)
    assert load_checkpoint(target, path) == {}
    assert _same_weights(source, target)


def test_torch_state_dict_with_wrong_keys_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(edgecnn.create_model("resnet18_fmnist").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit lenet5_fmnist: \d+ missing keys"):
        load_checkpoint(edgecnn.create_model(NAME), path)


def test_torch_file_that_is_not_a_state_dict_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="is not a state dict"):
        load_checkpoint(edgecnn.create_model(NAME), path)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what a malicious checkpoint does on unpickling
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_without_running_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = _trained_like().state_dict()
    torch.save({**state, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="holds more than tensors.*never runs code"):
        load_checkpoint(edgecnn.create_model(NAME), path)
    assert main(["eval", NAME, "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "posix.system" in err
    assert not marker.exists(), "the pickle's code must never run"


def test_truncated_torch_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(_trained_like().state_dict(), path)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="corrupt or not a torch.save file"):
        load_checkpoint(edgecnn.create_model(NAME), path)


def test_timm_safetensors_without_sidecar_loads(tmp_path: Path) -> None:
    source = _trained_like()
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), path, metadata={"format": "pt"})  # as timm / huggingface write them
    target = edgecnn.create_model(NAME)
    assert load_checkpoint(target, path) == {}
    assert _same_weights(source, target)


def test_unknown_checkpoint_format_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.txt"
    path.write_text("not weights")
    with pytest.raises(CheckpointError, match="unknown format .txt"):
        load_checkpoint(edgecnn.create_model(NAME), path)
