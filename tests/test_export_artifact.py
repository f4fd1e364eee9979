"""The artifact contract: manifest contents, every way an artifact can be broken gives one clear error,
writes are atomic (a killed export leaves nothing that passes as an artifact), and `edgecnn inspect`."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgecnn.cli import main
from edgecnn.errors import UserError
from edgecnn.export import ArtifactError, ExportContext, Pass, Pipeline, export_registered, read_manifest, runtime
from edgecnn.export.pipeline import WriteTarget
from edgecnn.export.manifest import REQUIRED_FIELDS, SCHEMA_VERSION, sha256_file, write_manifest

MODEL = "lenet5_fmnist"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "lenet-onnx"
    export_registered(MODEL, "onnx", "fp32", out)
    return out


@pytest.fixture
def artifact(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "artifact"))


def _rewrite_manifest(directory: Path, edit, reseal: bool = True) -> None:
    """Edit the manifest; `reseal` recomputes its own digest, so checks past the digest are reached."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    if reseal:
        write_manifest(directory, manifest)
    else:
        path.write_text(json.dumps(manifest))


def test_manifest_records_what_the_issue_asks(artifact: Path) -> None:
    m = read_manifest(artifact)
    assert set(REQUIRED_FIELDS) <= set(m)
    assert m["schema_version"] == SCHEMA_VERSION
    assert m["model"]["name"] == MODEL and m["model"]["zoo_version"]
    assert m["input"] == {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32", "layout": "NCHW",
                          "dynamic_batch": False}
    assert m["preprocessing"]["mean"] and m["preprocessing"]["resize"] == [28, 28]
    assert m["class_names"][0] == "T-shirt/top" and len(m["class_names"]) == 10
    assert m["precision"] == "fp32" and m["calibration"] is None
    assert m["files"]["model.onnx"]["sha256"] == sha256_file(artifact / "model.onnx")
    assert {"torch", "onnx", "onnxruntime", "openvino"} <= {k for k, v in m["tools"].items() if v}
    assert m["export"]["seconds"] > 0 and m["export"]["created_utc"]
    assert m["parity"][0]["backend"] == "onnxruntime" and m["parity"][0]["passed"]
    assert [p["name"] for p in m["passes"]] == ["prepare_for_target", "fold_batchnorm", "write_target", "check_parity"]
    assert sorted(os.listdir(artifact)) == ["manifest.json", "model.onnx"]


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text()[:200]), "corrupt, truncated"),
    (lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
    (lambda d: (d / "model.onnx").unlink(), "missing"),
    (lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:1000]), "was truncated"),
    (lambda d: (d / "model.onnx").open("ab").write(b"\0"), "1 more than the manifest records: the file was modified or "
                                                            "appended to"),
    (lambda d: _flip_byte(d / "model.onnx"), "SHA-256"),
    (lambda d: _rewrite_manifest(d, lambda m: m.update(schema_version=99)), "schema version 99"),
    (lambda d: _rewrite_manifest(d, lambda m: m.pop("parity")), "lacks required fields parity"),
    (lambda d: _rewrite_manifest(d, lambda m: m["files"].update({"../x": {"bytes": 1, "sha256": ""}})),
     "outside the artifact"),
])
def test_broken_artifact_is_one_clear_error(artifact: Path, damage, message: str) -> None:
    damage(artifact)
    with pytest.raises(ArtifactError, match=message) as info:
        read_manifest(artifact)
    assert "\n" not in str(info.value)
    with pytest.raises(ArtifactError, match=message):
        runtime.load(artifact)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_onnx_behind_a_matching_manifest_fails_at_load_clearly(artifact: Path) -> None:
    """Even if someone re-hashes a corrupt file, the session says what is wrong instead of crashing."""
    onnx_path = artifact / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes()[:5000])
    _rewrite_manifest(artifact, lambda m: m["files"].update(
        {"model.onnx": {"bytes": onnx_path.stat().st_size, "sha256": sha256_file(onnx_path)}}))
    with pytest.raises(ArtifactError, match="onnxruntime cannot load .*corrupt"):
        runtime.load(artifact)


def test_existing_output_needs_overwrite(artifact: Path) -> None:
    with pytest.raises(UserError, match="already exists"):
        export_registered(MODEL, "onnx", "fp32", artifact)
    old_hash = read_manifest(artifact)["files"]["model.onnx"]["sha256"]
    export_registered(MODEL, "onnx", "fp32", artifact, overwrite=True, batch=2)
    m = read_manifest(artifact)
    assert m["input"]["shape"][0] == 2 and m["files"]["model.onnx"]["sha256"] != old_hash
    assert [p.name for p in artifact.parent.iterdir()] == ["artifact"], "no staging or old directory left"


KILLED_EXPORT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edgecnn.export.pipeline import DEFAULT_PASSES, Pass, Pipeline, export_registered

    class Hang(Pass):
        name = "hang"
        def run(self, ctx):
            (Path(sys.argv[2]) / "ready").write_text(str(ctx.staging))
            time.sleep(600)

    passes = [p() for p in DEFAULT_PASSES]
    passes.insert(int(sys.argv[3]), Hang())
    export_registered("lenet5_fmnist", "openvino", "fp32", sys.argv[1], pipeline=Pipeline(passes))
""")


def _start_export(out: Path, marker_dir: Path, hang_at: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(out), str(marker_dir), str(hang_at)], env=env)


def _wait_for_hang(proc: subprocess.Popen, markers: Path) -> Path:
    """The staging directory of an export that reached its Hang pass (the marker is written, not just created)."""
    deadline = time.monotonic() + 120
    while not (markers / "ready").exists() or not (markers / "ready").read_text():
        assert proc.poll() is None, "the export died before reaching the hang"
        assert time.monotonic() < deadline, "the export never reached the hang"
        time.sleep(0.1)
    return Path((markers / "ready").read_text())


def _assert_nothing_passes_as_artifact(parent: Path, out: Path) -> None:
    assert not out.exists()
    for entry in parent.iterdir():
        if entry.is_dir() and entry.name != "markers":
            with pytest.raises(ArtifactError):
                read_manifest(entry)


@pytest.mark.parametrize("hang_at", [3, 4], ids=["after-model-files", "after-parity"])
def test_killed_export_leaves_nothing_that_passes_as_an_artifact(tmp_path: Path, hang_at: int) -> None:
    out, markers = tmp_path / "art", tmp_path / "markers"
    markers.mkdir()
    proc = _start_export(out, markers, hang_at)
    try:
        staging = _wait_for_hang(proc, markers)
        assert (staging / "model.xml").exists(), "the kill point should be after the model files are written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _assert_nothing_passes_as_artifact(tmp_path, out)
    assert staging.exists(), "a SIGKILLed process cannot clean up; its staging dir must simply not count"
    export_registered(MODEL, "openvino", "fp32", out)  # the next export to the same place cleans up
    assert not staging.exists()
    assert read_manifest(out)["parity"][0]["passed"]


def test_export_never_replaces_a_directory_that_appeared_meanwhile(tmp_path: Path) -> None:
    out = tmp_path / "art"

    class Competitor(Pass):
        name = "competitor"

        def run(self, ctx: ExportContext) -> dict:
            out.mkdir()
            (out / "theirs").write_text("kept")
            return {}

    with pytest.raises(UserError, match="appeared while exporting"):
        export_registered(MODEL, "onnx", "fp32", out, pipeline=Pipeline([WriteTarget(), Competitor()]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"] and (out / "theirs").read_text() == "kept"


def test_failed_export_removes_its_staging_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="opset 5"):
        export_registered(MODEL, "onnx", "fp32", tmp_path / "art", opset=5)
    assert list(tmp_path.iterdir()) == []


def test_inspect_prints_the_manifest_and_verifies_hashes(artifact: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(artifact)]) == 0
    out = capsys.readouterr().out
    source = read_manifest(artifact)["model"]["weights"]["source"]  # checkpoint once weights are committed
    for expected in (MODEL, "onnx / fp32", "1×1×28×28 float32 NCHW", "model.onnx", "hash verified", "PASS",
                     source, "fold_batchnorm"):
        assert expected in out
    assert main(["inspect", str(artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["name"] == MODEL


def test_inspect_of_a_tampered_artifact_exits_2_with_one_line(artifact: Path, capsys: pytest.CaptureFixture) -> None:
    _flip_byte(artifact / "model.onnx")
    assert main(["inspect", str(artifact)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "SHA-256" in err and "model.onnx" in err


def test_cli_export_prints_files_and_parity(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert main(["export", MODEL, "--target", "tensorrt", "--precision", "fp16", "--dynamic-batch",
                 "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "build_engine.py" in text and "PASS" in text and "no TensorRT engine was built" in text
    assert main(["export", MODEL, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(model_files=[]), "model_files must be a non-empty object"),
    (lambda m: m.update(model_files={}), "model_files must be a non-empty object"),
    (lambda m: m.update(files={}, model_files={}), "model_files must be a non-empty object"),
    (lambda m: m.update(input=None), "input must be an object"),
    (lambda m: m.update(parity="yes"), "parity must be a list"),
    (lambda m: m["parity"][0].update(passed="yes"), r"parity\[0\]\.passed must be true or false"),
    (lambda m: m["input"].update(shape=[1, None, 28, 28]), r"input\.shape\[1\] must be an integer or a string"),
    (lambda m: m["files"]["model.onnx"].update(bytes="many"), r"files\['model.onnx'\]\.bytes must be an integer"),
    (lambda m: m.update(class_names=[1, 2]), r"class_names\[0\] must be a string"),
    (lambda m: m["model"].pop("weights"), "model lacks weights"),
])
def test_manifest_schema_is_checked_on_read(artifact: Path, edit, message: str,
                                            capsys: pytest.CaptureFixture) -> None:
    _rewrite_manifest(artifact, edit)
    with pytest.raises(ArtifactError, match=message) as info:
        read_manifest(artifact)
    assert "\n" not in str(info.value) and "export again" in str(info.value)
    assert main(["inspect", str(artifact)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("edit", [
    lambda m: m.update(precision="fp16"),
    lambda m: m["parity"][0].update(passed=False),
    lambda m: m["notes"].append("harmless?"),
], ids=["precision", "parity-verdict", "notes"])
def test_a_manifest_edited_after_export_is_detected(artifact: Path, edit) -> None:
    _rewrite_manifest(artifact, edit, reseal=False)
    with pytest.raises(ArtifactError, match="does not match its own manifest_sha256: the manifest was edited"):
        read_manifest(artifact)


def test_a_model_file_dropped_from_the_record_is_detected(tmp_path: Path) -> None:
    out = tmp_path / "trt"
    export_registered(MODEL, "tensorrt", "fp32", out, parity_samples=4)

    def drop(m: dict) -> None:
        del m["files"]["build_engine.sh"]
    _rewrite_manifest(out, drop, reseal=False)
    with pytest.raises(ArtifactError, match="manifest was edited after the export"):
        read_manifest(out)


def test_manifest_digest_is_over_its_canonical_json(artifact: Path) -> None:
    """A third party can check it: SHA-256 of the JSON without the field, keys sorted, no whitespace."""
    import hashlib

    m = json.loads((artifact / "manifest.json").read_text())
    digest = m.pop("manifest_sha256")
    assert hashlib.sha256(json.dumps(m, sort_keys=True, separators=(",", ":")).encode()).hexdigest() == digest


def test_inspect_of_a_file_says_it_is_not_an_artifact_directory(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / "passwd"
    file.write_text("root:x:0:0::/root:/bin/sh\n")
    assert main(["inspect", str(file)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not an artifact directory" in err and "does not exist" not in err
