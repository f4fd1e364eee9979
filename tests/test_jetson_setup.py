"""The Jetson bundle's setup.sh against JetPack's releases (5.1 = R35, TensorRT 8.5; 6.0 = R36.3, TensorRT 8.6;
6.1/6.2 = R36.4, TensorRT 10.3; 7.0 on Thor = R38; 7.2 = R39) and the DLA's rules, on a simulated Jetson: an
nv_tegra_release file and a device folder, no GPU."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgecnn.export.deploy import build_bundle

MODEL = "lenet5_fmnist"
ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jetson")
    return {precision: build_bundle(MODEL, "jetson", precision, out=root / precision, parity_samples=8).path
            for precision in ("fp16", "int8")}


def _setup(bundle: Path, tmp_path: Path, release: str, *args: str, dla_devices: list[str] = ()) -> subprocess.CompletedProcess:
    (tmp_path / "nv_tegra_release").write_text(f"# {release}, GCID: 1, BOARD: generic, EABI: aarch64, DATE: x\n")
    devices = tmp_path / "dev"
    devices.mkdir(exist_ok=True)
    for name in dla_devices:
        (devices / name).touch()
    return subprocess.run(["sh", str(bundle / "setup.sh"), *args], capture_output=True, text=True,
                          env={**ENV, "EDGECNN_TEGRA_RELEASE": str(tmp_path / "nv_tegra_release"),
                               "EDGECNN_DLA_DEVICES": str(devices)})


@pytest.mark.parametrize("release, jetpack", [("R35 (release), REVISION: 5.0", "5.x"),
                                              ("R36 (release), REVISION: 3.0", "6.0")])
def test_jetpack_before_6_1_is_refused_in_one_line(bundles: dict[str, Path], tmp_path: Path, release: str,
                                                    jetpack: str) -> None:
    run = _setup(bundles["fp16"], tmp_path, release)
    assert run.returncode == 1 and f"JetPack {jetpack} ships TensorRT 8.x, older than 10.3" in run.stderr
    assert run.stderr.strip().count("\n") == 0 and not (bundles["fp16"] / "model.plan").exists()


@pytest.mark.parametrize("release, label", [("R36 (release), REVISION: 4.3", "R36.4.3 (JetPack 6.1/6.2)"),
                                            ("R38 (release), REVISION: 2.0", "R38.2.0 (JetPack 7.0)"),
                                            ("R39 (release), REVISION: 0.0", "R39.0.0 (JetPack 7.2)")])
def test_jetpack_6_1_and_7_are_known(bundles: dict[str, Path], tmp_path: Path, release: str, label: str) -> None:
    run = _setup(bundles["fp16"], tmp_path, release)
    assert f"L4T: {label}" in run.stdout and "unknown to this script" not in run.stdout
    assert "ships TensorRT 8.x" not in run.stderr


def test_int8_on_the_dla_is_refused_before_any_build(bundles: dict[str, Path], tmp_path: Path) -> None:
    run = _setup(bundles["int8"], tmp_path, "R36 (release), REVISION: 4.3", "--dla-core", "0",
                 dla_devices=["nvhost-ctrl-nvdla0"])
    assert run.returncode == 2 and "INT8 on the DLA needs implicit quantization" in run.stderr
    assert "--calib" not in (bundles["int8"] / "setup.sh").read_text()  # TensorRT ignores it on a Q/DQ graph


def test_the_dla_is_refused_on_a_board_without_one(bundles: dict[str, Path], tmp_path: Path) -> None:
    run = _setup(bundles["fp16"], tmp_path, "R36 (release), REVISION: 4.3", "--dla-core", "0")
    assert run.returncode == 2 and "this board has no DLA" in run.stderr
    with_dla = _setup(bundles["fp16"], tmp_path, "R36 (release), REVISION: 4.3", "--dla-core", "0",
                      dla_devices=["nvhost-ctrl-nvdla0", "nvhost-nvdla0"])
    assert "this board has no DLA" not in with_dla.stderr


def test_the_fp16_bundle_carries_both_generations_graphs(bundles: dict[str, Path], tmp_path: Path) -> None:
    copy = shutil.copytree(bundles["fp16"], tmp_path / "b")
    assert (copy / "model.onnx").is_file() and (copy / "model_fp16.onnx").is_file()
    script = (copy / "build_engine.sh").read_text()
    assert "--onnx=model_fp16.onnx --stronglyTyped" in script and "--onnx=model.onnx --fp16" in script


def test_files_dropped_into_the_bundle_are_never_imported_by_setup_or_the_build(bundles: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    """A tensorrt.py or argparse.py placed in the bundle must not run: setup.sh checks modules with the bundle's
    folder off sys.path, and build_engine.py takes its own folder off before importing anything."""
    bundle = shutil.copytree(bundles["fp16"], tmp_path / "b")
    marker = tmp_path / "ran"
    for name in ("tensorrt.py", "argparse.py", "numpy.py"):
        (bundle / name).write_text(f"open({str(marker)!r}, 'a').write({name!r})\n__version__ = '10.16.1'\n")
    run = _setup(bundle, tmp_path, "R36 (release), REVISION: 4.3")
    assert "TensorRT: python not importable" in run.stdout and not marker.exists()
    help_text = subprocess.run([sys.executable, str(bundle / "build_engine.py"), "--help"], capture_output=True,
                               text=True, env=ENV)
    assert help_text.returncode == 0 and "--dla-core" in help_text.stdout and not marker.exists()


def test_setup_takes_verify_key_and_refuses_an_unsigned_bundle_before_building(bundles: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = tmp_path / "pub.pem"
    public.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    source = (bundles["fp16"] / "setup.sh").read_text()
    assert "--verify-key" in source and source.index("load_manifest(verify_key") < source.index("build_engine.py")
    bundle = shutil.copytree(bundles["fp16"], tmp_path / "b")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "trtexec").write_text("#!/bin/sh\necho '&&&& RUNNING TensorRT.trtexec [TensorRT v101600]'\n")
    (fake / "trtexec").chmod(0o755)
    (fake / "nvcc").write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.68'\n")
    (fake / "nvcc").chmod(0o755)
    (tmp_path / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic\n")
    run = subprocess.run(["sh", str(bundle / "setup.sh"), "--verify-key", str(public)], capture_output=True,
                         text=True, env={**ENV, "PATH": f"{fake}:{ENV['PATH']}",
                                         "EDGECNN_TEGRA_RELEASE": str(tmp_path / "nv_tegra_release")})
    assert run.returncode == 2 and "setup.sh:" in run.stderr and "sig" in run.stderr, run.stdout + run.stderr
    assert run.stderr.strip().count("\n") == 0 and not (bundle / "model.plan").exists()
