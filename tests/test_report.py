"""`edgecnn report` renders from small committed results files (real lenet5_fmnist and b_lenet_fmnist sweeps)."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from edgecnn.benchmarks.report import MARKER, write_report
from edgecnn.benchmarks.schema import read_results
from edgecnn.cli import main
from edgecnn.errors import UserError

SMALL = Path(__file__).parent / "data" / "bench_small.json"
EARLY_EXIT = Path(__file__).parent / "data" / "bench_early_exit.json"  # b_lenet_fmnist, 3 runtimes, fp32/fp16


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One report from the committed file and a copy relabelled as a second machine (rendered once: plots are slow)."""
    here = read_results(SMALL)
    other = copy.deepcopy(here)
    other["machine"].update(name="Jetson Orin ×6", cpu="ARMv8", logical_cores=6)
    return write_report([here, other], tmp_path_factory.mktemp("report") / "r"), here


def test_report_has_every_section_and_readable_plots(merged: tuple[Path, dict]) -> None:
    index, _ = merged
    text = index.read_text()
    assert text.startswith(MARKER)
    for heading in ("## Machines and runs", "## Headline", "## FP16 against FP32", "## Peers beside edgecnn",
                    "## Everything measured", "## Skipped"):
        assert heading in text
    assert "nncf-quantize" in text and "ort-quantize_static" in text
    assert "tensorrt" in text.split("## Skipped")[1]  # no GPU here: listed with its reason
    images = sorted(p.name for p in index.parent.glob("*.png"))
    assert images == sorted(f"{kind}-{machine}-b{batch}.png" for kind in ("latency", "pareto")
                            for machine in ("amd-epyc-2", "jetson-orin-6") for batch in (1, 8))
    for name in images:
        assert f"]({name})" in text
        with Image.open(index.parent / name) as im:
            assert im.format == "PNG" and im.width >= 800


def test_two_machines_merge_with_the_machine_as_a_column(merged: tuple[Path, dict]) -> None:
    headline = merged[0].read_text().split("## Headline")[1].split("##")[0]
    assert "AMD EPYC ×2 | lenet5_fmnist" in headline and "Jetson Orin ×6 | lenet5_fmnist" in headline


def test_fp16_speedup_is_against_fp32_of_the_same_runtime_and_batch(merged: tuple[Path, dict]) -> None:
    index, results = merged
    rows = [line for line in index.read_text().split("## FP16 against FP32")[1].split("##")[0].splitlines()
            if line.startswith("| AMD")]
    by = {(r["runtime"], r["precision"], r["batch"]): r["latency_ms"]["p50"] for r in results["records"]
          if r["flow"] == "edgecnn"}
    assert len(rows) == 4  # onnxruntime and openvino × batch 1 and 8
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        runtime, batch, speedup = cells[2], int(cells[4]), float(cells[8].rstrip("×"))
        assert speedup == pytest.approx(by[(runtime, "fp32", batch)] / by[(runtime, "fp16", batch)], abs=0.01)


def _tiny() -> dict:
    """Two records at one batch: one plot pair, enough for the file-safety checks."""
    results = read_results(SMALL)
    results["records"] = [r for r in results["records"] if r["batch"] == 1 and r["runtime"] == "onnxruntime"
                          and r["flow"] == "edgecnn"]
    return results


def test_never_replaces_a_directory_it_did_not_write(tmp_path: Path) -> None:
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "README.md").write_text("my own notes\n")
    with pytest.raises(UserError, match="not a report edgecnn wrote"):
        write_report([_tiny()], mine, force=True)
    assert (mine / "README.md").read_text() == "my own notes\n"
    out = tmp_path / "report"
    write_report([_tiny()], out)
    with pytest.raises(UserError, match="pass --force"):
        write_report([_tiny()], out)
    write_report([_tiny()], out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "report"]  # no staging left behind


def test_cli_report_refuses_another_schema_version_in_one_line(tmp_path: Path, capsys) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**json.loads(SMALL.read_text()), "schema_version": 0}))
    assert main(["report", str(old), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schema version 0" in err and "edgecnn bench" in err
    assert not (tmp_path / "r").exists()


def test_early_exit_records_get_their_table_beside_the_trunk(tmp_path: Path) -> None:
    results = read_results(EARLY_EXIT)
    text = write_report([results], tmp_path / "r").read_text()
    assert "early-exit" in text.split("## Headline")[1].split("##")[0]  # placed by its mean, like pick
    section = text.split("## Early exit against the trunk")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| AMD")]
    records = {(r["runtime"], r["precision"], r["flow"]): r for r in results["records"]}
    assert sorted((row[2], row[3]) for row in rows) == [(rt, p) for rt in ("onnxruntime", "openvino")
                                                        for p in ("fp16", "fp32")]
    for row in rows:
        ee, trunk = records[(row[2], row[3], "edgecnn")], records[(row[2], row[3], "trunk")]
        assert float(row[6]) == pytest.approx(ee["latency_ms"]["mean"], abs=1e-4)
        assert float(row[7]) == pytest.approx(trunk["latency_ms"]["mean"], abs=1e-4)
        assert float(row[8].rstrip("×")) == pytest.approx(trunk["latency_ms"]["mean"] / ee["latency_ms"]["mean"],
                                                          abs=0.01)
        assert sum(float(f.rstrip("%")) for f in row[9].split(" / ")) == pytest.approx(100, abs=1)
        assert float(row[10]) == ee["accuracy"]["top1"] and float(row[11]) == trunk["accuracy"]["top1"]
    everything = text.split("## Everything measured")[1].split("##")[0]
    assert "| edgecnn early-exit |" in everything and "| trunk |" in everything
    assert "| edgecnn trunk | torch" in everything  # the eager reference of a multi-exit model is its trunk


def test_no_early_exit_section_without_early_exit_records(merged: tuple[Path, dict]) -> None:
    assert "## Early exit" not in merged[0].read_text()


def test_machines_that_share_a_name_are_told_apart_by_their_flags() -> None:
    from edgecnn.benchmarks.report import machine_labels

    older = read_results(SMALL)
    newer, jetson = copy.deepcopy(older), copy.deepcopy(older)
    newer["machine"]["cpu_flags"] = {**older["machine"]["cpu_flags"], "avx_vnni": True}
    jetson["machine"].update(name="Jetson Orin ×6", cpu_flags={})
    older["machine"]["cpu_flags"] = {**older["machine"]["cpu_flags"], "avx_vnni": False}
    name = older["machine"]["name"]
    assert machine_labels([older, newer, jetson, older]) == [f"{name} (no avx_vnni)", f"{name} (+avx_vnni)",
                                                            "Jetson Orin ×6", f"{name} (no avx_vnni)"]
    assert machine_labels([older]) == [name]


def test_names_from_results_files_are_escaped_in_the_markdown_and_plots(tmp_path: Path) -> None:
    """Control characters would drive a terminal showing the README, a newline or | would break its tables, and
    a $…$ pair would be parsed as maths by the plots' labels (and fail to draw)."""
    results = _tiny()
    results["machine"]["name"] = "box|\x1b[31m\nred $x^$"
    for r in results["records"]:
        r["model"] = "lenet|\x1b]0;title\x07\n## forged"
    results["skipped"][0]["reason"] = "no\rreason | here"
    text = write_report([results], tmp_path / "r").read_text()
    assert not any(c in text for c in "\x1b\x07\r")
    assert not any(line.startswith(("## forged", "red ")) for line in text.splitlines())
    assert "box\\|\\x1b[31m\\nred $x^$" in text and "lenet\\|\\x1b]0;title\\x07\\n## forged" in text
    assert "no\\rreason \\| here" in text
    for table in text.split("\n\n"):
        rows = [line for line in table.splitlines() if line.startswith("|")]
        # every row of a table has its header's cells: no name split one into more
        assert len({len(re.split(r"(?<!\\)\|", row)) for row in rows}) <= 1, table
