"""Malformed results files, read by `report`, `pick` and `bench --resume` through the one schema check.

Each variant is the committed tests/data/bench_small.json with one thing wrong (a type, an impossible number, a
JSON bomb); every command must answer it with one line naming the file and what is wrong, write nothing and
leave the file as it was.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest

from edgecnn.benchmarks.machine import machine_info
from edgecnn.benchmarks.schema import check_output
from edgecnn.cli import main
from edgecnn.errors import UserError

SMALL = Path(__file__).parent / "data" / "bench_small.json"


def _first(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["records"][0]


def _set(where: Callable[[dict[str, Any]], dict[str, Any]], **values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: where(doc).update(values)


def _drop(where: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        del where(doc)[key]
    return edit


def _text(replace: str, by: str) -> Callable[[dict[str, Any]], str]:
    """The file's JSON with the first `replace` spelled `by` (values json.dumps cannot write: 1e400, huge ints)."""
    def edit(doc: dict[str, Any]) -> str:
        text = json.dumps(doc, indent=1)
        assert replace in text
        return text.replace(replace, by, 1)
    return edit


def _latency(doc: dict[str, Any]) -> dict[str, Any]:
    return _first(doc)["latency_ms"]


def _accuracy(doc: dict[str, Any]) -> dict[str, Any]:
    return _first(doc)["accuracy"]


MALFORMED: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "records an int": _set(lambda d: d, records=5),
    "records a string": _set(lambda d: d, records="all of them"),
    "records null": _set(lambda d: d, records=None),
    "a record a number": _set(lambda d: d, records=[7]),
    "skipped an int": _set(lambda d: d, skipped=3),
    "a skip without its reason": _drop(lambda d: d["skipped"][0], "reason"),
    "machine a string": _set(lambda d: d, machine="AMD EPYC"),
    "machine flags a list": _set(lambda d: d["machine"], cpu_flags=["avx2"]),
    "tools a list": _set(lambda d: d, tools=["torch"]),
    "settings a string": _set(lambda d: d, settings="fast"),
    "command a number": _set(lambda d: d, command=5),
    "complete a string": _set(lambda d: d, complete="yes"),
    "model a number": _set(_first, model=7),
    "record without flow": _drop(_first, "flow"),
    "batch a list": _set(_first, batch=[1, 8]),
    "batch 0": _set(_first, batch=0),
    "threads a string": _set(_first, threads="1"),
    "threads true": _set(_first, threads=True),
    "peer a string": _set(_first, peer="nncf"),
    "a peer record without its peer": _set(_first, flow="peer", peer=None),
    "latency statistic unknown": _set(_first, latency_statistic="p42"),
    "latency a string": _set(_first, latency_ms="fast"),
    "latency p50 a string": _set(_latency, p50="1.6"),
    "latency p50 NaN": _set(_latency, p50=math.nan),
    "latency p50 inf": _set(_latency, p50=math.inf),
    "latency p50 1e400": _text('"p50": 1.6524', '"p50": 1e400'),
    "latency p50 -5": _set(_latency, p50=-5.0),
    "latency p50 0": _set(_latency, p50=0),
    "latency without p50": _drop(_latency, "p50"),
    "latency std NaN": _set(_latency, std=math.nan),
    "throughput a string": _set(_first, throughput="2372"),
    "round medians empty": _set(_first, round_p50_ms=[]),
    "spread null": _set(_first, spread_pct=None),
    "memory null": _set(_first, memory=None),
    "artifact bytes a string": _set(lambda d: _first(d)["artifact"], bytes="124 kB"),
    "accuracy a string": _set(_first, accuracy="high"),
    "top-1 NaN": _set(_accuracy, top1=math.nan),
    "top-1 150": _set(_accuracy, top1=150.0),
    "top-1 -1": _set(_accuracy, top1=-1.0),
    "reference top-1 a string": _set(_accuracy, reference_top1="92"),
    "agreement NaN": _set(_accuracy, agreement_vs_torch_fp32=math.nan),
    "nested 100,000 deep": lambda doc: json.dumps(doc)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "a 5,000-digit integer": _text('"batch": 8', '"batch": ' + "9" * 5000),
    "a 400-digit integer": _text('"bytes": 124276', '"bytes": ' + "9" * 400),
    "truncated": lambda doc: json.dumps(doc)[:5000],
    "a list, not an object": lambda doc: json.dumps([doc]),
}


@pytest.fixture(params=sorted(MALFORMED), ids=sorted(MALFORMED))
def malformed(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The variant, measured (it says) on this machine, so that only what is wrong in it can stop `--resume`."""
    monkeypatch.chdir(tmp_path)  # its settings' relative --cache
    doc = json.loads(SMALL.read_text())
    doc["machine"] = machine_info()
    edited = MALFORMED[request.param](doc)
    path = tmp_path / "bench.json"
    path.write_text(edited if isinstance(edited, str) else json.dumps(doc, indent=1))
    return path


def _command(name: str, results: Path, tmp_path: Path) -> list[str]:
    return {"report": ["report", str(results), "--out", str(tmp_path / "report")],
            "pick": ["pick", "--budget-ms", "100", "--results", str(results)],
            # bench_small.json's own command (its "command"), so that the settings match
            "resume": ["bench", "lenet5_fmnist", "--runtimes", "torch,onnxruntime,openvino,tensorrt", "--precisions",
                       "fp32,fp16", "--batch", "1,8", "--threads", "1", "--warmup-s", "0.1", "--iters", "50",
                       "--rounds", "3", "--peers", "--accuracy-samples", "1000", "--cache", "cache", "--no-progress",
                       "--resume", "--out", str(results)]}[name]


@pytest.mark.parametrize("command", ["report", "pick", "resume"])
def test_a_malformed_results_file_is_one_line_naming_it(command: str, malformed: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    before = malformed.read_bytes()
    assert main(_command(command, malformed, tmp_path)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgecnn: error:") and str(malformed) in err, err
    assert not any(other in err for other in ("results_sha256", "other settings", "not this machine")), err
    assert len(err) < 600 and captured.out == ""
    assert malformed.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]  # no report, no cache, no temporary file


def test_a_bad_record_is_named_by_its_number_and_configuration(tmp_path: Path) -> None:
    from edgecnn.benchmarks.schema import read_results

    doc = json.loads(SMALL.read_text())
    doc["records"][3]["latency_ms"]["p50"] = math.nan
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    r = doc["records"][3]
    with pytest.raises(UserError, match=rf"record 3 \({r['model']} {r['runtime']} {r['precision']}.*\)\.latency_ms\."
                                        r"p50 must be a finite number above 0 \(got nan\)"):
        read_results(path)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_bench_out_is_never_a_device_or_other_non_regular_file(device: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Reading /dev/zero to see whether it holds earlier results would never end."""
    with pytest.raises(UserError, match="is not a regular file"):
        check_output(Path(device), force=True)
    assert main(["bench", "lenet5_fmnist", "--runtimes", "onnxruntime", "--threads", "1", "--cache",
                 str(tmp_path / "cache"), "--no-progress", "--force", "--out", device]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a regular file" in err
    assert not (tmp_path / "cache").exists()


def test_committed_results_pass_the_schema() -> None:
    """Every `edgecnn bench` file committed (and the test data) reads: the check refuses nothing real."""
    from edgecnn.benchmarks.pick import COMMITTED
    from edgecnn.benchmarks.schema import RESULTS_KIND, read_results

    paths = [p for p in [*COMMITTED.glob("*.json"), *SMALL.parent.glob("bench_*.json")]
             if json.loads(p.read_text()).get("kind") == RESULTS_KIND]
    assert len(paths) >= 6
    for path in paths:
        assert read_results(path)["records"]
