"""A deploy bundle facing hostile or odd input: files dropped into it, manifests that lie or are not manifests,
images of unusual depth or size, signatures, class names with control characters, a full disk and Ctrl-C.
Each case is one clear line (exit 2) and nothing run, lost or left behind."""
from __future__ import annotations

import json
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from edgecnn.errors import UserError
from edgecnn.export import read_manifest
from edgecnn.export.deploy import BUNDLE_KIND, build_bundle, bundle_code
from edgecnn.export.manifest import SIGNATURE_NAME, manifest_digest

MODEL = "lenet5_fmnist"
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
QUICK_BENCH = ["--iters", "2", "--warmup", "1", "--rounds", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An Ed25519 key pair as PEM files (the signer's and another one), as openssl genpkey/pkey would write them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = tmp_path_factory.mktemp("keys")
    paths = {}
    for name in ("signer", "other"):
        key = Ed25519PrivateKey.generate()
        paths[name] = folder / f"{name}.pem"
        paths[name].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        paths[f"{name}.pub"] = folder / f"{name}.pub.pem"
        paths[f"{name}.pub"].write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return paths


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> dict[str, Path]:
    """Built once: an ONNX Runtime bundle of lenet5_fmnist, the same signed, and a Jetson (TensorRT) one."""
    root = tmp_path_factory.mktemp("bundles")
    return {"plain": build_bundle(MODEL, "onnxruntime", out=root / "plain", parity_samples=8).path,
            "signed": build_bundle(MODEL, "onnxruntime", out=root / "signed", parity_samples=8,
                                   sign=keys["signer"]).path,
            "jetson": build_bundle(MODEL, "jetson", out=root / "jetson", parity_samples=8).path}


@pytest.fixture
def bundle(templates: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh copy of the plain bundle, for a test to spoil."""
    return Path(shutil.copytree(templates["plain"], tmp_path / "bundle", symlinks=True))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return path


def _run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300, **kwargs)


def _one_line_error(done: subprocess.CompletedProcess, *says: str) -> None:
    """Exit 2 and one line of error (bench.py's progress line aside), no traceback."""
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("timing ")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for text in says:
        assert text in done.stderr, done.stderr


def _rewrite_manifest(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the manifest and seal it again with a correct digest: a consistent lie, as an attacker writes it."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _check(directory: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, str(directory / "run.py"), "--check", "--threads", "1", *extra])


# ---------------------------------------------------------------- point 2: --force and files edgecnn did not write

def test_force_keeps_a_users_timing_cache_in_an_onnxruntime_bundle(templates: dict[str, Path], bundle: Path,
                                                                    tmp_path: Path) -> None:
    (bundle / "timing.cache").write_text("a user's file")
    with pytest.raises(UserError, match=r"onnxruntime bundle but also holds timing\.cache, which edgecnn did not "):
        build_bundle(MODEL, "onnxruntime", out=bundle, force=True, parity_samples=8)
    assert (bundle / "timing.cache").read_text() == "a user's file"
    read_manifest(bundle)  # the earlier bundle, untouched

    jetson = Path(shutil.copytree(templates["jetson"], tmp_path / "jetson"))
    for name in ("model.plan", "engine.json", "timing.cache", "build_engine.log"):  # what its setup.sh writes
        (jetson / name).write_text("written on the Jetson")
    assert bundle_code().unlisted_files(read_manifest(jetson), jetson) == []
    build_bundle(MODEL, "jetson", out=jetson, force=True, parity_samples=8)
    assert not (jetson / "timing.cache").exists()


# ---------------------------------------------------------------- point 4: nothing unlisted is imported

def test_files_dropped_into_a_bundle_are_never_imported(bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    dropped = ("argparse.py", "numpy.py", "__future__.py", "json.py")
    for name in dropped:
        (bundle / name).write_text(f"open({str(marker)!r}, 'a').write({name!r} + ' ')\n")
    setup = _run(["sh", str(bundle / "setup.sh")])
    assert setup.returncode == 0, setup.stdout + setup.stderr
    bench = _run(["sh", str(bundle / "bench.sh"), *QUICK_BENCH, "--out", str(tmp_path / "r.json")])
    assert bench.returncode == 0, bench.stderr
    assert not marker.exists(), marker.read_text()
    check = _check(bundle)
    assert check.returncode == 0 and not marker.exists()
    assert "not listed in manifest.json" in check.stderr and all(name in check.stderr for name in dropped)


# ---------------------------------------------------------------- point 5: the manifest names files inside only

@pytest.mark.parametrize("case", ["parent", "absolute", "symlink", "model_not_listed"])
def test_manifest_naming_files_outside_the_bundle_is_refused(bundle: Path, case: str) -> None:
    model = bundle / "model.onnx"
    entry = json.loads((bundle / "manifest.json").read_text())["files"]["model.onnx"]
    if case == "parent":
        shutil.copyfile(model, bundle.parent / "outside.onnx")
        _rewrite_manifest(bundle, lambda m: m["files"].update({"../outside.onnx": entry}))
        says = "'../outside.onnx', which is not a file inside the bundle"
    elif case == "absolute":
        outside = bundle.parent / "absolute.onnx"
        shutil.copyfile(model, outside)
        _rewrite_manifest(bundle, lambda m: m["files"].update({str(outside): entry}))
        says = "which is not a file inside the bundle"
    elif case == "symlink":
        shutil.move(model, bundle.parent / "elsewhere.onnx")
        model.symlink_to(bundle.parent / "elsewhere.onnx")
        says = "model.onnx is a symbolic link"
    else:
        shutil.copyfile(model, bundle / "unhashed.onnx")
        _rewrite_manifest(bundle, lambda m: m["model_files"].update(onnx="unhashed.onnx"))
        says = "model file 'unhashed.onnx' is not listed"
    _one_line_error(_check(bundle), says)


# ---------------------------------------------------------------- point 18: manifests that are not manifests

def _deep(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


def _huge(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(17 << 20)  # sparse: no disk spent


@pytest.mark.parametrize("spoil, says", [
    (lambda p: p.write_text("[]"), "holds a JSON list, not an edgecnn bundle manifest"),
    (lambda p: p.write_text("null"), "holds a JSON NoneType"),
    (lambda p: p.write_text('"x"'), "holds a JSON str"),
    (lambda p: p.write_text("{}"), "was edited after edgecnn wrote it"),
    (lambda p: (p.unlink(), p.mkdir()), "is not a regular file"),
    (_deep, "nests deeper than Python parses"),
    (lambda p: p.write_text('{"n": ' + "7" * 5000 + "}"), "digits long"),
    (_huge, "more than a bundle manifest can be"),
])
def test_bundle_manifest_that_is_not_a_manifest_is_one_line(bundle: Path, spoil: Callable[[Path], Any],
                                                            says: str) -> None:
    if "digits" in says and not hasattr(sys, "set_int_max_str_digits"):
        says = "was edited after edgecnn wrote it"  # Pythons before 3.11 read any integer
    spoil(bundle / "manifest.json")
    with pytest.raises(bundle_code().BundleError, match=re.escape(says)):
        bundle_code().load_manifest(bundle)


@pytest.mark.parametrize("field, value, says", [
    ("preprocessing.resize", [60000, 60000], "preprocessing.resize must be [height, width], each an integer from 1"),
    ("input.shape", [1, 1, 60000, 60000], "input.shape must be [batch, channels, height, width]"),
    ("model.num_classes", "ten", "model.num_classes must be an integer"),
    ("class_names", ["a", "b"], "class_names has 2 names for model.num_classes 10"),
    ("preprocessing.std", [0], "preprocessing.std must be a list of non-zero numbers"),
    ("files", [], "files must be an object"),
    ("bundle", None, "bundle.kind"),
])
def test_bundle_manifest_fields_of_the_wrong_type_or_size_are_one_line(bundle: Path, field: str, value: Any,
                                                                       says: str) -> None:
    def change(manifest: dict[str, Any]) -> None:
        *parents, last = field.split(".")
        target = manifest
        for key in parents:
            target = target[key]
        target[last] = value

    _rewrite_manifest(bundle, change)
    with pytest.raises(bundle_code().BundleError, match=re.escape(says)):
        bundle_code().load_manifest(bundle)


def test_run_py_says_a_bad_manifest_in_one_line(bundle: Path, image: Path) -> None:
    _rewrite_manifest(bundle, lambda m: m["preprocessing"].update(resize=[60000, 60000]))
    _one_line_error(_run([sys.executable, str(bundle / "run.py"), str(image)]), "preprocessing.resize must be")
    (bundle / "manifest.json").write_text("[]")
    _one_line_error(_run([sys.executable, str(bundle / "run.py"), str(image)]), "not an edgecnn bundle manifest")


# ---------------------------------------------------------------- points 12/13: image depth and decompression bombs

def test_16_bit_and_float_images_keep_their_range(tmp_path: Path) -> None:
    from PIL import Image

    b = bundle_code()
    values = np.arange(0, 65536, 257, dtype=np.uint16)[:256].reshape(16, 16)  # 0, 257, ..., 65535: 8-bit × 257
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    np.testing.assert_allclose(b.decode_image(tmp_path / "deep.png")[0], values / 257, atol=1e-3)

    unit = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(unit).save(tmp_path / "unit.tiff")
    np.testing.assert_allclose(b.decode_image(tmp_path / "unit.tiff")[0], unit * 255, atol=1e-3)

    Image.fromarray(unit * 1000).save(tmp_path / "raw.tiff")
    with pytest.raises(b.BundleError, match="floating-point pixels outside 0–1"):
        b.decode_image(tmp_path / "raw.tiff")


def test_run_py_classifies_a_16_bit_png_as_its_8_bit_original(bundle: Path, image: Path, tmp_path: Path) -> None:
    from PIL import Image

    eight = np.asarray(Image.open(image))
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    outputs = [_run([sys.executable, str(bundle / "run.py"), str(path), "--threads", "1"])
               for path in (image, tmp_path / "deep.png")]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    assert outputs[0].stdout.split(": ", 1)[1] == outputs[1].stdout.split(": ", 1)[1]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width × height grey pixels (what Pillow checks before decoding), with no real data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_is_one_line_and_the_limit_can_be_raised(bundle: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 20000, 20000)
    run = _run([sys.executable, str(bundle / "run.py"), str(bomb)])
    _one_line_error(run, str(bomb), "--max-image-pixels allows (89,478,485)")
    bench = _run(["sh", str(bundle / "bench.sh"), *QUICK_BENCH, "--images", str(bomb),
                  "--out", str(tmp_path / "r.json")])
    _one_line_error(bench, str(bomb), "--max-image-pixels")
    raised = _run([sys.executable, str(bundle / "run.py"), str(bomb), "--max-image-pixels", str(20000 * 20000)])
    _one_line_error(raised, "is not an image Pillow can decode")  # read past the size check: its data is truncated
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- points 16/17: bench.sh --out and Ctrl-C

def test_bench_out_in_a_missing_folder_is_one_line(bundle: Path, tmp_path: Path) -> None:
    bench = _run(["sh", str(bundle / "bench.sh"), *QUICK_BENCH, "--out", str(tmp_path / "missing/dir/r.json")])
    _one_line_error(bench, "is not an existing folder")
    assert not (tmp_path / "missing").exists()


def test_bench_on_a_full_disk_leaves_nothing(bundle: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the results write fail as a full disk does (an OSError mid-write)."""
    out = tmp_path / "results" / "r.json"
    out.parent.mkdir()
    bench = _run(["sh", str(bundle / "bench.sh"), *QUICK_BENCH, "--out", str(out)],
                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512)))
    _one_line_error(bench, f"cannot write {out}", "nothing was written")
    assert list(out.parent.iterdir()) == []


def test_bench_ctrl_c_is_one_line_and_leaves_nothing(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    bench = subprocess.Popen(["sh", str(bundle / "bench.sh"), "--iters", "100000000", "--threads", "1", "--out",
                              str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    if not select.select([bench.stderr], [], [], 120)[0]:  # never a hang, whatever bench.py does
        bench.kill()
        pytest.fail(f"bench.sh said nothing in 120 s: {bench.communicate()}")
    started = bench.stderr.readline()  # the model is loaded and being timed
    assert started.startswith(f"timing {MODEL} on onnxruntime"), started + bench.stderr.read()
    bench.send_signal(signal.SIGINT)  # bench.sh execs python, so this reaches bench.py as Ctrl-C does
    stdout, stderr = bench.communicate(timeout=120)
    assert bench.returncode == 130 and stderr == "bench.py: interrupted\n" and stdout == "", stderr
    assert list(tmp_path.iterdir()) == [bundle]


# ---------------------------------------------------------------- point 7: signatures

def test_signed_bundle_verifies_and_refuses_tampering(templates: dict[str, Path], keys: dict[str, Path],
                                                      tmp_path: Path) -> None:
    signed = Path(shutil.copytree(templates["signed"], tmp_path / "signed"))
    manifest = read_manifest(signed)
    assert manifest["signature"]["file"] == SIGNATURE_NAME == bundle_code().SIGNATURE
    assert (signed / SIGNATURE_NAME).stat().st_size == 64
    ok = _check(signed, "--verify-key", str(keys["signer.pub"]))
    assert ok.returncode == 0 and "verified (signature included)" in ok.stdout, ok.stderr
    setup = _run(["sh", str(signed / "setup.sh"), "--verify-key", os.path.relpath(keys["signer.pub"])])
    assert setup.returncode == 0 and "signature included" in setup.stdout, setup.stdout + setup.stderr
    if shutil.which("openssl"):  # the threat model's independent check: a verifier from outside the bundle
        openssl = _run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(keys["signer.pub"]), "-rawin",
                        "-in", str(signed / "manifest.json"), "-sigfile", str(signed / SIGNATURE_NAME)])
        assert openssl.returncode == 0, openssl.stdout + openssl.stderr

    _one_line_error(_check(signed, "--verify-key", str(keys["other.pub"])), "does not match its signature")
    _one_line_error(_check(signed, "--verify-key", str(keys["signer"])), "is not a PEM public key")

    # an attacker who changes the bundle's code and recomputes every hash: the hashes pass, the signature does not
    code = signed / "edgecnn_bundle.py"
    code.write_text(code.read_text() + "\nprint('attacker code ran')\n")
    _rewrite_manifest(signed, lambda m: m["files"].update(
        {code.name: {"bytes": code.stat().st_size, "sha256": bundle_code()._sha256(code)}}))
    unsigned = _check(signed)
    assert unsigned.returncode == 0 and "attacker code ran" in unsigned.stdout  # what manifest_sha256 cannot tell
    _one_line_error(_check(signed, "--verify-key", str(keys["signer.pub"])), "does not match its signature")


def test_unsigned_bundle_is_refused_with_verify_key_and_runs_without(bundle: Path, keys: dict[str, Path]) -> None:
    _one_line_error(_check(bundle, "--verify-key", str(keys["signer.pub"])), "this bundle is not signed")
    assert _check(bundle).returncode == 0


def test_signed_bundle_is_replaced_by_force_and_bad_keys_are_one_line(templates: dict[str, Path],
                                                                       keys: dict[str, Path], tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from edgecnn.cli import main

    signed = Path(shutil.copytree(templates["signed"], tmp_path / "signed"))
    build_bundle(MODEL, "onnxruntime", out=signed, force=True, parity_samples=8)  # its signature is edgecnn's
    assert not (signed / SIGNATURE_NAME).exists() and "signature" not in read_manifest(signed)

    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    locked = tmp_path / "locked.pem"
    locked.write_bytes(serialization.load_pem_private_key(keys["signer"].read_bytes(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    for key, says in ((tmp_path / "absent.pem", "does not exist; make one with: openssl genpkey"),
                      (rsa_key, "is not an Ed25519 key"), (locked, "is encrypted"),
                      (keys["signer.pub"], "is not a PEM private key")):
        assert main(["deploy", MODEL, "--target", "onnxruntime", "--sign", str(key), "--out",
                     str(tmp_path / "new"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "new").exists()


# ---------------------------------------------------------------- point 20: control characters in class names

def test_class_names_with_control_characters_are_printed_escaped(bundle: Path, image: Path) -> None:
    names = [f"class{i}\x1b[31m\nfake.png: Trouser 1.000\u202e" for i in range(10)]
    _rewrite_manifest(bundle, lambda m: m.update(class_names=names))
    run = _run([sys.executable, str(bundle / "run.py"), str(image), "--top-k", "10", "--threads", "1"])
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("\n") == 1 and "\x1b" not in run.stdout and "\u202e" not in run.stdout
    assert "\\x1b[31m\\nfake.png" in run.stdout and "\\u202e" in run.stdout


# ---------------------------------------------------------------- point 21: setup.sh options

def test_cpu_setup_refuses_unknown_options(bundle: Path) -> None:
    for bad, says in ((["--bogus"], "unknown option --bogus"), (["--verify-key"], "--verify-key needs a value")):
        setup = _run(["sh", str(bundle / "setup.sh"), *bad])
        assert setup.returncode == 2 and says in setup.stderr and "usage: ./setup.sh" in setup.stderr, setup.stderr
        assert setup.stderr.count("\n") == 2 and setup.stdout == ""


# ---------------------------------------------------------------- point 19: one machine description

def test_bundle_results_are_from_this_machine_for_pick(bundle: Path, tmp_path: Path) -> None:
    from edgecnn.benchmarks.machine import CPU_FLAGS, describe, machine_info, same_machine
    from edgecnn.benchmarks.schema import read_results

    out = tmp_path / "device.json"
    bench = _run(["sh", str(bundle / "bench.sh"), *QUICK_BENCH, "--out", str(out)])
    assert bench.returncode == 0, bench.stderr
    measured = read_results(out)["machine"]
    here = machine_info()
    assert same_machine(measured, here) and describe(measured) == describe(here)
    assert measured["cpu_flags"] == here["cpu_flags"] and tuple(measured["cpu_flags"]) == CPU_FLAGS
    arm_flags = ("asimd", "asimddp", "fphp")
    older = {**here, "cpu_flags": {f: on for f, on in here["cpu_flags"].items() if f not in arm_flags}}
    assert same_machine(older, here)  # results written when edgecnn recorded 10 flags still match
    flipped = {**here, "cpu_flags": {**here["cpu_flags"], "avx2": not here["cpu_flags"]["avx2"]}}
    assert not same_machine(flipped, here)


def test_bundle_copies_match_edgecnns() -> None:
    """The bundle cannot import edgecnn, so it names these itself: they must not drift."""
    from edgecnn.export.tensorrt import BUILD_LOG, ENGINE_RECORD, PLAN_FILE, TIMING_CACHE
    from edgecnn.text import printable

    assert bundle_code().BUNDLE_KIND == BUNDLE_KIND and bundle_code().SIGNATURE == SIGNATURE_NAME
    assert set(bundle_code().DEVICE_BUILT) == {PLAN_FILE, ENGINE_RECORD, TIMING_CACHE, BUILD_LOG}
    for text in ("Ankle boot", "a\nb\x1b[31m\u202e\x00\udcff é\t"):
        assert bundle_code().printable(text) == printable(text)
