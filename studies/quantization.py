"""INT8 bars of issue 9, measured here and written as JSON under benchmarks/results/.

    .venv/bin/python studies/quantization.py accuracy --threads 2   # 15 *_fmnist models × ORT/OpenVINO × calibrator
    .venv/bin/python studies/quantization.py accuracy --threads 2 --resume --redo --targets onnx  # ORT again
    .venv/bin/python studies/quantization.py speed --threads 2      # canonical resnet50, inception_v3, batch 1
    .venv/bin/python studies/quantization.py speed --out benchmarks/results/quantization_speed-HOST.json  # elsewhere
    .venv/bin/python studies/quantization.py size                   # INT8 / FP32 artifact bytes, 15 *_fmnist
    .venv/bin/python studies/quantization.py size --canonical       # the same at full size, 15 families
    .venv/bin/python studies/quantization.py seeds                  # ORT edgecnn vs quantize_static, 5 draws

accuracy: each model's FP32 ONNX and IR (edgecnn exports, dynamic batch), then every calibrator of
each runtime's quantizer on the same 512 calibration samples (edgecnn.calibration), scored on the
validation split and on the full Fashion-MNIST test split. "edgecnn" is the calibrator
`choose_calibrator` picks on the validation split (what `--calibrator auto` does: the quantizer's first
candidate, NNCF's default or ORT's MinMax, unless another is significantly more accurate, McNemar at
5 %); the peers are `quantize_static` with its defaults and `nncf.quantize` with its defaults, fed the same samples.
Each model's record is written as soon as it is done, so an interrupted run keeps its data.

speed: ONNX Runtime FP32 / edgecnn INT8 / ORT U8S8 QDQ per-channel; OpenVINO f32 / edgecnn INT8 /
NNCF default INT8 / bf16 (where the CPU has it), all loaded at once and timed in interleaved rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecnn.atomic import atomic_write
from edgecnn.benchmarks.stats import no_slower, round_medians
from edgecnn.export.backends import target_runtimes

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
FMNIST_MODELS = ("lenet5_fmnist", "resnet18_fmnist", "alexnet_fmnist", "vgg11_bn_fmnist", "vgg16_bn_fmnist",
                 "googlenet_fmnist", "bn_inception_fmnist", "inception_v3_fmnist", "inception_v4_fmnist",
                 "inception_resnet_v2_fmnist", "pyramidnet_fmnist", "fractalnet_fmnist", "densenet121_fmnist",
                 "cliquenet_fmnist", "deform_resnet_fmnist")
# The zoo's families at their published size and input (seeded init): the 15 of `edgecnn bench`'s canonical run.
CANONICAL_MODELS = ("lenet5", "alexnet", "resnet18", "resnet50", "googlenet", "bn_inception", "inception_v3",
                    "inception_v4", "inception_resnet_v2", "densenet121", "deform_resnet50", "pyramidnet_add_110_a48",
                    "fractalnet_20", "cliquenet_k36_t12", "vgg16_bn")
# Per export target, the runtime its records are filed under (`size`: TensorRT's is its Q/DQ ONNX, no engine).
SIZE_BAR = 0.30   # the bar: INT8 artifacts at most this share of the FP32 artifact's size on disk
SIZE_RUNTIMES = target_runtimes()   # {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}
SIZE_LABELS = {"onnxruntime": "ORT", "openvino": "OV", "tensorrt": "TensorRT Q/DQ ONNX"}
EVAL_CHUNK = 250


def _write(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(payload, indent=1) + "\n")


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _header(command: str, threads: int) -> dict[str, Any]:
    from edgecnn.benchmarks.machine import machine_info
    from edgecnn.export.passes import host_info, tool_versions

    return {"schema": 1, "command": command, "threads": threads, "machine": {**host_info(), **machine_info()},
            "tools": tool_versions(("nncf", "nvidia-modelopt")),
            "started_utc": _utc_now()}


def _ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _ov_runner(path: Path | Any, threads: int, precision: str = "f32") -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(path if not isinstance(path, Path) else str(path), "CPU",
                                       {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                        "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()
    return run


def _predictions(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([run(inputs[i:i + EVAL_CHUNK]).argmax(1) for i in range(0, len(inputs), EVAL_CHUNK)])


def _hits(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return _predictions(run, inputs) == labels


def _accuracy(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, labels: np.ndarray) -> float:
    from edgecnn.calibration import accuracy_of

    return accuracy_of(_hits(run, inputs, labels))


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def _test_split(config: Any) -> tuple[np.ndarray, np.ndarray]:
    """The whole Fashion-MNIST test split in the model's input format, and its labels."""
    from edgecnn.data import load_dataset, preprocess

    test = load_dataset("fashion_mnist", split="test")
    images, labels = test.get_batch(range(len(test)))
    return preprocess(images, replace(config, input_size=tuple(config.input_size))).numpy(), labels.numpy()


def _quantize(fp32: Path, data: Any, runtime: str, calibrator: str, out: Path) -> Path:
    """`edgecnn.quantize` of an FP32 model file with one calibrator on edgecnn's calibration samples (`data`), not
    scored (the study scores every calibrator itself); returns the INT8 model file, written into `out`."""
    import edgecnn
    from edgecnn.calibration import CalibrationData

    return edgecnn.quantize(fp32, CalibrationData(data.calibration, None), backend=runtime, calibrator=calibrator,
                            out=out).model


def _peer_default(runtime: str, fp32: Path, out: Path, data: Any) -> None:
    """The runtime's library with its defaults on edgecnn's samples, as its own users call it: the peers'
    one definition (`benchmarks/peers.py`, also what `edgecnn bench --peers` builds)."""
    from edgecnn.benchmarks.peers import library_default_int8
    from edgecnn.export.quantize import GraphInput

    library_default_int8(runtime, fp32, out, data.calibration, GraphInput.of_model(fp32))


def accuracy_model(name: str, threads: int, samples: int, work: Path,
                   targets: tuple[str, ...] = ("onnx", "openvino")) -> dict[str, Any]:
    import torch

    from edgecnn.calibration import CalibrationOptions, accuracy_of, choose_calibrator, paired_comparison, \
        prepare_calibration
    from edgecnn.export.pipeline import export_model
    from edgecnn.export.quantizers import get_quantizer
    from edgecnn.export.source import load_source_model

    torch.set_num_threads(threads)
    started = time.perf_counter()
    model, weights = load_source_model(name)
    config = model.config
    fp32 = {target: export_model(model, target, "fp32", work / f"{name}-{target}", dynamic_batch=True,
                                 weights=weights, parity_samples=16).path for target in targets}
    data = prepare_calibration(config, tuple(config.input_size), CalibrationOptions(samples=samples))
    test_inputs, test_labels = _test_split(config)
    val = data.validation
    with torch.no_grad():
        torch_test = _accuracy(lambda x: model(torch.from_numpy(x)).numpy(), test_inputs, test_labels)
    record: dict[str, Any] = {"model": name, "torch_fp32_test_accuracy": torch_test,
                              "calibration_samples": data.calibration.record(), "runtimes": {}}
    runners = {"onnx": (_ort_runner, "model.onnx", ["model.onnx"]),
               "openvino": (_ov_runner, "model.xml", ["model.xml", "model.bin"])}
    for target, runtime, (runner, model_file, files) in ((t, SIZE_RUNTIMES[t], runners[t]) for t in targets):
        quantizer = get_quantizer(target)
        fp32_file = fp32[target] / model_file
        fp32_run = runner(fp32_file, threads)
        rt = {"fp32_test_accuracy": _accuracy(fp32_run, test_inputs, test_labels),
              "fp32_validation_accuracy": _accuracy(fp32_run, val.inputs, val.labels),
              "fp32_bytes": _size([fp32[target] / f for f in files]), "calibrators": {}}
        val_hits, test_hits = {}, {}
        for calibrator, library in quantizer.calibrators.items():
            t0 = time.perf_counter()
            out = _quantize(fp32_file, data, runtime, calibrator, work / f"{name}-{target}-{calibrator}")
            seconds = time.perf_counter() - t0
            run = runner(out, threads)
            test_hits[calibrator] = _hits(run, test_inputs, test_labels)
            test_acc = accuracy_of(test_hits[calibrator])
            val_hits[calibrator] = _hits(run, val.inputs, val.labels)
            rt["calibrators"][calibrator] = {
                "library": library, "validation_accuracy": accuracy_of(val_hits[calibrator]),
                "test_accuracy": test_acc, "test_drop": round(rt["fp32_test_accuracy"] - test_acc, 2),
                "bytes": _size([out.parent / Path(f).name for f in files]), "quantize_seconds": round(seconds, 1)}
        choice = choose_calibrator(quantizer.auto_candidates(), val_hits.__getitem__)
        chosen = rt["calibrators"][choice.best]
        rt["edgecnn"] = {"calibrator": choice.best, "versus_default": choice.versus_first,
                         "test_accuracy": chosen["test_accuracy"],
                         "test_drop": chosen["test_drop"], "size_ratio": round(chosen["bytes"] / rt["fp32_bytes"], 3)}
        peer = work / f"{name}-{target}-peer"
        peer.mkdir()
        _peer_default(runtime, fp32_file, peer / model_file, data)
        if target == "onnx":
            rt["peer_default"] = {"what": "onnxruntime quantize_static defaults (QDQ, S8S8, per-tensor, MinMax), "
                                          "no quant_pre_process"}
        else:
            rt["peer_default"] = {"what": "nncf.quantize defaults (subset_size set to use the same samples)"}
        peer_hits = _hits(runner(peer / model_file, threads), test_inputs, test_labels)
        peer_acc = accuracy_of(peer_hits)
        rt["peer_default"].update(test_accuracy=peer_acc, test_drop=round(rt["fp32_test_accuracy"] - peer_acc, 2))
        rt["edgecnn_at_least_as_accurate_as_peer"] = chosen["test_accuracy"] >= peer_acc
        # The same images scored by both: a few either way is noise (McNemar, as `--calibrator auto` decides).
        ours = paired_comparison(test_hits[choice.best], peer_hits)
        rt["versus_peer_on_test"] = {"gained": ours["gained"], "lost": ours["lost"], "significantly_less_accurate":
                                     paired_comparison(peer_hits, test_hits[choice.best])["significant"]}
        # edgecnn's "library" calibrator is meant to be the peer's own call; the two must score alike.
        rt["default_calibrator_matches_peer"] = rt["calibrators"]["library"]["test_accuracy"] == peer_acc
        record["runtimes"][runtime] = rt
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def run_accuracy(args: argparse.Namespace) -> None:
    out = RESULTS / "quantization_accuracy.json"
    payload = json.loads(out.read_text()) if out.exists() and args.resume else \
        {**_header(" ".join(sys.argv), args.threads), "bar_drop_pt": 0.5, "models": {}}
    targets = tuple(args.targets)
    # A --redo that was cut off resumes (models it already redid are kept); one that finished starts afresh.
    redo = payload.get("redo_in_progress")
    if args.redo and (not redo or redo["targets"] != list(targets)):
        redo = payload["redo_in_progress"] = {"targets": list(targets), "id": f"{time.time():.6f}",
                                              "started_utc": _utc_now()}
    for name in args.models or FMNIST_MODELS:
        kept = payload["models"].get(name)
        redone = kept.get("redone", {}) if kept else {}
        redone_in_this_redo = bool(redo) and redone.get("redo") == redo["id"]
        if kept and (not args.redo or "error" in kept or redone_in_this_redo):
            continue
        work = Path(tempfile.mkdtemp(prefix=f"qbench-{name}-"))
        try:
            record = accuracy_model(name, args.threads, args.samples, work, targets)
        except Exception as e:  # keep going: one model's failure is data too
            record = {"model": name, "error": f"{type(e).__name__}: {e}"}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if kept and "error" not in record:  # --redo: the runtimes measured again replace theirs, the rest stay
            record["runtimes"] = {**kept["runtimes"], **record["runtimes"]}
            record["redone"] = {"targets": list(targets), "command": " ".join(sys.argv), "utc": _utc_now(),
                                "redo": redo["id"]}
        payload["models"][name] = record
        payload["summary"] = _accuracy_summary(payload)
        _write(out, payload)
        print(json.dumps({name: payload["summary"]["per_model"].get(name)}), flush=True)
    if args.redo and payload.pop("redo_in_progress", None):
        _write(out, payload)


def _accuracy_summary(payload: dict[str, Any]) -> dict[str, Any]:
    per_model, all_ok, beats, never_worse = {}, True, True, True
    for name, rec in payload["models"].items():
        if "error" in rec:
            per_model[name] = rec["error"]
            all_ok = beats = never_worse = False
            continue
        row = {}
        for runtime, rt in rec["runtimes"].items():
            row[runtime] = {"calibrator": rt["edgecnn"]["calibrator"], "fp32": rt["fp32_test_accuracy"],
                            "int8": rt["edgecnn"]["test_accuracy"], "drop": rt["edgecnn"]["test_drop"],
                            "peer_drop": rt["peer_default"]["test_drop"]}  # sizes: quantization_size.json
            all_ok &= rt["edgecnn"]["test_drop"] <= payload["bar_drop_pt"]
            beats &= rt["edgecnn_at_least_as_accurate_as_peer"]
            never_worse &= not _significantly_less_accurate_than_peer(rt)
        per_model[name] = row
    return {"models_done": len(payload["models"]), "every_drop_within_bar": all_ok,
            "edgecnn_at_least_as_accurate_as_peers": beats,
            "edgecnn_never_significantly_less_accurate_than_peers": never_worse, "per_model": per_model}


def seeds_model(name: str, threads: int, samples: int, seeds: list[int], work: Path) -> dict[str, Any]:
    """edgecnn's ONNX Runtime flow against quantize_static's defaults over several draws of the calibration samples:
    whether the peer's lead of a few test images on some models (one draw, `accuracy`) is the model's or the draw's.
    edgecnn runs MinMax, the calibrator `auto` kept on every model with seed 0. `changed` counts the test images
    whose top-1 class is not the FP32 model's: how faithful the quantization is, apart from lucky flips."""
    import torch

    from edgecnn.calibration import CalibrationOptions, accuracy_of, paired_comparison, prepare_calibration
    from edgecnn.export.pipeline import export_model
    from edgecnn.export.source import load_source_model

    torch.set_num_threads(threads)
    model, weights = load_source_model(name)
    fp32 = export_model(model, "onnx", "fp32", work / name, dynamic_batch=True, weights=weights,
                        parity_samples=16).path / "model.onnx"
    test_inputs, test_labels = _test_split(model.config)
    fp32_classes = _predictions(_ort_runner(fp32, threads), test_inputs)
    draws, hits = [], {"edgecnn": [], "peer": []}
    for seed in seeds:
        data = prepare_calibration(model.config, tuple(model.config.input_size),
                                   CalibrationOptions(samples=samples, seed=seed))
        peer = work / f"seed{seed}-peer.onnx"
        ours = _quantize(fp32, data, "onnxruntime", "minmax", work / f"seed{seed}-edgecnn")
        _peer_default("onnxruntime", fp32, peer, data)
        draw: dict[str, Any] = {"seed": seed}
        for who, path in (("edgecnn", ours), ("peer", peer)):
            classes = _predictions(_ort_runner(path, threads), test_inputs)
            hits[who].append(classes == test_labels)
            draw.update({who: accuracy_of(hits[who][-1]), f"{who}_changed": int((classes != fp32_classes).sum())})
        comparison = paired_comparison(hits["edgecnn"][-1], hits["peer"][-1])
        draws.append({**draw, "gained": comparison["gained"], "lost": comparison["lost"]})
    pooled = {who: np.concatenate(h) for who, h in hits.items()}
    return {"model": name, "fp32": accuracy_of(fp32_classes == test_labels), "draws": draws,
            "edgecnn_mean": round(statistics.fmean(d["edgecnn"] for d in draws), 3),
            "peer_mean": round(statistics.fmean(d["peer"] for d in draws), 3),
            "edgecnn_changed_mean": statistics.fmean(d["edgecnn_changed"] for d in draws),
            "peer_changed_mean": statistics.fmean(d["peer_changed"] for d in draws),
            "draws_edgecnn_at_least_as_accurate": sum(d["edgecnn"] >= d["peer"] for d in draws),
            "pooled": {**paired_comparison(pooled["edgecnn"], pooled["peer"]),
                       "peer_significantly_more_accurate":
                           paired_comparison(pooled["peer"], pooled["edgecnn"])["significant"]}}


def run_seeds(args: argparse.Namespace) -> None:
    out = RESULTS / "quantization_seeds.json"
    payload = json.loads(out.read_text()) if out.exists() and args.resume else \
        {**_header(" ".join(sys.argv), args.threads), "samples": args.samples, "seeds": args.seeds, "models": {}}
    for name in args.models or FMNIST_MODELS:
        if name in payload["models"]:
            continue
        with tempfile.TemporaryDirectory(prefix=f"qseeds-{name}-") as work:
            payload["models"][name] = seeds_model(name, args.threads, args.samples, args.seeds, Path(work))
        _write(out, payload)
        print(json.dumps(payload["models"][name]), flush=True)


def _significantly_less_accurate_than_peer(rt: dict[str, Any]) -> bool:
    """The paired test when it was recorded; before it was, a choice of "library" (recorded as "default" before
    the rename) that scored exactly as the peer's own call is the same deterministic graph (the same
    predictions), anything else counts against."""
    if "versus_peer_on_test" in rt:
        return rt["versus_peer_on_test"]["significantly_less_accurate"]
    return not (rt["edgecnn"]["calibrator"] in ("library", "default") and rt.get("default_calibrator_matches_peer"))


def speed_model(name: str, threads: int, rounds: int, iters: int, work: Path) -> dict[str, Any]:
    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgecnn.calibration import OnnxRuntimeFeed, as_nncf_dataset, prepare_calibration
    from edgecnn.export.graph_io import INPUT_NAME
    from edgecnn.export.pipeline import export_registered
    from edgecnn.registry import get_config

    options = {target: _edgecnn_calibration(name, runtime, target, {})
               for target, runtime in ((t, SIZE_RUNTIMES[t]) for t in ("onnx", "openvino"))}
    arts = {}
    for target, precision in (("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8")):
        arts[(target, precision)] = export_registered(
            name, target, precision, work / f"{target}-{precision}", parity_samples=8,
            calibration=options[target] if precision == "int8" else None).path
    config = get_config(name)
    data = prepare_calibration(config, tuple(config.input_size), options["onnx"])  # the same images for both
    peer_ort = work / "peer-ort.onnx"
    quantize_static(str(arts[("onnx", "fp32")] / "model.onnx"), str(peer_ort),
                    OnnxRuntimeFeed(data.calibration, INPUT_NAME, 1), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    peer_nncf = work / "peer-nncf.xml"
    ov.save_model(nncf.quantize(ov.Core().read_model(str(arts[("openvino", "fp32")] / "model.xml")),
                                as_nncf_dataset(data.calibration, 1), subset_size=len(data.calibration)),
                  str(peer_nncf), compress_to_fp16=False)
    x = np.ascontiguousarray(data.calibration.inputs[:1])
    runs = {"onnxruntime_fp32": _ort_runner(arts[("onnx", "fp32")] / "model.onnx", threads),
            "onnxruntime_int8_edgecnn": _ort_runner(arts[("onnx", "int8")] / "model.onnx", threads),
            "onnxruntime_int8_ort_u8s8_qdq_per_channel": _ort_runner(peer_ort, threads),
            "openvino_f32": _ov_runner(arts[("openvino", "fp32")] / "model.xml", threads),
            "openvino_int8_edgecnn": _ov_runner(arts[("openvino", "int8")] / "model.xml", threads),
            "openvino_int8_nncf_default": _ov_runner(peer_nncf, threads)}
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if bf16:
        runs["openvino_bf16"] = _ov_runner(arts[("openvino", "fp32")] / "model.xml", threads, "bf16")
    per_round = round_medians({k: (lambda fn=fn: fn(x)) for k, fn in runs.items()}, rounds, iters)
    ms = {k: round(statistics.median(v), 2) for k, v in per_round.items()}
    ort_vs_peer = no_slower(per_round["onnxruntime_int8_edgecnn"],
                            per_round["onnxruntime_int8_ort_u8s8_qdq_per_channel"])
    ov_vs_peer = no_slower(per_round["openvino_int8_edgecnn"], per_round["openvino_int8_nncf_default"])
    sizes = {"onnx_fp32": _size([arts[("onnx", "fp32")] / "model.onnx"]),
             "onnx_int8": _size([arts[("onnx", "int8")] / "model.onnx"]),
             "openvino_fp32": _size([arts[("openvino", "fp32")] / f for f in ("model.xml", "model.bin")]),
             "openvino_int8": _size([arts[("openvino", "int8")] / f for f in ("model.xml", "model.bin")])}
    return {"model": name, "batch": 1, "calibration_samples": len(data.calibration),
            "edgecnn_calibrator": {t: o.calibrator for t, o in options.items()}, "median_ms": ms,
            "load_average": [round(x, 1) for x in os.getloadavg()],
            "bf16": "measured" if bf16 else "not measured: this CPU has no AVX-512 BF16 / AMX (OpenVINO "
                                           "OPTIMIZATION_CAPABILITIES lacks BF16), edgecnn refuses bf16 here",
            "rounds_median_ms": {k: [round(t, 3) for t in v] for k, v in per_round.items()},
            "bars": {"ort_int8_vs_ort_u8s8": ort_vs_peer,
                     "ort_int8_no_slower_than_ort_u8s8": ort_vs_peer["no_slower"],
                     "ov_int8_vs_nncf_default": ov_vs_peer,
                     "ov_int8_no_slower_than_nncf_default": ov_vs_peer["no_slower"],
                     "ov_int8_same_graph_as_nncf_default": _same_ir(arts[("openvino", "int8")] / "model.xml",
                                                                     peer_nncf),
                     "ov_int8_speedup_vs_f32": round(ms["openvino_f32"] / ms["openvino_int8_edgecnn"], 2),
                     "ov_int8_at_least_4x_f32": ms["openvino_f32"] / ms["openvino_int8_edgecnn"] >= 4},
            "bytes": sizes, "size_ratio": {"onnx": round(sizes["onnx_int8"] / sizes["onnx_fp32"], 3),
                                           "openvino": round(sizes["openvino_int8"] / sizes["openvino_fp32"], 3)}}


def run_speed(args: argparse.Namespace) -> None:
    from edgecnn.benchmarks.machine import describe, machine_info, same_machine

    out = args.out
    measured_on = _speed_file_machine(out) if out.exists() else None
    if measured_on and not same_machine(measured_on, machine_info()):
        sys.exit(f"error: {out} holds the speeds of {describe(measured_on)}, not this machine; give this machine "
                 "its own file: --out benchmarks/results/quantization_speed-<machine>.json")
    payload = {**_header(" ".join(sys.argv), args.threads), "rounds": args.rounds, "iters_per_round": args.iters,
               "models": {}}
    for name in args.models or ("resnet50", "inception_v3"):
        work = Path(tempfile.mkdtemp(prefix=f"qspeed-{name}-"))
        try:
            payload["models"][name] = speed_model(name, args.threads, args.rounds, args.iters, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _write(out, payload)
        print(json.dumps(payload["models"][name]), flush=True)


def _speed_file_machine(out: Path) -> dict[str, Any]:
    """The machine an earlier `speed` results file was measured on; anything else at `out` is refused, since only
    this script's own output may be replaced."""
    try:
        earlier = json.loads(out.read_text())
        if {"machine", "iters_per_round", "models"} <= earlier.keys():  # what run_speed writes
            return earlier["machine"]
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(f"error: {out} is not a results file of `quantization.py speed`; it stays as it is: choose another --out")


def _same_ir(a: Path, b: Path) -> bool:
    """Whether two IRs are one graph: the same .bin bytes and the same XML but for layer names (OpenVINO numbers
    the nodes it creates, `Constant_249956`, differently in every process)."""
    import re

    def graph(xml: Path) -> str:
        return re.sub(r' name="[^"]*"', "", xml.read_text())
    return a.with_suffix(".bin").read_bytes() == b.with_suffix(".bin").read_bytes() and graph(a) == graph(b)


def _weight_bytes(artifact: Path, target: str) -> int:
    """The numbers a model carries (ONNX initializers, the IR's .bin), apart from its graph's description."""
    if target == "openvino":
        return (artifact / "model.bin").stat().st_size
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(artifact / "model.onnx")).graph
    return sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)


def ir_size_floor(record: dict[str, Any]) -> float:
    """The smallest INT8/FP32 whole-file ratio any INT8 IR of this graph can have: its XML describes at least every
    layer the FP32 XML does, and INT8 weights weigh at least a quarter of the FP32 .bin. Where this is over the
    size bar, no quantizer that writes IR can meet it; only a different file format could."""
    fp32_graph = record["fp32_bytes"] - record["fp32_weight_bytes"]
    return (fp32_graph + record["fp32_weight_bytes"] / 4) / record["fp32_bytes"]


def _edgecnn_calibration(name: str, runtime: str, target: str, chosen: dict[str, Any]) -> Any:
    """The calibrator the accuracy run chose for a *_fmnist model; for a canonical model (seeded init), whose
    validation scores mean nothing, the quantizer's first `auto` candidate (what `auto` keeps unless another is
    significantly more accurate) on 64 Fashion-MNIST images: sizes and speed do not depend on which images."""
    from edgecnn.calibration import CalibrationOptions
    from edgecnn.data import FMNIST_DEFAULT_ROOT
    from edgecnn.export.quantizers import get_quantizer

    if runtime in chosen.get(name, {}):
        return CalibrationOptions(calibrator=chosen[name][runtime]["calibrator"])
    return CalibrationOptions(calibrator=get_quantizer(target).auto_candidates()[0], samples=64,
                              data=FMNIST_DEFAULT_ROOT)


def run_size(args: argparse.Namespace) -> None:
    """What `edgecnn export --precision int8` writes against `--precision fp32`, on disk, with the calibrator the
    accuracy run chose, split into weights and graph description (the IR's XML, the ONNX nodes and names)."""
    from edgecnn.export import export_registered
    from edgecnn.export.quantizers import get_quantizer

    missing = {t: hint for t in args.targets if (hint := get_quantizer(t).available())}
    if missing:
        sys.exit("error: " + "; ".join(f"--targets {t} needs {hint}" for t, hint in missing.items()))
    chosen = json.loads((RESULTS / "quantization_accuracy.json").read_text())["summary"]["per_model"]
    out = RESULTS / ("quantization_size_canonical.json" if args.canonical else "quantization_size.json")
    payload = {**_header(" ".join(sys.argv), args.threads), "bar_ratio": SIZE_BAR, "models": {}}
    earlier = json.loads(out.read_text()) if out.exists() else {"models": {}}
    others = sorted({r for rec in earlier["models"].values() for r in rec} - {SIZE_RUNTIMES[t] for t in args.targets})
    if others:  # another run's runtimes stay, e.g. TensorRT's from a venv with ModelOpt
        payload["kept_from_earlier"] = {"runtimes": others, "command": earlier["command"],
                                        "started_utc": earlier["started_utc"], "tools": earlier["tools"]}
    for name in args.models or (CANONICAL_MODELS if args.canonical else FMNIST_MODELS):
        record = {r: v for r, v in earlier["models"].get(name, {}).items() if r in others}
        for target in args.targets:
            runtime = SIZE_RUNTIMES[target]
            with tempfile.TemporaryDirectory(prefix=f"qsize-{name}-") as work:
                options = _edgecnn_calibration(name, runtime, target, chosen)
                artifacts = {p: export_registered(name, target, p, Path(work) / p, parity_samples=16,
                                                  calibration=options if p == "int8" else None).path
                             for p in ("fp32", "int8")}
                files = {p: _size([f for f in a.iterdir() if f.name != "manifest.json"]) for p, a in artifacts.items()}
                weights = {p: _weight_bytes(a, target) for p, a in artifacts.items()}
            record[runtime] = {"calibrator": options.calibrator, "fp32_bytes": files["fp32"],
                               "int8_bytes": files["int8"], "ratio": round(files["int8"] / files["fp32"], 3),
                               "fp32_weight_bytes": weights["fp32"], "int8_weight_bytes": weights["int8"],
                               "weight_ratio": round(weights["int8"] / weights["fp32"], 3)}
        payload["models"][name] = record
        _write(out, payload)
        print(json.dumps({name: record}), flush=True)


def _machine_label(machine: dict[str, Any]) -> str:
    """CPU and the widest INT8 unit it has (what decides these ratios); files before flags were recorded: the CPU."""
    flags = machine.get("cpu_flags") or {}
    unit = "AMX" if flags.get("amx_int8") else "AVX-512 VNNI" if flags.get("avx512_vnni") else \
        "AVX2" if flags.get("avx2") else None
    return f"{machine['cpu']} ({unit})" if unit else machine["cpu"]


def _print_ir_floor(sizes: dict[str, dict[str, Any]], bar: float = SIZE_BAR) -> None:
    """Where OpenVINO's whole files miss the size bar, how much of that is the IR format's own floor."""
    missed = {name: rec["openvino"] for name, rec in sizes.items() if rec.get("openvino", {}).get("ratio", 0) > bar}
    if not missed:
        return
    percent = f"{bar * 100:g} %"
    print(f"\n| OpenVINO IR over {percent} whole | FP32 XML share of the FP32 files | lowest INT8/FP32 any IR can "
          f"have (FP32 XML + ¼ of FP32 .bin) | INT8/FP32 measured | INT8 XML / FP32 XML: measured · what {percent} "
          "leaves |")
    print("|---|---|---|---|---|")
    for name, ov in missed.items():
        fp32_graph = ov["fp32_bytes"] - ov["fp32_weight_bytes"]
        floor = round(ir_size_floor(ov), 3)
        mark = "**" if floor > bar else ""
        allowed = (bar * ov["fp32_bytes"] - ov["int8_weight_bytes"]) / fp32_graph
        print(f"| {name} | {fp32_graph / ov['fp32_bytes']:.3f} | {mark}{floor:.3f}{mark} | {ov['ratio']:.3f} | "
              f"{(ov['int8_bytes'] - ov['int8_weight_bytes']) / fp32_graph:.2f} · {allowed:.2f} |")


def print_tables(args: argparse.Namespace) -> None:
    """The INT8 tables of docs/results/int8.md, from the committed results (so the docs never carry hand-copied
    numbers)."""
    acc = json.loads((RESULTS / "quantization_accuracy.json").read_text())
    sizes = json.loads((RESULTS / "quantization_size.json").read_text())["models"]
    size_runtimes = [r for r in SIZE_RUNTIMES.values() if any(r in rec for rec in sizes.values())]
    print("| model | FP32 | ONNX Runtime INT8 (calibrator) | drop | quantize_static defaults | OpenVINO INT8 "
          "(calibrator) | drop | nncf.quantize defaults | INT8/FP32 on disk "
          f"{' · '.join(SIZE_LABELS[r] for r in size_runtimes)} (weights alone) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rec in acc["models"].items():
        if "error" in rec:
            print(f"| {name} | {rec['error']} |")
            continue
        cells = [name, f"{rec['torch_fp32_test_accuracy']:.2f}"]
        for runtime in ("onnxruntime", "openvino"):
            rt = rec["runtimes"][runtime]
            ours, peer = rt["edgecnn"], rt["peer_default"]
            cells += [f"{ours['test_accuracy']:.2f} ({ours['calibrator']})", f"{ours['test_drop']:+.2f}",
                      f"{peer['test_accuracy']:.2f}"]
        cells.append(" · ".join(f"{sizes[name][r]['ratio']:.2f} ({sizes[name][r]['weight_ratio']:.2f})"
                                if r in sizes.get(name, {}) else "—" for r in size_runtimes))
        print("| " + " | ".join(cells) + " |")
    canonical_file = RESULTS / "quantization_size_canonical.json"
    canonical = json.loads(canonical_file.read_text())["models"] if canonical_file.exists() else {}
    if canonical:
        print("\n| model at full size (seeded init) | FP32 ONNX | INT8/FP32 on disk ORT (weights alone) | "
              "INT8/FP32 on disk OV (weights alone) |")
        print("|---|---|---|---|")
        for name, rec in canonical.items():
            ratios = [f"{rec[r]['ratio']:.3f} ({rec[r]['weight_ratio']:.3f})" for r in ("onnxruntime", "openvino")]
            print(f"| {name} | {rec['onnxruntime']['fp32_bytes'] / 1e6:.1f} MB | " + " | ".join(ratios) + " |")
    _print_ir_floor({**sizes, **canonical})
    seeds_file = RESULTS / "quantization_seeds.json"
    if seeds_file.exists():
        seeds = json.loads(seeds_file.read_text())
        print(f"\n| model | FP32 | ONNX Runtime INT8 edgecnn, mean of {len(seeds['seeds'])} draws | quantize_static "
              "defaults, mean | draws edgecnn ≥ defaults | all draws: edgecnn only right · defaults only right | "
              "test images whose class INT8 changed, mean: edgecnn · defaults |")
        print("|---|---|---|---|---|---|---|")
        for name, rec in seeds["models"].items():
            pooled = rec["pooled"]
            flag = " (significant)" if pooled["peer_significantly_more_accurate"] else ""
            print(f"| {name} | {rec['fp32']:.2f} | {rec['edgecnn_mean']:.2f} | {rec['peer_mean']:.2f} | "
                  f"{rec['draws_edgecnn_at_least_as_accurate']} of {len(rec['draws'])} | "
                  f"{pooled['gained']} · {pooled['lost']}{flag} | "
                  f"{rec['edgecnn_changed_mean']:.1f} · {rec['peer_changed_mean']:.1f} |")
    print("\n| machine | model (batch 1, 2 threads) | ORT FP32 | ORT INT8 edgecnn | ORT U8S8 per-channel (no "
          "pre-process) | OV f32 | OV INT8 edgecnn | NNCF defaults | OV bf16 | OV INT8 vs f32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(RESULTS.glob("quantization_speed*.json")):  # one file per machine measured
        speed = json.loads(path.read_text())
        for name, rec in speed["models"].items():
            ms = rec["median_ms"]
            cells = [ms[k] for k in ("onnxruntime_fp32", "onnxruntime_int8_edgecnn",
                                     "onnxruntime_int8_ort_u8s8_qdq_per_channel", "openvino_f32",
                                     "openvino_int8_edgecnn", "openvino_int8_nncf_default")] + \
                [ms.get("openvino_bf16", "—")]
            print(f"| {_machine_label(speed['machine'])} | {name} | "
                  + " | ".join(f"{c} ms" if c != "—" else c for c in cells)
                  + f" | {rec['bars']['ov_int8_speedup_vs_f32']}× |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--models", nargs="*")
    a.add_argument("--samples", type=int, default=512)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--resume", action="store_true", help="keep models already in the results file")
    a.add_argument("--redo", action="store_true",
                   help="with --resume: measure --targets again for models already in the file, keeping the others")
    a.add_argument("--targets", nargs="+", default=["onnx", "openvino"], choices=["onnx", "openvino"])
    a.set_defaults(func=run_accuracy)
    s = sub.add_parser("speed")
    s.add_argument("--models", nargs="*")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--rounds", type=int, default=10)
    s.add_argument("--iters", type=int, default=10)
    s.add_argument("--out", type=Path, default=RESULTS / "quantization_speed.json",
                   help="results file, one per machine (default: %(default)s, the Xeon with AMX's)")
    s.set_defaults(func=run_speed)
    z = sub.add_parser("size")
    z.add_argument("--models", nargs="*")
    z.add_argument("--threads", type=int, default=2)
    z.add_argument("--targets", nargs="+", default=["onnx", "openvino"], choices=list(SIZE_RUNTIMES),
                   help="export targets (tensorrt needs ModelOpt); the file keeps the other targets' earlier records")
    z.add_argument("--canonical", action="store_true",
                   help="the families at full size (seeded init) → quantization_size_canonical.json")
    z.set_defaults(func=run_size)
    e = sub.add_parser("seeds", help="edgecnn's ORT flow vs quantize_static defaults over calibration draws")
    e.add_argument("--models", nargs="*")
    e.add_argument("--samples", type=int, default=512)
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--resume", action="store_true", help="keep models already in the results file")
    e.set_defaults(func=run_seeds)
    t = sub.add_parser("table", help="print the INT8 tables of docs/results/int8.md from the committed results")
    t.set_defaults(func=print_tables, threads=1)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    args.func(args)


if __name__ == "__main__":
    main()
