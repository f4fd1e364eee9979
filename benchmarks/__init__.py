"""edgecnn.benchmarks: latency against accuracy, measured, reported and queried.

    from edgecnn.benchmarks import SweepSettings, run_sweep, read_results, write_report, pick
    results = run_sweep(SweepSettings(models=["resnet18_fmnist"], runtimes=["onnxruntime", "openvino"]),
                        out="bench.json")
    write_report([results], "report/")
    answer = pick([results], budget_ms=2.0, max_drop=0.5)

`harness` times artifacts (exported through `edgecnn.export`, cached and reused by `cache`) in interleaved
rounds and measures their accuracy (`accuracy`), as its `settings` say; `resume` decides what a resumed run keeps;
`peers` builds what a user would pick instead from the same FP32 ONNX; `schema` is the results file (versioned,
written atomically after each model); `report` turns results from any machines into Markdown + PNG; `pick` answers
"which configuration meets my budget with the least accuracy lost?"; `early_exit_record` times BranchyNet
artifacts' exit loop beside their trunk (a harness extension and a report section). Committed results live in
`results/`, the report generated from them in `report/`; the research studies that write the other files of
`results/` live in the repository's `studies/` and are not installed.
"""
from edgecnn.benchmarks.harness import run_sweep
from edgecnn.benchmarks.pick import pick
from edgecnn.benchmarks.report import write_report
from edgecnn.benchmarks.schema import read_results
from edgecnn.benchmarks.settings import SweepSettings
from edgecnn.benchmarks import early_exit_record  # noqa: F401  (registers the early-exit record and report section)

__all__ = ["SweepSettings", "pick", "read_results", "run_sweep", "write_report"]
