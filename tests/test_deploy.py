"""Deploy bundles, built and run on this machine: every bundle kind of resnet18_fmnist, its scripts checked and
executed (setup.sh, run.py on real Fashion-MNIST test PNGs, bench.sh into `edgecnn report`), the Jetson bundle
through its ONNX Runtime fallback, the bundle's own preprocessing against edgecnn's, and each bad input."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecnn.errors import UserError
from edgecnn.export import read_manifest, runtime
from edgecnn.export.deploy import BUNDLE_KIND, TEMPLATES, build_bundle
from edgecnn.export.manifest import preprocessing_record

MODEL = "resnet18_fmnist"
IMAGES = 20
SCRIPTS = ("setup.sh", "bench.sh")
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def _bundle_module():
    spec = importlib.util.spec_from_file_location("edgecnn_bundle_under_test", TEMPLATES / "edgecnn_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One bundle per deploy target, built once for the module (jetson at fp16, as a Jetson runs it)."""
    root = tmp_path_factory.mktemp("bundles")
    precisions = {"onnxruntime": "fp32", "openvino": "fp32", "jetson": "fp16"}
    return {target: build_bundle(MODEL, target, precision, root / target, parity_samples=16).path
            for target, precision in precisions.items()}


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The first Fashion-MNIST test images as PNG files, and their true class names."""
    from PIL import Image

    from edgecnn.data import load_dataset

    test = load_dataset("fashion_mnist", "test")
    images, labels = test.get_batch(range(IMAGES))
    folder = tmp_path_factory.mktemp("pngs")
    for i in range(IMAGES):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"{i:02d}.png")
    return folder, [test.class_names[int(y)] for y in labels]


def _run(args: list[str], cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env or ENV, timeout=600)


def _predictions(stdout: str) -> dict[str, str]:
    """image file name → the top-1 class run.py printed."""
    found = {}
    for line in stdout.splitlines():
        path, _, classes = line.partition(".png: ")
        found[Path(path + ".png").name] = classes.split(",")[0].rsplit(" ", 1)[0]
    return found


# ---------------------------------------------------------------- what a bundle holds

@pytest.mark.parametrize("target", ["onnxruntime", "openvino", "jetson"])
def test_bundle_is_complete_and_its_scripts_parse(bundles: dict[str, Path], target: str) -> None:
    out = bundles[target]
    m = read_manifest(out)  # still an artifact: every file, the scripts included, has its SHA-256 checked
    bundle = m["bundle"]
    assert bundle["kind"] == BUNDLE_KIND and bundle["target"] == target
    for name in ("setup.sh", "run.py", "bench.py", "bench.sh", "edgecnn_bundle.py", "README.md", "requirements.txt"):
        assert name in m["files"] and name in bundle["files"]
    for name in SCRIPTS:
        assert os.access(out / name, os.X_OK)
        check = _run(["bash", "-n", str(out / name)])
        assert check.returncode == 0, check.stderr
        if shutil.which("shellcheck"):
            lint = _run(["shellcheck", "-S", "warning", str(out / name)])
            assert lint.returncode == 0, lint.stdout
    for name in ("run.py", "bench.py", "edgecnn_bundle.py"):
        compile((out / name).read_text(), name, "exec")
        assert "import torch" not in (out / name).read_text() and "edgecnn." not in (out / name).read_text()
    readme = (out / "README.md").read_text()
    assert m["export"]["host"] in readme and "setup.sh" in readme and m["model"]["name"] in readme
    requirements = (out / "requirements.txt").read_text()
    assert "numpy" in requirements and "pillow" in requirements
    assert {"jetson": "onnxruntime", "openvino": "openvino", "onnxruntime": "onnxruntime"}[target] in requirements
    assert not list(out.glob("**/__pycache__"))


def test_jetson_bundle_carries_build_scripts_for_its_precision(bundles: dict[str, Path]) -> None:
    out = bundles["jetson"]
    m = read_manifest(out)
    assert m["target"] == "tensorrt" and m["precision"] == "fp16" and m["bundle"]["backend"] == "tensorrt"
    assert {"build_engine.py", "build_engine.sh", "model.onnx"} <= set(m["files"])
    assert "--fp16" in (out / "build_engine.sh").read_text() and "timing.cache" in (out / "build_engine.sh").read_text()
    setup = (out / "setup.sh").read_text()
    assert 'onnx_files="model.onnx"' in setup and "--useDLACore=$dla" in setup and "--allowGPUFallback" in setup


# ---------------------------------------------------------------- running them here

@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_cpu_bundle_setup_run_and_bench(bundles: dict[str, Path], pngs: tuple[Path, list[str]], target: str,
                                        tmp_path: Path) -> None:
    from edgecnn.benchmarks.report import write_report
    from edgecnn.benchmarks.schema import RECORD_FIELDS, read_results

    out = bundles[target]
    before = sorted(p.name for p in out.iterdir())
    setup = _run(["sh", str(out / "setup.sh")])
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert "verified and loaded on " + target in setup.stdout and "python:" in setup.stdout

    folder, truth = pngs
    run = _run([sys.executable, str(out / "run.py"), str(folder), "--top-k", "3"])
    assert run.returncode == 0, run.stderr
    predicted = _predictions(run.stdout)
    assert len(predicted) == IMAGES and all(line.count(",") == 2 for line in run.stdout.splitlines())
    right = sum(predicted[f"{i:02d}.png"] == truth[i] for i in range(IMAGES))
    assert right >= 17, run.stdout  # resnet18_fmnist is ~94% on the test split

    results = tmp_path / "device.json"
    bench = _run(["sh", str(out / "bench.sh"), "--iters", "20", "--warmup", "2", "--rounds", "2", "--threads", "1",
                  "--out", str(results)])
    assert bench.returncode == 0, bench.stderr
    document = read_results(results)  # the bench schema's own validator
    record = document["records"][0]
    assert set(RECORD_FIELDS) <= set(record) and record["runtime"] == target and record["iterations"] == 20
    lat = record["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert record["throughput"] == pytest.approx(1e3 / lat["mean"], rel=1e-3)
    index = write_report([document], tmp_path / "report")
    assert MODEL in index.read_text()
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written into the bundle


def test_bundle_runs_the_same_logits_as_edgecnn(bundles: dict[str, Path], pngs: tuple[Path, list[str]]) -> None:
    """The bundle's own preprocessing and runner against edgecnn's preprocess and runtime session."""
    import torch

    from edgecnn.data import preprocess
    from edgecnn.registry import get_config

    b = _bundle_module()
    out = bundles["onnxruntime"]
    manifest = b.load_manifest(out)
    model = b.Model(manifest, "onnxruntime", threads=1, directory=out)
    pixels = [b.decode_image(path) for path in sorted(pngs[0].iterdir())[:4]]
    theirs = preprocess(torch.from_numpy(np.stack(pixels)), get_config(MODEL)).numpy()
    with runtime.load(out, threads=1) as session:
        for i, p in enumerate(pixels):
            x = b.to_input(p, manifest["preprocessing"])[None]
            np.testing.assert_allclose(x, theirs[i:i + 1], atol=1e-6)
            np.testing.assert_allclose(model.classify(x)[0], session.run(theirs[i:i + 1]), atol=1e-5)


@pytest.mark.parametrize("channels, size, source", [(1, 28, (28, 28, 1)), (1, 28, (40, 36, 3)), (1, 28, (10, 12, 1)),
                                                     (3, 32, (28, 28, 1)), (3, 20, (33, 47, 3))])
def test_bundle_preprocessing_matches_edgecnn(channels: int, size: int, source: tuple[int, int, int]) -> None:
    """Channels adapted, bilinear resize (antialiased when narrowing), normalisation: as edgecnn.data.preprocess."""
    import torch

    from edgecnn.data import preprocess
    from edgecnn.registry import get_config

    b = _bundle_module()
    config = dataclasses.replace(get_config(MODEL), input_size=(channels, size, size))
    pixels = np.random.default_rng(sum(source)).integers(0, 256, source, dtype=np.uint8).transpose(2, 0, 1)
    ours = b.to_input(pixels, preprocessing_record(config, config.input_size))
    theirs = preprocess(torch.from_numpy(pixels[None].copy()), config)[0].numpy()
    assert ours.shape == theirs.shape == (channels, size, size)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_jetson_bundle_falls_back_to_onnxruntime_and_setup_says_not_a_jetson(
        bundles: dict[str, Path], pngs: tuple[Path, list[str]], tmp_path: Path) -> None:
    out = bundles["jetson"]
    folder, truth = pngs
    run = _run([sys.executable, str(out / "run.py"), str(folder / "00.png")])
    assert run.returncode == 0, run.stderr
    assert "no TensorRT engine is built here" in run.stderr and "falling back to onnxruntime" in run.stderr
    assert _predictions(run.stdout)["00.png"] == truth[0]

    setup = _run(["sh", str(out / "setup.sh")], env={**ENV, "EDGECNN_TEGRA_RELEASE": str(tmp_path / "absent")})
    assert setup.returncode == 1
    assert setup.stderr.strip().count("\n") == 0 and "this is not a Jetson" in setup.stderr

    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3, GCID: 36191598, BOARD: generic, EABI: aarch64, DATE: x\n")
    jetson = _run(["sh", str(out / "setup.sh")], env={**ENV, "EDGECNN_TEGRA_RELEASE": str(release),
                                                     "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert "L4T: R36.4.3 (JetPack 6.1/6.2)" in jetson.stdout and "memory:" in jetson.stdout
    if "not importable" in jetson.stdout and "trtexec not found" in jetson.stdout:  # no TensorRT here
        assert jetson.returncode == 1 and "missing: TensorRT" in jetson.stderr
    assert not (out / "model.plan").exists()

    if importlib.util.find_spec("tensorrt") is None:  # an engine is there but TensorRT is not: said, not crashed
        copy = tmp_path / "with-engine"
        shutil.copytree(out, copy)
        (copy / "model.plan").write_bytes(b"an engine from elsewhere")
        fell_back = _run([sys.executable, str(copy / "run.py"), str(folder / "00.png")])
        assert fell_back.returncode == 0 and "TensorRT's Python module is not importable" in fell_back.stderr
        assert "--system-site-packages" in fell_back.stderr and "falling back to onnxruntime" in fell_back.stderr
        assert _predictions(fell_back.stdout)["00.png"] == truth[0]
        fallback = _run([sys.executable, str(copy / "run.py"), str(folder / "00.png"), "--backend", "onnxruntime"])
        assert fallback.returncode == 0 and _predictions(fallback.stdout)["00.png"] == truth[0]

    for bad, says in ((["--dla-core", "-1"], "--dla-core must be an integer of at least 0"),
                      (["--max-batch", "0"], "--max-batch must be at least 1"), (["--bogus"], "unknown option")):
        refused = _run(["sh", str(out / "setup.sh"), *bad])
        assert refused.returncode == 2 and says in refused.stderr


# ---------------------------------------------------------------- bad input: one line each, nothing half-written

def test_unknown_target_and_impossible_precision_are_one_line(tmp_path: Path) -> None:
    from edgecnn.cli import main

    with pytest.raises(UserError, match="unknown deploy target 'arduino'; choose one of .*jetson"):
        build_bundle(MODEL, "arduino", out=tmp_path / "a")
    with pytest.raises(UserError, match="the jetson target deploys fp32, fp16, int8, not 'bf16'"):
        build_bundle(MODEL, "jetson", "bf16", out=tmp_path / "a")
    assert main(["deploy", MODEL, "--target", "jetson", "--precision", "bf16", "--out", str(tmp_path / "a")]) == 2
    assert not list(tmp_path.iterdir())


def test_out_that_is_not_a_bundle_is_never_replaced(bundles: dict[str, Path], tmp_path: Path) -> None:
    from edgecnn.export import export_registered

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(UserError, match="not an edgecnn artifact"):
            build_bundle(MODEL, "onnxruntime", out=mine, force=force)
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(os.listdir(mine)) == ["notes.txt"]

    artifact = export_registered("lenet5_fmnist", "onnx", "fp32", tmp_path / "artifact", parity_samples=8).path
    with pytest.raises(UserError, match="is an edgecnn export artifact, not a deploy bundle"):
        build_bundle(MODEL, "onnxruntime", out=artifact, force=True)
    read_manifest(artifact)

    copy = tmp_path / "bundle"
    shutil.copytree(bundles["onnxruntime"], copy)
    (copy / "results.txt").write_text("a user's file")
    with pytest.raises(UserError, match="results.txt, which edgecnn did not write"):
        build_bundle(MODEL, "onnxruntime", out=copy, force=True)
    assert (copy / "results.txt").read_text() == "a user's file"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_force_replaces_an_earlier_bundle_only(tmp_path: Path) -> None:
    out = tmp_path / "b"
    first = build_bundle("lenet5_fmnist", "onnxruntime", out=out, parity_samples=8).manifest
    with pytest.raises(UserError, match="already exists; pass --force"):
        build_bundle("lenet5_fmnist", "onnxruntime", out=out)
    second = build_bundle("lenet5_fmnist", "onnxruntime", "fp16", out=out, force=True, parity_samples=8).manifest
    assert first["precision"] == "fp32" and second["precision"] == "fp16" and read_manifest(out)["bundle"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging left beside it


def test_unknown_model_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown model"):
        build_bundle("resnet18_fmnst", "onnxruntime", out=tmp_path / "b")
    assert not list(tmp_path.iterdir())


def test_run_py_refuses_undecodable_images_and_altered_files(bundles: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    run = _run([sys.executable, str(bundles["onnxruntime"] / "run.py"), str(bad)])
    assert run.returncode == 2 and "is not an image Pillow can decode" in run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr

    missing = _run([sys.executable, str(bundles["onnxruntime"] / "run.py"), str(tmp_path / "nope.png")])
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    for script in ("run.py", "bench.py"):  # -S: no site-packages, so no numpy: said, not a traceback
        bare = _run([sys.executable, "-S", str(bundles["onnxruntime"] / script), str(bad)])
        assert bare.returncode == 2 and "numpy is not installed for" in bare.stderr and "Traceback" not in bare.stderr

    for name, change in (("model.onnx", lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\0")),
                         ("edgecnn_bundle.py", lambda p: p.write_text(p.read_text() + "\n# edited\n")),
                         ("manifest.json", lambda p: p.write_text(p.read_text().replace('"fp32"', '"fp16"', 1)))):
        copy = tmp_path / f"copy-{name}"
        shutil.copytree(bundles["onnxruntime"], copy)
        change(copy / name)
        refused = _run([sys.executable, str(copy / "run.py"), "--check"])
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "was altered" in refused.stderr or "was edited after edgecnn wrote it" in refused.stderr


def test_bench_refuses_to_overwrite_what_it_did_not_write(bundles: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "notes.json"
    other.write_text('{"mine": true}')
    bench = _run(["sh", str(bundles["onnxruntime"] / "bench.sh"), "--iters", "2", "--warmup", "1", "--out", str(other),
                  "--force"])
    assert bench.returncode == 2 and "is not a results file" in bench.stderr and json.loads(other.read_text())


# ---------------------------------------------------------------- early exit

def test_early_exit_bundle_runs_the_stage_loop(tmp_path: Path, pngs: tuple[Path, list[str]]) -> None:
    import torch

    from edgecnn.data import preprocess
    from edgecnn.registry import get_config

    out = build_bundle("b_lenet_fmnist", "onnxruntime", out=tmp_path / "b", dynamic_batch=True,
                       parity_samples=8).path
    m = read_manifest(out)
    assert len(m["early_exit"]["stages"]) >= 2
    run = _run([sys.executable, str(out / "run.py"), str(pngs[0])])
    assert run.returncode == 0, run.stderr
    assert all("[exit " in line for line in run.stdout.splitlines())
    from edgecnn.benchmarks.schema import read_results

    bench = _run(["sh", str(out / "bench.sh"), "--iters", "4", "--warmup", "1", "--batch", "4", "--threads", "1",
                  "--images", str(pngs[0]), "--out", str(tmp_path / "ee.json")])
    assert bench.returncode == 0, bench.stderr
    record = read_results(tmp_path / "ee.json")["records"][0]
    assert record["batch"] == 4 and sum(record["early_exit"]["exit_fractions"]) == pytest.approx(1.0)

    b = _bundle_module()
    model = b.Model(b.load_manifest(out), "onnxruntime", threads=1, directory=out)
    pixels = np.stack([b.decode_image(p) for p in sorted(pngs[0].iterdir())])
    x = preprocess(torch.from_numpy(pixels), get_config("b_lenet_fmnist")).numpy()
    with runtime.load(out, backend="early_exit", threads=1) as session:
        reference = session.classify(x)
    logits, exits = model.classify(x)
    np.testing.assert_array_equal(exits, reference.exits)
    np.testing.assert_allclose(logits, reference.logits, atol=1e-5)

    # the stage folders are edgecnn's too: --force replaces the bundle (a foreign file in one would be refused)
    build_bundle("b_lenet_fmnist", "onnxruntime", out=out, dynamic_batch=True, parity_samples=8, force=True)
    assert read_manifest(out)["early_exit"]
    stage = Path(read_manifest(out)["early_exit"]["stages"][0]["file"]).parent
    (out / stage / "model.plan").write_bytes(b"an engine")  # only a TensorRT bundle's setup.sh writes one
    with pytest.raises(UserError, match=f"{stage}/model.plan, which edgecnn did not write"):
        build_bundle("b_lenet_fmnist", "onnxruntime", out=out, dynamic_batch=True, force=True)
    (out / stage / "notes.txt").write_text("a user's file")
    with pytest.raises(UserError, match=f"{stage}/notes.txt, which edgecnn did not write"):
        build_bundle("b_lenet_fmnist", "onnxruntime", out=out, dynamic_batch=True, force=True)
    assert (out / stage / "notes.txt").read_text() == "a user's file"


def test_tegrastats_power_is_read_from_every_jetson_format() -> None:
    b = _bundle_module()
    orin = ("RAM 2448/7620MB (lfb 1x4MB) CPU [1%@729,0%@729] GR3D_FREQ 0% cpu@47.5C VDD_IN 5101mW/5101mW "
            "VDD_CPU_GPU_CV 477mW/477mW VDD_SOC 1433mW/1433mW")
    nano = "RAM 1587/3956MB CPU [5%@102,off,off,3%@102] GR3D_FREQ 0%@76 POM_5V_IN 2110/2110 POM_5V_GPU 0/0"
    agx_orin = ("RAM 3911/30536MB CPU [2%@729,0%@729] GR3D_FREQ 0% VDD_GPU_SOC 3144mW/3144mW VDD_CPU_CV 786mW/786mW "
                "VIN_SYS_5V0 3625mW/3625mW VDDQ_VDD2_1V8AO 605mW/605mW")
    thor = "RAM 9731/125772MB CPU [1%@972] GR3D_FREQ 0% VIN 21450mW/21450mW VDD_GPU 1200mW/1200mW VDD_CPU_SOC_MSS 4800mW/4800mW"
    assert b.tegrastats_power([orin, orin.replace("5101mW/5101mW", "6101mW/5601mW")])[0] == 5601.0
    assert b.tegrastats_power([nano]) == (2110.0, "POM_5V_IN: module input (Nano, TX1, TX2)")
    assert b.tegrastats_power([agx_orin]) == (3144.0 + 786.0 + 3625.0, "VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0: "
                                                                       "module power (AGX Orin)")
    assert b.tegrastats_power([thor]) == (21450.0, "VIN: module input (Thor)")
    assert b.tegrastats_power(["RAM 1587/3956MB CPU [5%@102]"]) == (None, None)


def test_cli_lists_deploy_and_jetson_int8_needs_modelopt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from edgecnn.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "deploy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["deploy", "--help"])
    text = capsys.readouterr().out
    assert "--target" in text and "jetson" in text and "--force" in text
    if importlib.util.find_spec("modelopt") is None:
        assert main(["deploy", MODEL, "--target", "jetson", "--precision", "int8", "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "INT8 for the tensorrt target needs NVIDIA ModelOpt" in err
        assert not list(tmp_path.iterdir())


def test_bundle_statistics_and_machine_record_are_edgecnns() -> None:
    """The bundle cannot import edgecnn, so it carries its own copies: they must not drift from the originals."""
    from edgecnn.benchmarks.machine import CPU_FLAGS, machine_info
    from edgecnn.benchmarks.schema import SCHEMA_VERSION
    from edgecnn.benchmarks.stats import latency_stats, round_spread

    b = _bundle_module()
    seconds = list(np.random.default_rng(3).gamma(2.0, 0.004, 101))
    assert b.latency_stats(seconds, 4) == latency_stats(seconds, 4)
    rounds = [seconds[:50], seconds[50:]]
    assert b.percent_spread(rounds) == round_spread(rounds)
    assert set(machine_info()) <= set(b.machine_info()) and set(CPU_FLAGS) <= set(b.CPU_FLAGS)
    assert b.machine_info()["name"] == machine_info()["name"]
    assert b.RESULTS_SCHEMA_VERSION == SCHEMA_VERSION


def test_calibration_flags_apply_to_int8_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from edgecnn.cli import main

    assert main(["deploy", "lenet5_fmnist", "--target", "onnxruntime", "--calibrator", "minmax",
                 "--out", str(tmp_path / "b")]) == 2
    assert "apply to --precision int8, not fp32" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_int8_bundle_runs_its_quantized_graph(tmp_path: Path, pngs: tuple[Path, list[str]],
                                              capsys: pytest.CaptureFixture) -> None:
    from edgecnn.cli import main

    out = tmp_path / "b"
    assert main(["deploy", "lenet5_fmnist", "--target", "onnxruntime", "--precision", "int8", "--calibrator",
                 "minmax", "--calib-samples", "64", "--out", str(out), "--no-progress"]) == 0
    assert "calibration: minmax" in capsys.readouterr().out
    m = read_manifest(out)
    assert m["precision"] == "int8" and m["calibration"]
    run = _run([sys.executable, str(out / "run.py"), str(pngs[0])])
    right = sum(_predictions(run.stdout)[f"{i:02d}.png"] == pngs[1][i] for i in range(IMAGES))
    assert run.returncode == 0 and right >= 16  # lenet5_fmnist: ~91 % at INT8
