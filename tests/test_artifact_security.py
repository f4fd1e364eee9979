"""An artifact is only what its manifest lists, inside its folder: edgecnn never reads, hashes, loads or runs a file
reached through a link, an unlisted graph-data file, or a manifest crafted to crash it, and never prints a name's
control characters raw. Hand-edited manifests are resealed (`write_manifest` recomputes their digest), so each
test reaches the check it is about, not the digest check."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
import torch

import edgecnn
from edgecnn.cli import main
from edgecnn.export import ArtifactError, export_registered, read_manifest, runtime
from edgecnn.export.early_exit import EarlyExitStages
from edgecnn.export.manifest import describe_files, write_manifest
from edgecnn.export.pipeline import CheckParity, FoldBatchNorm, Pipeline, PrepareForTarget, WriteTarget, export_model

MODEL = "lenet5_fmnist"


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("security") / "lenet-onnx"
    export_registered(MODEL, "onnx", "fp32", out, parity_samples=4, progress=False)
    return out


@pytest.fixture
def artifact(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "artifact", symlinks=True))


@pytest.fixture(scope="session")
def pristine_early_exit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cheapest BranchyNet export: b_lenet's committed trunk, thresholds tuned on a few images."""
    torch.manual_seed(0)
    net = edgecnn.create_model("b_lenet_fmnist", trunk_weights="committed").eval()
    out = tmp_path_factory.mktemp("security-ee") / "b_lenet"
    export_model(net, "onnx", "fp32", out, parity_samples=4, pipeline=Pipeline(
        [PrepareForTarget(), FoldBatchNorm(), WriteTarget(), CheckParity(), EarlyExitStages(val_samples=20,
                                                                                            cost_repeats=1)]))
    return out


def _reseal(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the manifest and recompute its own digest, as a crafted artifact would."""
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    write_manifest(directory, manifest)


def _list(directory: Path, *names: str) -> Callable[[dict[str, Any]], None]:
    """An edit recording `names` as they are now (size and SHA-256) in the manifest's `files`."""
    return lambda m: m["files"].update(describe_files(directory, list(names)))


def _refused_in_one_line(directory: Path, message: str, capsys: pytest.CaptureFixture, **load: Any) -> str:
    """read_manifest, runtime.load and `edgecnn inspect` all refuse with one line matching `message`; the CLI's
    output (stdout and stderr), for checks on what it printed."""
    with pytest.raises(ArtifactError, match=message) as info:
        read_manifest(directory)
    assert "\n" not in str(info.value)
    with pytest.raises(ArtifactError, match=message):
        runtime.load(directory, **load)
    assert main(["inspect", str(directory)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("edgecnn: error: ")
    return captured.out + captured.err


# ---------------------------------------------------------------- links out of the artifact (point 3)

def test_model_file_linked_to_a_copy_outside_is_refused(artifact: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(artifact / "model.onnx", outside)
    (artifact / "model.onnx").symlink_to(outside)  # same bytes, same hash: only the link gives it away
    _refused_in_one_line(artifact, r"model\.onnx.* is a symbolic link", capsys)


def test_listed_link_to_a_system_file_is_refused_and_never_printed(artifact: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    (artifact / "notes.txt").symlink_to("/etc/passwd")
    _reseal(artifact, _list(artifact, "notes.txt"))
    printed = _refused_in_one_line(artifact, r"notes\.txt.* is a symbolic link", capsys)
    assert "root:" not in printed and describe_files(artifact, ["notes.txt"])["notes.txt"]["sha256"] not in printed


def test_symlinked_manifest_is_refused(artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.move(artifact / "manifest.json", tmp_path / "manifest.json")
    (artifact / "manifest.json").symlink_to(tmp_path / "manifest.json")
    _refused_in_one_line(artifact, r"manifest\.json.* is a symbolic link", capsys)


def test_early_exit_stage_folder_linked_outside_is_refused(pristine_early_exit: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    artifact = Path(shutil.copytree(pristine_early_exit, tmp_path / "ee", symlinks=True))
    shutil.move(artifact / "stage2", tmp_path / "stage2-elsewhere")
    (artifact / "stage2").symlink_to(tmp_path / "stage2-elsewhere")
    _refused_in_one_line(artifact, r"stage2.* is a symbolic link", capsys, backend="early_exit")
    manifest = json.loads((artifact / "manifest.json").read_text())  # the session's own check, on any manifest
    with pytest.raises(ArtifactError, match=r"stage2.* is a symbolic link"):
        runtime.open_session(artifact, manifest, "early_exit")


def test_early_exit_stage_graph_missing_from_files_is_refused(pristine_early_exit: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    artifact = Path(shutil.copytree(pristine_early_exit, tmp_path / "ee"))
    _reseal(artifact, lambda m: m["files"].pop("stage2/model.onnx"))
    _refused_in_one_line(artifact, r"'stage2/model\.onnx' .*is not listed in 'files'", capsys,
                         backend="early_exit")


# ---------------------------------------------------------------- files the manifest does not list (points 4, 6)

def test_inspect_names_files_the_manifest_does_not_list(artifact: Path, capsys: pytest.CaptureFixture) -> None:
    (artifact / "extra.onnx").write_bytes((artifact / "model.onnx").read_bytes())
    (artifact / "junk").mkdir()
    (artifact / "junk" / "readme.txt").write_text("not edgecnn's\n")
    (artifact / "passwd").symlink_to("/etc/passwd")
    for name in ("model.plan", "engine.json"):  # what edgecnn's build scripts add later: expected
        (artifact / name).write_text("{}")
    assert main(["inspect", str(artifact)]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "not list" in line]
    assert len(warning) == 1 and all(n in warning[0] for n in ("extra.onnx", "junk", "passwd", "never loaded"))
    assert "model.plan" not in captured.err and "engine.json" not in captured.err and "root:" not in captured.out


def _to_external_data(artifact: Path, location: str) -> None:
    """model.onnx with its weights moved to `location` (relative to the graph), the graph re-listed."""
    model = onnx.load(str(artifact / "model.onnx"))
    onnx.save_model(model, str(artifact / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.data", size_threshold=0)
    if location != "weights.data":
        model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(model, str(artifact / "model.onnx"))
        (artifact / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(artifact / "weights.data", artifact / location)
    _reseal(artifact, _list(artifact, "model.onnx"))


@pytest.mark.parametrize("location,message", [
    ("weights.data", r"model\.onnx reads its weights from 'weights\.data', which is not listed in 'files'"),
    ("../weights.data", r"model\.onnx reads its weights from '\.\./weights\.data', outside the artifact"),
    ("/tmp/edgecnn-weights.data", r"reads its weights from '/tmp/edgecnn-weights\.data', outside the artifact"),
])
def test_unlisted_onnx_external_data_is_refused(artifact: Path, location: str, message: str,
                                                capsys: pytest.CaptureFixture) -> None:
    try:
        _to_external_data(artifact, location)
        _refused_in_one_line(artifact, message, capsys)
    finally:
        Path("/tmp/edgecnn-weights.data").unlink(missing_ok=True)


def test_listed_onnx_external_data_loads_and_runs(artifact: Path) -> None:
    _to_external_data(artifact, "weights.data")
    _reseal(artifact, _list(artifact, "weights.data"))
    read_manifest(artifact)
    with runtime.load(artifact, threads=1) as session:
        assert session.run(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)


def test_openvino_weights_missing_from_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    artifact = tmp_path / "openvino"
    export_registered(MODEL, "openvino", "fp32", artifact, parity_samples=4, progress=False)
    _reseal(artifact, lambda m: m["files"].pop("model.bin"))
    _refused_in_one_line(artifact, r"model\.xml reads its weights from 'model\.bin', which is not listed", capsys)


def test_exports_write_no_external_data(pristine: Path, pristine_early_exit: Path) -> None:
    """What exports write today: every graph self-contained, so `files` lists everything a runtime reads."""
    for artifact in (pristine, pristine_early_exit):
        for name in read_manifest(artifact)["files"]:
            if name.endswith(".onnx"):
                graph = onnx.load(str(artifact / name), load_external_data=False).graph
                assert not any(t.external_data for t in graph.initializer), f"{artifact / name}"


# ---------------------------------------------------------------- manifests crafted to crash edgecnn (points 11, 18)

@pytest.mark.parametrize("text,message", [
    ("[" * 100_000 + "]" * 100_000, "nests deeper than"),
    ('{"schema_version": ' + "9" * 5000 + "}", "cannot represent"),
], ids=["deep-nesting", "5000-digit-integer"])
def test_json_bomb_manifest_is_one_line(artifact: Path, text: str, message: str,
                                        capsys: pytest.CaptureFixture) -> None:
    (artifact / "manifest.json").write_text(text)
    _refused_in_one_line(artifact, message, capsys)


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["model"].pop("zoo_version"), "model lacks zoo_version"),
    (lambda m: m["parity"][0].update(tolerance="big"), r"parity\[0\]\.tolerance must be a number"),
    (lambda m: m["parity"][0].update(max_abs_diff="tiny"), r"parity\[0\]\.max_abs_diff must be a number or null"),
    (lambda m: m["parity"][0].update(top1_agreement=[1]), r"parity\[0\]\.top1_agreement must be a number"),
    (lambda m: m["model"]["weights"].update(test_accuracy="high"),
     r"model\.weights\.test_accuracy must be a number or null"),
    (lambda m: m["input"].update(dtype="notadtype"), r"input\.dtype must be one of float32, float16"),
    (lambda m: m["output"].update(dtype="float64"), r"output\.dtype must be one of float32, float16"),
    (lambda m: m["preprocessing"].update(resize_method={"antialias": True}), r"resize_method lacks mode"),
], ids=["no-zoo-version", "tolerance", "max-abs-diff", "top1", "test-accuracy", "input-dtype", "output-dtype",
        "resize-method"])
def test_fields_inspect_and_sessions_use_are_typed(artifact: Path, edit, message: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    _reseal(artifact, edit)
    printed = _refused_in_one_line(artifact, message, capsys)
    assert "Traceback" not in printed and "export again" in printed


def test_inspect_prints_without_optional_fields(artifact: Path, capsys: pytest.CaptureFixture) -> None:
    def strip(m: dict[str, Any]) -> None:
        for field in ("tolerance", "max_abs_diff", "top1_agreement", "measures"):
            m["parity"][0].pop(field, None)
        m["model"]["weights"] = {"source": "checkpoint"}
        m["preprocessing"].pop("resize_method")
    _reseal(artifact, strip)
    assert main(["inspect", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint" in out and "onnxruntime" in out


# ---------------------------------------------------------------- names printed raw (point 20)

def test_inspect_escapes_control_characters_in_names(artifact: Path, capsys: pytest.CaptureFixture) -> None:
    red = "\x1b[31m"

    def poison(m: dict[str, Any]) -> None:
        m["class_names"][0] = f"shirt{red}\nFAKE LINE"
        m["model"]["name"] = f"lenet{red}"
        m["export"]["host"] = "host\r\nFAKE HOST"
        m["notes"].append(f"note{red}\nFAKE NOTE")
    _reseal(artifact, poison)
    assert main(["inspect", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    assert not any(line.startswith("FAKE") for line in out.splitlines())
    assert r"shirt\x1b[31m\nFAKE LINE" in out and r"host\r\nFAKE HOST" in out and r"lenet\x1b[31m" in out


def test_an_error_line_quoting_a_hostile_name_stays_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A user error names what is wrong, and a file name may hold a newline or an ANSI escape: still one line."""
    hostile = tmp_path / "evil\n\x1b[31mname"
    assert main(["inspect", str(hostile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "\\n" in err
