"""Deploy bundles: one folder a person copies to the device and runs there, with nothing of edgecnn installed.

    from edgecnn.export.deploy import build_bundle
    bundle = build_bundle("resnet18_fmnist", target="jetson", precision="fp16", out="bundle/")

A bundle is the artifact the export pipeline writes for the bundle's export target (jetson → tensorrt,
openvino → openvino, onnxruntime → onnx), plus `setup.sh` (checks the device, builds a TensorRT engine
on a Jetson), `run.py` (top-k classes of images), `bench.py`/`bench.sh` (results in edgecnn's bench
schema), `README.md` and `requirements.txt`, all of them named with their SHA-256 in the artifact's
`manifest.json`, whose `bundle` section marks the folder as a bundle. So the bundle is still an artifact
(`edgecnn inspect` and `runtime.load` read it), run.py checks every file before it loads a model, and
`--force` replaces only a bundle edgecnn wrote. The bundle's Python code lives once, in templates/
(`edgecnn_bundle.py`: manifest and hash checks, preprocessing, one runner class per runtime, the
early-exit loop, benchmark statistics, the machine description); deploy targets differ in data only, and
edgecnn itself uses that same file (`bundle_code`) where it needs what a bundle knows.

`sign=KEY` (`edgecnn deploy --sign`) signs the finished manifest.json with an Ed25519 key and writes
manifest.json.sig beside it; `setup.sh`/`run.py --verify-key PUB` refuse a bundle whose signature does not verify.
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.util
import os
import shutil
import stat
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecnn.errors import UserError
from edgecnn.registries import Registry

BUNDLE_KIND = "edgecnn-deploy-bundle"
TEMPLATES = Path(__file__).with_name("templates")
SHARED_FILES = ("edgecnn_bundle.py", "run.py", "bench.py", "bench.sh")
EXECUTABLE = ("run.py", "bench.py", "bench.sh", "setup.sh")
EXPORT_SUBDIR = "export"  # inside the staging directory: where the pipeline writes its artifact first


@dataclass(frozen=True)
class DeployTarget:
    """A kind of device: which runtime it runs (and so which export target), and how setup.sh checks it."""
    name: str
    backend: str                  # the runtime run.py uses (edgecnn_bundle.RUNNERS; edgecnn.export.backends)
    fallback: str                 # the one it uses when `backend` cannot run yet (no engine built)
    setup_template: str
    requirements: tuple[str, ...]
    description: str
    module: str = ""              # the runtime's Python module and distribution, for setup.sh
    distribution: str = ""
    cpu_flags: tuple[str, ...] = ()                       # shown by setup.sh
    required_flags: tuple[tuple[str, str], ...] = ()      # (precision, flag) the precision cannot run without

    @property
    def export_target(self) -> str:
        """The export target whose artifacts `backend` runs."""
        from edgecnn.export.backends import BACKENDS

        return BACKENDS.lookup(self.backend).target_name

    @property
    def precisions(self) -> tuple[str, ...]:
        from edgecnn.export.targets import get_target

        return get_target(self.export_target).precisions

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise UserError(f"the {self.name} target deploys {', '.join(self.precisions)}, not {precision!r}")


DEPLOY_TARGETS: Registry[DeployTarget] = Registry("deploy target")
register_deploy_target = DEPLOY_TARGETS.register
get_deploy_target = DEPLOY_TARGETS.lookup
# Each backend module registers the device kinds its runtime serves (export/backends/<name>.py), below.


@dataclass
class BundleResult:
    path: Path
    manifest: dict[str, Any]


@functools.lru_cache(maxsize=None)
def bundle_code() -> types.ModuleType:
    """templates/edgecnn_bundle.py, the code every bundle runs, as a module: edgecnn uses it rather than a copy
    that could drift (the machine record of results files, the files a bundle may hold besides its listed ones)."""
    spec = importlib.util.spec_from_file_location("edgecnn.export.deploy.edgecnn_bundle",
                                                  TEMPLATES / "edgecnn_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_bundle_destination(out: Path | str, force: bool) -> Path:
    """As exports do (edgecnn's own output only, with --force), and an export artifact is not a bundle: --force
    replaces a bundle holding only what its manifest lists and what edgecnn's scripts write for that bundle's
    target (a timing.cache only in a TensorRT bundle, where setup.sh builds it)."""
    from edgecnn.export.manifest import MANIFEST_NAME
    from edgecnn.export.staging import check_destination, shown
    from edgecnn.jsonfile import read_json

    out = check_destination(out, force)
    if out.exists():
        manifest = read_json(out / MANIFEST_NAME, "bundle manifest")  # check_destination found it edgecnn's
        bundle = manifest.get("bundle")
        if not isinstance(bundle, dict) or bundle.get("kind") != BUNDLE_KIND:
            raise UserError(f"{out} is an edgecnn export artifact, not a deploy bundle; --force replaces only an "
                            "earlier bundle: choose another --out")
        foreign = bundle_code().unlisted_files(manifest, out)
        if foreign:
            raise UserError(f"{out} is an edgecnn {bundle.get('target')} bundle but also holds {shown(foreign)}, which "
                            "edgecnn did not write for it; move them out or choose another --out")
    return out


def load_signing_key(path: Path | str) -> Any:
    """The Ed25519 private key of the PEM file `path` (as `openssl genpkey -algorithm ed25519` writes it), read
    before any work so a wrong key costs nothing."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
    except ImportError as e:
        raise UserError("--sign needs the cryptography package: pip install 'edgecnn[sign]'") from e
    path = Path(path)
    make = "make one with: openssl genpkey -algorithm ed25519 -out KEY.pem"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > 1 << 16:
            raise UserError(f"signing key {path} is not a PEM key file; {make}")
        pem = path.read_bytes()
    except FileNotFoundError as e:
        raise UserError(f"signing key {path} does not exist; {make}") from e
    except OSError as e:
        raise UserError(f"cannot read signing key {path}: {e.strerror or e}") from e
    try:
        key = load_pem_private_key(pem, password=None)
    except TypeError as e:  # a passphrase-protected key
        raise UserError(f"signing key {path} is encrypted; give an unencrypted copy (openssl pkey -in {path} -out "
                        "PLAIN.pem), readable only by you") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UserError(f"signing key {path} is not a PEM private key; {make}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"signing key {path} is not an Ed25519 key; edgecnn signs bundles with Ed25519: {make}")
    return key


def signature_record(key: Any) -> dict[str, str]:
    """The manifest's `signature` section: where the signature is and which key made it (SHA-256 of its raw
    32-byte public key, to tell keys apart; trust comes from the public key the verifier is given, never this)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from edgecnn.export.manifest import SIGNATURE_NAME

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"file": SIGNATURE_NAME, "algorithm": "Ed25519", "public_key_sha256": hashlib.sha256(raw).hexdigest()}


def sign_manifest(directory: Path, key: Any) -> Path:
    """manifest.json.sig: the raw 64-byte Ed25519 signature of manifest.json's bytes as written (so `openssl
    pkeyutl -verify -rawin` checks it too)."""
    from edgecnn.export.manifest import MANIFEST_NAME, SIGNATURE_NAME

    path = directory / SIGNATURE_NAME
    path.write_bytes(key.sign((directory / MANIFEST_NAME).read_bytes()))
    return path


def build_bundle(name: str, target: str, precision: str | None = "fp32", out: Path | str = "bundle", *,
                 checkpoint: Path | str | None = None, force: bool = False, progress: bool = False,
                 sign: Path | str | None = None, timing_only: bool = False, **export_options: Any) -> BundleResult:
    """Export the MODEL `name` (a zoo name, a checkpoint, an ONNX file: `edgecnn.model_ref`) for the device kind
    `target`, or take an artifact folder as it is, and write the bundle into `out`, atomically.

    `export_options` go to `edgecnn.export.api.export` (batch, dynamic_batch, input_size, calibration, data, mean,
    ...); `precision` None is an artifact's own (fp32 otherwise). A bundle whose parity check failed is not written,
    nor a latency-only one (INT8 calibrated on synthetic inputs) unless `timing_only`. `sign`: an Ed25519 private key
    PEM file to sign the manifest with.
    """
    from edgecnn.export.manifest import describe_files, read_manifest, write_manifest
    from edgecnn.export.staging import staging_directory
    from edgecnn.model_ref import resolve_model

    deploy = get_deploy_target(target)
    ref = resolve_model(name, checkpoint=checkpoint)
    source = read_manifest(ref.path) if ref.kind == "artifact" else None
    precision = precision or (source["precision"] if source else "fp32")
    deploy.check_precision(precision)
    calibration = export_options.get("calibration")
    _check_timing_only(ref.label, bool(source and source.get("latency_only")) or
                       bool(calibration is not None and calibration.synthetic), timing_only)
    key = load_signing_key(sign) if sign is not None else None
    out = check_bundle_destination(out, force)
    with staging_directory(out, force) as staging:
        if source is not None:
            manifest = _artifact_as_is(ref.path, source, deploy, precision, staging)
        else:
            manifest = _exported(ref, deploy, precision, staging, progress, export_options)
        if timing_only:
            manifest["notes"].append("deployed for timing only (--timing-only): its accuracy is unknown")
        if key is not None:
            manifest["signature"] = signature_record(key)
        written = _write_bundle_files(staging, deploy, manifest)
        manifest["bundle"] = {"kind": BUNDLE_KIND, "target": deploy.name, "description": deploy.description,
                              "backend": deploy.backend, "fallback": deploy.fallback, "files": written,
                              "timing_only": timing_only,
                              "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        manifest["files"].update(describe_files(staging, written))
        write_manifest(staging, manifest)
        if key is not None:
            sign_manifest(staging, key)
    return BundleResult(out, read_manifest(out))


def _check_timing_only(label: str, latency_only: bool, timing_only: bool) -> None:
    """A latency-only artifact (synthetic calibration, accuracy unknown) is bundled only when said to be for timing."""
    if latency_only and not timing_only:
        raise UserError(f"{label} is latency-only (INT8 calibrated on synthetic inputs, accuracy unknown): a bundle "
                        "of it would classify without anyone knowing how well; pass --timing-only to bundle it for "
                        "timing, or calibrate on real data (--data or --calib-data DIR)")


def _parity_failure(label: str, manifest: dict[str, Any]) -> UserError | None:
    failed = [p["backend"] for p in manifest["parity"] if not p["passed"]]
    if not failed:
        return None
    return UserError(f"the {manifest['target']} {manifest['precision']} export of {label} failed its parity check on "
                     f"{', '.join(failed)}; no bundle was written (`edgecnn export` shows the details)")


def _exported(ref: Any, deploy: DeployTarget, precision: str, staging: Path, progress: bool,
              export_options: dict[str, Any]) -> dict[str, Any]:
    """Export the MODEL into the staging directory; its manifest (a failed parity check writes no bundle)."""
    from edgecnn.export.api import export

    model = ref.path if ref.is_file else ref.name
    result = export(model, deploy.export_target, precision, staging / EXPORT_SUBDIR, checkpoint=ref.checkpoint,
                    progress=progress, fail_on_parity=False, **export_options)
    failure = _parity_failure(ref.label, result.manifest)
    if failure:
        raise failure
    for entry in os.listdir(result.path):
        os.replace(result.path / entry, staging / entry)
    result.path.rmdir()
    return result.manifest


def _artifact_as_is(path: Path, manifest: dict[str, Any], deploy: DeployTarget, precision: str,
                    staging: Path) -> dict[str, Any]:
    """Copy an artifact folder's manifest and listed files into the staging directory, never exporting it again."""
    from edgecnn.export.manifest import MANIFEST_NAME, artifact_file

    if manifest.get("bundle"):
        raise UserError(f"{path} is already a deploy bundle; copy it, or bundle the artifact or model it came from")
    if manifest["target"] != deploy.export_target or manifest["precision"] != precision:
        raise UserError(f"{path} is a {manifest['target']} {manifest['precision']} artifact; a {deploy.name} bundle at "
                        f"{precision} takes a {deploy.export_target} {precision} one: export that, or give the model")
    failure = _parity_failure(str(path), manifest)
    if failure:
        raise failure
    for name in (MANIFEST_NAME, *manifest["files"]):
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact_file(path, name), staging / name)
    return manifest


def _write_bundle_files(directory: Path, deploy: DeployTarget, manifest: dict[str, Any]) -> list[str]:
    for name in SHARED_FILES:
        shutil.copyfile(TEMPLATES / name, directory / name)
    (directory / "setup.sh").write_text(render_setup(deploy, manifest))
    (directory / "requirements.txt").write_text(
        f"# runtime side of this {deploy.name} bundle: pip install -r requirements.txt\n"
        + "".join(f"{line}\n" for line in deploy.requirements))
    (directory / "README.md").write_text(render_readme(deploy, manifest))
    for name in EXECUTABLE:
        (directory / name).chmod(0o755)
    return [*SHARED_FILES, "setup.sh", "requirements.txt", "README.md"]


def _stage_onnx_files(manifest: dict[str, Any]) -> list[str]:
    section = manifest.get("early_exit")
    if section:
        return [stage["model_files"]["onnx"] for stage in section["stages"]]
    return [manifest["model_files"]["onnx"]]


def render_setup(deploy: DeployTarget, manifest: dict[str, Any]) -> str:
    text = (TEMPLATES / deploy.setup_template).read_text()
    required = " ".join(flag for precision, flag in deploy.required_flags if precision == manifest["precision"])
    values = {"@@RUNTIME@@": deploy.distribution or deploy.backend, "@@MODULE@@": deploy.module,
              "@@DIST@@": deploy.distribution, "@@CPU_FLAGS@@": " ".join(deploy.cpu_flags),
              "@@REQUIRED_FLAGS@@": f" {required}" if required else "", "@@PRECISION@@": manifest["precision"]}
    if "@@STAGES@@" in text:
        values["@@STAGES@@"] = f'onnx_files="{" ".join(_stage_onnx_files(manifest))}"'
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _measured_on(m: dict[str, Any]) -> str:
    """Which weights and which data the numbers above belong to (the README says it, as every output does)."""
    from edgecnn.model_ref import WeightsData

    weights = m["model"]["weights"]
    data = WeightsData.from_record(weights.get("dataset") or {})
    sha = f" (SHA-256 {weights['sha256'][:16]}…)" if weights.get("sha256") else ""
    said = (f"the test split of {data.said}" if data else "random inputs (no dataset is known for these weights)")
    latency = (" This artifact is latency-only: INT8 calibrated on synthetic inputs, its accuracy is unknown."
               if m.get("latency_only") else "")
    return f"Weights: {weights['source']}{sha}. Parity inputs and test top-1: {said}.{latency}"


def render_readme(deploy: DeployTarget, m: dict[str, Any]) -> str:
    """What is inside, how to run it, and what was measured where (the export's parity and accuracy)."""
    model, export = m["model"], m["export"]
    shape = "×".join(str(d) for d in m["input"]["shape"])
    lines = [f"# {model['name']} — {deploy.name} bundle ({m['precision']})", "",
             f"{deploy.description}. Made by edgecnn {model['edgecnn_version']} on {export['host']} "
             f"({export['cpu']}) at {export['created_utc']}; weights: {model['weights']['source']}.", "",
             "## Run it", "", "```sh", "./setup.sh                       # checks this device, says what is missing"
             + (", builds the TensorRT engine (--dla-core N for a DLA)" if deploy.backend == "tensorrt" else ""),
             "python3 run.py IMAGE_OR_FOLDER --top-k 5",
             "./bench.sh --iters 200           # latency p50/p90/p99 + throughput → bench-HOST-....json"
             + (" (--power: tegrastats energy)" if deploy.backend == "tensorrt" else ""),
             "./bench.sh --images LABELLED_DIR # + top-1 on a folder of one sub-folder per class (run.py prints it too)",
             "```", "",
             f"Input: `{m['input']['name']}` {shape} {m['input']['dtype']} NCHW; run.py preprocesses images exactly as "
             "manifest.json's `preprocessing` says (numpy + Pillow only):", ""]
    lines += [f"- {step}" for step in m["preprocessing"]["steps"]]
    lines += ["", f"mean {m['preprocessing']['mean']}, std {m['preprocessing']['std']}; classes: "
              f"{', '.join(m['class_names']) if m['class_names'] else 'class indices'}.", ""]
    if deploy.backend == "tensorrt":
        lines += ["On a Jetson without a built engine (and on any other machine) run.py says so and runs the ONNX "
                  "model on ONNX Runtime's CPU provider. The engine is built here, on the device, because TensorRT "
                  "engines are tied to the GPU and TensorRT version that built them; engine.json records both and "
                  "run.py refuses an engine built elsewhere.", ""]
    if m.get("early_exit"):
        section = m["early_exit"]
        lines += [f"Early exit: {len(section['stages'])} stage graphs; a sample leaves at stage k when the softmax "
                  f"entropy of its exit is below thresholds[k] = {section['thresholds']} (tuned on the validation "
                  "split); run.py prints each image's exit.", ""]
    lines += ["`bench.sh` writes edgecnn's benchmark results schema: merge it with other machines' results in "
              "`edgecnn report a.json device.json --out report/`.", "",
              "## What was measured where", "",
              f"At export, on {export['host']} ({export['cpu']}), each parity check against the eager PyTorch model:",
              "", "| backend | what it ran | samples | top-1 agreement | max abs diff | passed | test top-1 |",
              "|---|---|---|---|---|---|---|"]
    for p in m["parity"]:
        test = (p.get("test_split") or {}).get("accuracy")
        lines.append(f"| {p['backend']} | {p.get('measures') or 'the artifact'} | {p['samples']} | "
                     f"{p.get('top1_agreement', 0) * 100:.1f}% | {p.get('max_abs_diff', float('nan')):.2e} | "
                     f"{'yes' if p['passed'] else 'NO'} | {'—' if test is None else f'{test:.2f}%'} |")
    lines += ["", _measured_on(m)]
    lines += ["", "Nothing was measured on the device yet: run ./bench.sh there.", "", "## Files", "",
              "Every file below is checked against its SHA-256 in manifest.json before run.py loads a model; an "
              "altered file is refused. setup.sh may add model.plan, engine.json, timing.cache and "
              "build_engine.log (and stageK/model.plan for early-exit stages).", "", "| file | size |", "|---|---|"]
    lines += [f"| {name} | {_size(entry['bytes'])} |" for name, entry in sorted(m["files"].items())]
    lines += ["| setup.sh, run.py, bench.py, bench.sh, edgecnn_bundle.py, README.md, requirements.txt | "
              "the bundle's own |", ""]
    if m.get("signature"):
        lines += [f"Signed: {m['signature']['file']} is the Ed25519 signature of manifest.json (key SHA-256 "
                  f"{m['signature']['public_key_sha256'][:16]}…). `./setup.sh --verify-key PUB.pem` and `run.py "
                  "--verify-key PUB.pem` refuse the bundle unless it verifies with the signer's public key; the "
                  "hashes alone catch damage, not tampering.", ""]
    for note in m["notes"]:
        lines.append(f"Note: {note}")
    return "\n".join(lines) + "\n"


from edgecnn.export import backends  # noqa: E402,F401  (each backend module registers its device kinds)

__all__ = ["BUNDLE_KIND", "BundleResult", "DEPLOY_TARGETS", "DeployTarget", "build_bundle", "bundle_code",
           "get_deploy_target", "load_signing_key", "register_deploy_target"]
