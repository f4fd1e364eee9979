"""Early-exit (BranchyNet) artifacts in `edgecnn bench`: the exit loop timed beside its own trunk.

Registered with the harness for artifacts whose manifest has an `early_exit` section, and with the report.
On a runtime with an export target the artifact opens on the `early_exit` backend (on that runtime, in the form
and at the thresholds stored in the manifest: the single graph at batch 1 where export measured it faster), and
the trunk (the final-exit path as one graph, from the
same artifact) is timed as its own configuration, flow "trunk", in the same interleaved rounds. Both cycle
through the accuracy images, so the exits taken while timing are the data's and the trunk sees the same
images. The early-exit record gains an `early_exit` section: the thresholds, each exit's share of the
accuracy images and its accuracy alone, the accuracy at the thresholds against the trunk's, both mean
per-sample latencies and the speed-up, the form, and each stage's cost at this record's threads (from which `pick`
predicts every other threshold setting of the export's validation sweep). Its latency varies with the exit taken,
so `pick` holds it to its mean (`latency_statistic`). On torch a multi-exit model is the eager reference: its eval
forward, which runs the trunk to the final exit (no early exit).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np

from edgecnn.benchmarks.harness import RECORD_EXTENSIONS, Config, RecordExtension, register_record_extension
from edgecnn.benchmarks.report import REPORT_SECTIONS, _fmt, _table
from edgecnn.benchmarks.settings import RUNTIMES

if TYPE_CHECKING:
    from edgecnn.benchmarks.harness import Sweep

SECTION = "early_exit"
CURVES = "early-exit-curves.png"
TRADEOFF = "early-exit-tradeoff.png"
EXIT_CHUNK = 256   # images per call when every exit's outputs are computed (stage graphs take any batch)
STAGE_COST_REPEATS = 100  # batch-1 calls per stage (or per exit path of the single graph) for the stage costs
CONFIRM_IMAGES = 1000     # accuracy images `confirm_setting` times, one at a time
EAGER = "eager PyTorch: the multi-exit model's eval forward, the trunk to the final exit (no early exit)"
TABLE_HEADERS = ["model", "runtime", "precision", "batch", "threads", "early-exit ms/sample", "trunk ms/sample",
                 "speed-up", "exits", "top-1", "trunk top-1", "Δ pt", "thresholds"]


@register_record_extension(SECTION)
class EarlyExitRecord(RecordExtension):
    """The exit loop on the artifact's runtime, its trunk beside it; torch runs the eager trunk."""

    def prepare(self, config: Config) -> list[Config]:
        """Open the exit loop on the config's runtime and return its trunk to time beside it (none on torch)."""
        trunk_options = {**config.options, "trunk": True}
        if _eager(config):  # the eager reference cannot run stage graphs: it is the trunk
            config.variant, config.options = "trunk", trunk_options
            return []
        trunk = Config(config.model, config.runtime, config.precision, config.batch, config.threads, config.artifact,
                       flow="trunk", options=trunk_options, variant="trunk", varied_inputs=True,
                       reused=config.reused)
        config.backend, config.options = "early_exit", {**config.options, "runtime": config.runtime}
        config.variant, config.varied_inputs = "early-exit", True
        return [trunk]

    def extend(self, config: Config, record: dict[str, Any], companions: list[dict[str, Any] | None],
               sweep: Sweep) -> dict[str, Any]:
        """The `early_exit` section, from this record, its trunk's and one all-exits pass over the images."""
        if _eager(config):
            return {"measures": EAGER}
        session, trunk = config.session, companions[0]
        mean, trunk_mean = record["latency_ms"]["mean"], trunk["latency_ms"]["mean"] if trunk else None
        top1, trunk_top1 = _top1(record), _top1(trunk)
        exits = _exits_on_data(config, sweep)
        return {"latency_statistic": "mean", SECTION: {
            "thresholds": list(session.thresholds), "stages": len(session.manifest[SECTION]["stages"]),
            "thresholds_from": "the manifest (tuned on the validation split at export, for this precision)",
            "form": session.form, "stage_ms": _stage_costs(session),
            "stage_ms_measures": f"ms each stage adds at batch 1 in this form at this record's threads, median of "
                                 f"{STAGE_COST_REPEATS} calls (single graph: differences of whole calls leaving at "
                                 "each exit in turn), measured after the timed rounds",
            "ms_per_sample": round(mean / config.batch, 6),
            "trunk_ms_per_sample": None if trunk_mean is None else round(trunk_mean / config.batch, 6),
            "speedup_vs_trunk": None if trunk_mean is None else round(trunk_mean / mean, 3),
            "timed_on": (f"a cycle over the {exits['samples']} accuracy images in batches of {config.batch} (fewer "
                         "timed calls than images: a consecutive part of it), the trunk cycling through the same "
                         "images" if exits["samples"] else "one batch of seeded noise (no accuracy images)")
            + "; interleaved rounds; ms per sample = mean per call / batch",
            "accuracy": top1, "trunk_accuracy": trunk_top1,
            "accuracy_vs_trunk_pt": None if top1 is None or trunk_top1 is None else round(top1 - trunk_top1, 3),
            **exits, "tuning": _tuning(session.manifest, config.precision)}}

    def table(self, records: list[dict[str, Any]], with_machine: bool = False) -> tuple[list[str], list[list[Any]]]:
        """(headers, rows): one row per early-exit record, beside its trunk (for the CLI and the report)."""
        rows = []
        for r in records:
            ee = r.get(SECTION)
            if not ee:
                continue
            fractions = " / ".join(f"{100 * f:.0f}%" for f in ee["exit_fractions"] or []) or "—"
            rows.append([*([r["machine"]] if with_machine else []), r["model"], r["runtime"], r["precision"],
                         r["batch"], r["threads"], f"{ee['ms_per_sample']:.4f}", _fmt(ee["trunk_ms_per_sample"], ".4f"),
                         _fmt(ee["speedup_vs_trunk"], ".2f", "×"), fractions, _fmt(ee["accuracy"], ".2f"),
                         _fmt(ee["trunk_accuracy"], ".2f"), _fmt(ee["accuracy_vs_trunk_pt"], "+.2f"),
                         ", ".join(f"{t:.3g}" for t in ee["thresholds"])])
        return [*(["machine"] if with_machine else []), *TABLE_HEADERS], rows


def _eager(config: Config) -> bool:
    """The torch runtime: no export target, the model rebuilt in PyTorch."""
    return RUNTIMES[config.runtime].target is None


def _stage_costs(session: Any) -> list[float]:
    """The session's per-stage costs at batch 1 (what `pick` predicts each threshold setting's latency from)."""
    sample = np.zeros((1, *session.input_spec.shape[1:]), dtype=session.input_spec.dtype)
    return [round(c, 6) for c in session.stage_costs(sample, STAGE_COST_REPEATS)]


def _top1(record: dict[str, Any] | None) -> float | None:
    return ((record or {}).get("accuracy") or {}).get("top1")


def _tuning(manifest: dict[str, Any], precision: str) -> dict[str, Any] | None:
    """What export tuned the thresholds on: the validation Pareto front (accuracy against the latency predicted
    from the stage costs it measured), the final exit's accuracy and the trunk's cost, for the report's curves."""
    tuned = manifest[SECTION].get("per_precision", {}).get(precision)
    if not tuned or "sweep" not in tuned:
        return None
    return {"final_exit_accuracy": tuned["final_exit_accuracy"], "trunk_ms": tuned["trunk_ms"],
            "chosen": {"accuracy": tuned["accuracy"], "expected_ms": tuned["expected_ms"]},
            "front": [{"accuracy": s["accuracy"], "expected_ms": s["expected_ms"], "thresholds": s["thresholds"],
                       "exit_fractions": s["exit_fractions"]} for s in tuned["sweep"]]}


class PredictedSetting(NamedTuple):
    """Another threshold setting of an early-exit record, predicted from what the record measured."""
    thresholds: list[float]
    latency_ms: float          # mean per sample at batch 1
    top1: float
    exit_fractions: list[float]


def predicted_settings(record: dict[str, Any]) -> list[PredictedSetting]:
    """Every setting of the export's validation sweep but the record's own, predicted at the record's runtime,
    precision, form and threads: latency from the stage costs the record measured (`expected_ms` of the setting's
    validation exit shares), plus what the record's measured mean exceeds the same prediction for its own exits (the
    per-call work around the stages); top-1 the record's, moved by the setting's validation accuracy difference
    from the record's thresholds. Batch 1 only; none for a record without stage costs, sweep or accuracy."""
    from edgecnn.export.early_exit_thresholds import expected_ms

    ee = record.get(SECTION) or {}
    tuning, stage_ms, measured_exits = ee.get("tuning"), ee.get("stage_ms"), ee.get("exit_fractions")
    if record["batch"] != 1 or not (tuning and stage_ms and measured_exits and record.get("accuracy")):
        return []
    around = record["latency_ms"]["mean"] - expected_ms(measured_exits, stage_ms)
    return [PredictedSetting(s["thresholds"], expected_ms(s["exit_fractions"], stage_ms) + around,
                             record["accuracy"]["top1"] + s["accuracy"] - tuning["chosen"]["accuracy"],
                             s["exit_fractions"])
            for s in tuning["front"] if "thresholds" in s and s["thresholds"] != ee["thresholds"]]


def confirm_setting(record: dict[str, Any], thresholds: Sequence[float], rounds: int = 3) -> dict[str, Any]:
    """One measurement of an early-exit record's artifact at other thresholds, as the record was measured (its
    runtime, form and threads; batch 1; the first `CONFIRM_IMAGES` of its accuracy images one at a time, `rounds`
    rounds) and its top-1 on all of them: {"latency_ms", "top1", "images", ...}, or {"not_measured": why}.

    The record's own thresholds are timed again in the same interleaved rounds (`recorded_setting_ms_now`): on a
    machine busier or quieter than when the record was measured, both move alike, and their ratio to the record's
    mean says by how much (`machine_drift`)."""
    from edgecnn.data import load_dataset, preprocess
    from edgecnn.errors import UserError
    from edgecnn.export import runtime
    from edgecnn.export.early_exit import interleaved_per_sample_ms
    from edgecnn.export.early_exit_thresholds import exit_indices
    from edgecnn.registry import get_config

    artifact, accuracy = Path(record["artifact"]["path"]), record["accuracy"]
    try:
        dataset = load_dataset(accuracy["dataset"], accuracy.get("split", "test"))
        images, labels = dataset.get_batch(range(min(accuracy["samples"], len(dataset))))
        x = preprocess(images, get_config(record["model"])).numpy()
        options = {"backend": "early_exit", "runtime": record["runtime"], "threads": record["threads"],
                   "form": record[SECTION].get("form")}
        with runtime.load(artifact, thresholds=list(thresholds), **options) as session, \
                runtime.load(artifact, thresholds=record[SECTION]["thresholds"], **options) as recorded:
            x = x.astype(session.input_spec.dtype, copy=False)
            rounds_ms = interleaved_per_sample_ms({"setting": session.run, "recorded": recorded.run},
                                                  x[:CONFIRM_IMAGES], rounds)
            chunks = [session.exit_outputs(x[i:i + EXIT_CHUNK]) for i in range(0, len(x), EXIT_CHUNK)]
    except (UserError, OSError) as e:
        return {"not_measured": f"{artifact} cannot be run here ({str(e).splitlines()[0]})"}
    entropies = np.concatenate([e for e, _ in chunks], axis=1)
    predictions = np.concatenate([logits for _, logits in chunks], axis=1).argmax(2)
    exits = exit_indices(list(thresholds), entropies)
    top1 = float(100 * (predictions[exits, np.arange(len(exits))] == labels.numpy()).mean())
    now = float(np.mean(rounds_ms["recorded"]))
    return {"latency_ms": round(float(np.mean(rounds_ms["setting"])), 5), "top1": round(top1, 3), "images": len(exits),
            "timed_images": min(CONFIRM_IMAGES, len(x)), "rounds": rounds, "recorded_setting_ms_now": round(now, 5),
            "machine_drift": round(now / record["latency_ms"]["mean"], 4)}


def _plot_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """Per B-model: accuracy against the final exit (points) and speed-up over the trunk, along the validation
    threshold sweep export chose from (one line per artifact), its choice starred, and each benchmark
    measurement at those thresholds (accuracy vs the trunk on the test images, measured speed-up) beside it."""
    import matplotlib.pyplot as plt

    from edgecnn.benchmarks.report import PRECISION_MARKERS, RUNTIME_COLOURS, _grid

    tuned = [r for r in records if (r.get(SECTION) or {}).get("tuning")]
    models = sorted({r["model"] for r in tuned})
    if not models:
        return False
    rows, cols = _grid(len(models))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4 * rows), squeeze=False)
    for ax, model in zip(axes.flat, models):
        drawn = set()
        for r in (r for r in tuned if r["model"] == model):
            ee, t = r[SECTION], r[SECTION]["tuning"]
            colour, marker = RUNTIME_COLOURS.get(r["runtime"], "k"), PRECISION_MARKERS.get(r["precision"], "o")
            artifact = (r["machine"], r["artifact"]["path"])
            if artifact not in drawn:  # one artifact, one sweep, however many thread counts timed it
                drawn.add(artifact)
                final = t["final_exit_accuracy"]
                ax.plot([t["trunk_ms"] / s["expected_ms"] for s in t["front"]],
                        [s["accuracy"] - final for s in t["front"]], color=colour, marker=marker, ms=3, lw=1,
                        alpha=0.7, label=f"{r['runtime']} {r['precision']} ({r['machine']})")
                ax.plot(t["trunk_ms"] / t["chosen"]["expected_ms"], t["chosen"]["accuracy"] - final, "*",
                        color=colour, ms=12)
            if ee["speedup_vs_trunk"] is not None and ee["accuracy_vs_trunk_pt"] is not None:
                ax.plot(ee["speedup_vs_trunk"], ee["accuracy_vs_trunk_pt"], marker, color=colour, mfc="none",
                        ms=10, mew=1.5)
                ax.annotate(f"t{r['threads']}", (ee["speedup_vs_trunk"], ee["accuracy_vs_trunk_pt"]), fontsize=6,
                            textcoords="offset points", xytext=(5, -8), color=colour)
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.axhline(-0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(model)
        ax.set_xlabel("speed-up over the trunk (batch 1)")
        ax.set_ylabel("top-1 vs the final exit (pt)")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle("early exit: validation sweep predicted from stage costs (lines), exported thresholds (★), "
                 "measured on the test images (hollow, tN: threads); dashed: the 0.5 pt budget", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_tradeoff(records: list[dict[str, Any]], path: Path) -> bool:
    """One plot, top-1 against mean latency per sample at batch 1: each early-exit record's threshold sweep as a
    line (its measured point ★, the others predicted from its stage costs: `predicted_settings`), every runtime,
    precision and thread count; the plain models and the trunks as points."""
    import matplotlib.pyplot as plt

    from edgecnn.benchmarks.report import PRECISION_MARKERS, RUNTIME_COLOURS

    single = [r for r in records if r["batch"] == 1 and r.get("accuracy")]
    curves = [(r, predicted_settings(r)) for r in single if (r.get(SECTION) or {}).get("stage_ms")]
    curves = [(r, settings) for r, settings in curves if settings]
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(10, 6.5))
    for r, settings in curves:
        colour, marker = RUNTIME_COLOURS.get(r["runtime"], "k"), PRECISION_MARKERS.get(r["precision"], "o")
        measured = (r["latency_ms"]["mean"], r["accuracy"]["top1"])
        points = sorted([measured, *((s.latency_ms, s.top1) for s in settings)])
        ax.plot(*zip(*points), color=colour, marker=marker, ms=3, lw=1, alpha=0.75,
                ls="-" if r["threads"] == 1 else "--",
                label=f"{r['model']} {r['runtime']} {r['precision']} {r[SECTION].get('form', 'stages')} "
                      f"t{r['threads']} ({r['machine']})")
        ax.plot(*measured, "*", color=colour, ms=11, mec="k", mew=0.5)
    for r in single:
        if SECTION in r or r["flow"] not in ("edgecnn", "trunk"):
            continue
        x, y = r["latency_ms"]["mean"], r["accuracy"]["top1"]
        ax.plot(x, y, PRECISION_MARKERS.get(r["precision"], "o"), color=RUNTIME_COLOURS.get(r["runtime"], "k"),
                mfc="none", ms=6, alpha=0.6)
        name = f"{r['model'].removesuffix('_fmnist')}{' trunk' if r.get('variant') == 'trunk' else ''}"
        ax.annotate(f"{name} t{r['threads']}", (x, y), fontsize=5, textcoords="offset points", xytext=(3, 2),
                    color="0.35")
    ax.set_xscale("log")
    ax.set_xlabel("mean latency per sample at batch 1 (ms, log scale)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=5, ncol=2, loc="lower right")
    ax.set_title("early exit, every runtime, precision and thread count: threshold sweeps (lines: solid 1 thread, "
                 "dashed more;\n★ measured, the rest predicted from its stage costs) and the plain models (hollow)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _exits_on_data(config: Config, sweep: Sweep) -> dict[str, Any]:
    """Each exit's share of the accuracy images under the stored thresholds, and each exit's accuracy alone,
    from one pass computing every exit (the exit rule is export's own, `evaluate_setting`)."""
    from edgecnn.export.early_exit_thresholds import evaluate_setting

    data = sweep.dataset(config.model)
    if data is None:
        return {"exit_fractions": None, "exit_accuracy": None, "samples": 0}
    session = config.session
    chunks = [session.exit_outputs(x[:rows].astype(session.input_spec.dtype, copy=False))
              for x, rows in data.batches(sweep.model_config(config.model), EXIT_CHUNK)]
    entropies = np.concatenate([e for e, _ in chunks], axis=1)
    predictions = np.concatenate([logits for _, logits in chunks], axis=1).argmax(2)
    zero_cost = np.zeros(len(predictions))  # latency is measured here, not predicted from stage costs
    setting = evaluate_setting(session.thresholds, entropies, predictions, data.labels, zero_cost)
    return {"exit_fractions": [round(f, 5) for f in setting.exit_fractions],
            "exit_accuracy": [data.top1(p) for p in predictions],
            # the same thresholds applied to every exit's outputs: a check on the loop's own accuracy
            "accuracy_by_rule": round(setting.accuracy, 3), "samples": data.count}


def report_section(records: list[dict[str, Any]], out_dir: Path) -> str:
    """The report's early-exit table (empty when no record is early exit)."""
    headers, rows = RECORD_EXTENSIONS[SECTION].table(records, with_machine=True)
    if not rows:
        return ""
    return "\n".join([
        "## Early exit against the trunk", "",
        "BranchyNet artifacts: the exit loop at the thresholds stored in the manifest, beside the same artifact's "
        "trunk (the final-exit path as one graph), timed in the same interleaved rounds on the same images. "
        "ms/sample is the mean per call over a cycle of the accuracy images divided by the batch; *exits* is each "
        "exit's share of the accuracy images; Δ is the early-exit top-1 minus the trunk's.", "",
        _table(headers, rows),
        *(["", "Threshold sweeps: each line is the validation split's accuracy against the final exit alone and the "
               "speed-up the stage costs measured at export predict (the Pareto front export chose from); ★ the "
               "stored thresholds; hollow: what the benchmark measured at them (test images, against the trunk).", "",
           f"![early-exit threshold sweeps]({CURVES})"] if _plot_curves(records, out_dir / CURVES) else []),
        *(["", "Early exit among the plain models: top-1 against the mean latency per sample at batch 1, each "
               "early-exit record's whole threshold sweep at its runtime, precision, form and threads (★ measured "
               "at the stored thresholds; the other points predicted from the stage costs it measured, as `edgecnn "
               "pick` predicts them), beside every plain model and trunk measured (hollow).", "",
           f"![early exit among the plain models]({TRADEOFF})"]
          if _plot_tradeoff(records, out_dir / TRADEOFF) else [])])


REPORT_SECTIONS.append(report_section)

__all__ = ["EarlyExitRecord", "PredictedSetting", "confirm_setting", "predicted_settings", "report_section"]
