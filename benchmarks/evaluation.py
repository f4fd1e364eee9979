"""`edgecnn eval`: any model form scored on a labelled dataset: top-1, per-class accuracy, the confusion matrix, and
the precision the runtime executed.

    from edgecnn.benchmarks.evaluation import evaluate, write_evaluation
    result = evaluate("artifacts/lenet-onnx-int8", data="digits/")    # any MODEL form (edgecnn.model_ref)
    print("\\n".join(result.lines())); write_evaluation(result, "eval-out/")

A zoo name or a checkpoint runs in PyTorch (FP32, eager); an ONNX file in ONNX Runtime; an artifact folder, a deploy
bundle included (an artifact with its runner scripts beside it), through the runtime session its manifest names
(`edgecnn.export.runtime`), as bench times it. The data is the weights' own (a checkpoint's sidecar, the artifact's
manifest) unless the user names another (`data`), and the output says which. The dataset's class sub-folders are
matched to the model's class names (by name, in any order); the model's classes it lacks are counted as wrong
predictions only. `--out DIR` holds eval.txt (what was printed), eval.json and confusion.png, written aside and
renamed into place like a report (only edgecnn's own earlier output there is replaced, and only with --force).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecnn.errors import UserError
from edgecnn.model_ref import (Description, ModelRef, WeightsData, aligned_labels, resolve_model, weights_data,
                               with_data)
from edgecnn.registry import ModelConfig
from edgecnn.text import printable

EVAL_KIND = "edgecnn-eval"
TEXT_NAME, JSON_NAME, PLOT_NAME = "eval.txt", "eval.json", "confusion.png"
MAX_TEXT_CLASSES = 20  # a wider confusion matrix is left to the PNG and the JSON
CHUNK = 1000           # images decoded and preprocessed at a time


@dataclass
class Evaluation:
    """Predictions of one model on one labelled split, and how they were made."""
    model: str                       # how outputs name the model
    weights: str                     # which weights: a file, its hash, or "committed"
    data: WeightsData
    split: str
    runtime: str
    executed_precision: str
    artifact_precision: str | None
    class_names: list[str]           # the model's outputs, in order
    labels: np.ndarray               # each image's true class, as an index among the model's outputs
    predictions: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def correct(self) -> int:
        return int((self.predictions == self.labels).sum())

    @property
    def top1(self) -> float:
        return round(100.0 * self.correct / max(1, len(self.labels)), 3)

    def confusion(self) -> np.ndarray:
        """Counts: rows the true class, columns the predicted one (both in the model's output order)."""
        n = len(self.class_names)
        return np.bincount(self.labels * n + self.predictions, minlength=n * n).reshape(n, n)

    def per_class(self) -> dict[str, dict[str, Any]]:
        """Accuracy (recall) of each class the data has images of."""
        counts = self.confusion()
        return {name: {"images": int(counts[k].sum()), "correct": int(counts[k, k]),
                       "accuracy": round(100.0 * counts[k, k] / counts[k].sum(), 3)}
                for k, name in enumerate(self.class_names) if counts[k].sum()}

    def lines(self) -> list[str]:
        """What `edgecnn eval` prints (and eval.txt holds)."""
        per_class = self.per_class()
        width = max(len(printable(n)) for n in per_class)
        out = [printable(f"{self.model}: top-1 test accuracy {self.top1:.2f}% ({self.correct}/{len(self.labels)}) on "
                         f"{len(self.labels)} {self.data.name} images, the {self.split} split of {self.data.said}"),
               printable(f"weights: {self.weights}"),
               f"runtime: {self.runtime}, executed precision {self.executed_precision}"
               + (f" (artifact precision {self.artifact_precision})" if self.artifact_precision else ""),
               "per-class accuracy:"]
        out += [f"  {printable(name):<{width}}  {c['accuracy']:6.2f}%  ({c['correct']}/{c['images']})"
                for name, c in per_class.items()]
        out += _confusion_lines(self.confusion(), self.class_names)
        return out + [printable(f"note: {note}") for note in self.notes]

    def to_json(self) -> dict[str, Any]:
        return {"kind": EVAL_KIND, "model": self.model, "weights": self.weights, "dataset": self.data.record(),
                "split": self.split, "samples": int(len(self.labels)), "correct": self.correct, "top1": self.top1,
                "runtime": self.runtime, "executed_precision": self.executed_precision,
                "artifact_precision": self.artifact_precision, "class_names": self.class_names,
                "per_class": self.per_class(), "confusion": self.confusion().tolist(), "notes": self.notes}


def _confusion_lines(counts: np.ndarray, names: list[str]) -> list[str]:
    if len(names) > MAX_TEXT_CLASSES:
        return [f"confusion matrix: {len(names)} classes, see {PLOT_NAME} and {JSON_NAME} under --out"]
    width = max(4, len(str(int(counts.max()))) + 1)
    short = [printable(n)[:width - 1] for n in names]
    label = max(len(printable(n)) for n in names)
    out = ["confusion matrix (rows: true class, columns: predicted class):",
           f"  {'':<{label}} " + "".join(f"{s:>{width}}" for s in short)]
    out += [f"  {printable(n):<{label}} " + "".join(f"{int(v):>{width}}" for v in row) for n, row in zip(names, counts)]
    return out


# ---------------------------------------------------------------- the model, however it came

@dataclass
class _Runner:
    """What scores the images: `run` maps a preprocessed float32 batch to logits, `batch` a static batch (or None)."""
    label: str
    weights: str
    config: ModelConfig
    own_data: WeightsData | None
    run: Callable[[np.ndarray], np.ndarray]
    batch: int | None
    runtime: str
    executed_precision: str
    artifact_precision: str | None = None
    notes: list[str] = field(default_factory=list)
    close: Callable[[], None] = lambda: None


def _weights_text(record: dict[str, Any]) -> str:
    if record.get("committed"):
        return "committed (edgecnn's Fashion-MNIST training)"
    if record.get("source") == "random_init":
        return f"random initial weights (seed {record.get('seed')}): not a trained model"
    digest = f" (sha256 {record['sha256'][:12]}…)" if record.get("sha256") else ""
    return f"{record.get('path') or record.get('source', 'in memory')}{digest}"


def _torch_threads(threads: int | None) -> Callable[[], None]:
    """Run torch (and the source ONNX, which follows it) on `threads`; returns what puts the count back."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    return lambda: torch.set_num_threads(previous)


def _torch_runner(ref: ModelRef, threads: int | None) -> _Runner:
    import torch

    from edgecnn.export.source import load_source_model

    module, weights = load_source_model(ref.name, ref.checkpoint if ref.kind == "zoo" else ref.path)
    if weights["source"] == "random_init":
        raise UserError(f"{ref.name} has no committed weights; pass --checkpoint PATH or a checkpoint file as MODEL "
                        f"(train one with `edgecnn train {ref.name}`)")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return _Runner(ref.label, _weights_text(weights), module.config, weights_data(module.config, weights), run, None,
                   "torch (eager)", "fp32", close=_torch_threads(threads))


def _onnx_runner(ref: ModelRef, threads: int | None, description: Description | None) -> _Runner:
    from edgecnn.export.onnx_source import load_onnx_source
    from edgecnn.export.runtime import onnxruntime_compute_precision

    module, weights, notes = load_onnx_source(ref.path, description)
    return _Runner(ref.label, _weights_text(weights), module.config, WeightsData.from_record(weights.get("dataset")),
                   module._run, module.static_batch, "onnxruntime (the ONNX file as it is)",
                   onnxruntime_compute_precision(ref.path, "fp32", threads), notes=notes,
                   close=_torch_threads(threads))


def _artifact_runner(ref: ModelRef, threads: int | None, backend: str | None) -> _Runner:
    from edgecnn.export.manifest import manifest_config
    from edgecnn.export import runtime
    from edgecnn.export.manifest import read_manifest

    manifest = read_manifest(ref.path)
    if "early_exit" in manifest:  # scored as deployed: each image leaves at the exit the thresholds give it
        session = runtime.load(ref.path, backend="early_exit", threads=threads,
                               **({"runtime": backend} if backend else {}))
    else:
        session = runtime.load(ref.path, backend=backend, threads=threads)
    config = manifest_config(manifest)
    batch = manifest["input"]["shape"][0]
    what = "deploy bundle" if "bundle" in manifest else "artifact"
    runs_on = f"early exit on {session.runtime}" if "early_exit" in manifest else session.name
    return _Runner(f"{ref.label} ({what}: {manifest['model']['name']} {manifest['target']} {manifest['precision']})",
                   _weights_text(manifest["model"].get("weights") or {}), config,
                   weights_data(config, manifest["model"].get("weights")), session.run,
                   batch if isinstance(batch, int) else None, runs_on, session.executed_precision,
                   manifest["precision"], close=session.close)


def _runner(ref: ModelRef, threads: int | None, backend: str | None, description: Description | None) -> _Runner:
    if backend is not None and ref.kind != "artifact":
        raise UserError(f"--backend chooses the runtime of an artifact or a deploy bundle; {ref.arg} runs in "
                        f"{'ONNX Runtime' if ref.kind == 'onnx' else 'PyTorch'}: export it to run it elsewhere")
    if ref.kind == "artifact":
        return _artifact_runner(ref, threads, backend)
    if ref.kind == "onnx":
        return _onnx_runner(ref, threads, description)
    return _torch_runner(ref, threads)


# ---------------------------------------------------------------- scoring

def _model_labels(ds_classes: tuple[str, ...], config: ModelConfig,
                  data: WeightsData) -> tuple[np.ndarray | None, list[str]]:
    """Each dataset class's index among the model's outputs, matched by name in any order (None: the same order),
    and a note when the names differ and classes are taken by index, as bench scores them; one line when the
    class counts differ too."""
    order = aligned_labels(ds_classes, config)
    if order is not None:
        return np.asarray(order), []
    names = list(config.class_names or [])
    if len(ds_classes) != config.num_classes:
        theirs = f" ({', '.join(names[:3])}…)" if names else ""
        raise UserError(f"{data.label} has {len(ds_classes)} classes ({', '.join(ds_classes[:3])}…) and the model "
                        f"predicts {config.num_classes}{theirs}; score it on data of its own classes")
    if names and names != list(ds_classes):
        return None, [f"the data's classes ({', '.join(ds_classes[:3])}…) are not the model's "
                      f"({', '.join(names[:3])}…): scored by index, the data's k-th class against output k"]
    return None, []


def evaluate(model: str | Path | ModelRef, data: str | Path | WeightsData | None = None, *, checkpoint: str | Path | None = None,
             threads: int | None = None, backend: str | None = None, batch_size: int = 500,
             limit: int | None = None, description: Description | None = None) -> Evaluation:
    """Score `model` (any MODEL form) on the test split of `data` (default: its weights' own dataset).
    `description` says what an ONNX file's metadata_props do not (mean, std, classes)."""
    from edgecnn.data import preprocess
    from edgecnn.export.parity import run_in_batches

    ref = model if isinstance(model, ModelRef) else resolve_model(model, checkpoint=checkpoint)
    if description is not None and not description.empty and ref.kind != "onnx":
        raise UserError(f"--mean, --std and --classes describe an ONNX file; {ref.arg} says its own")
    runner = _runner(ref, threads, backend, description)
    try:
        chosen = with_data(runner.own_data, data)
        if chosen is None:
            raise UserError(f"{ref.arg} does not say what data its weights were trained on; pass --data DIR (a "
                            "folder with test/, one sub-folder per class, or one sub-folder per class itself)")
        ds = chosen.load("test")  # a folder without class sub-folders (no labels) is refused there, in one line
        order, mismatch = _model_labels(ds.class_names, runner.config, chosen)
        count = min(limit or len(ds), len(ds))
        predictions = []
        for start in range(0, count, CHUNK):
            images, _ = ds.get_batch(range(start, min(start + CHUNK, count)), size=runner.config.input_size[1:])
            x = np.ascontiguousarray(preprocess(images, runner.config).numpy())
            logits = run_in_batches(runner.run, x, runner.batch or batch_size)
            predictions.append(np.asarray(logits).argmax(axis=1))
    finally:
        runner.close()
    labels = ds.labels[:count].numpy()
    names = list(runner.config.class_names or [str(k) for k in range(runner.config.num_classes)])
    notes = runner.notes + mismatch + ([ds.skipped_summary()] if ds.skipped else [])
    return Evaluation(runner.label, runner.weights, chosen, "test", runner.runtime, runner.executed_precision,
                      runner.artifact_precision, names, labels if order is None else order[labels],
                      np.concatenate(predictions), notes)


# ---------------------------------------------------------------- files

def check_out(out: Path | str, force: bool) -> Path:
    """Refuse, before any work, an --out that holds what edgecnn did not write (or its own output, without force)."""
    from edgecnn.benchmarks.report import _check_out
    from edgecnn.export.staging import check_target

    target = check_target(out)
    _check_out(target, force)
    return target


def _plot_confusion(result: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecnn.benchmarks.report import _plot_text

    counts = result.confusion()
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    n = len(result.class_names)
    side = min(14.0, max(5.0, 0.5 * n + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    if n <= MAX_TEXT_CLASSES:
        names = [_plot_text(c) for c in result.class_names]
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for (i, j), v in np.ndenumerate(counts):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's images")
    ax.set_title(_plot_text(result.model) + "\n" + _plot_text(
        f"{result.data.label}, {result.split}: top-1 {result.top1:.2f}% ({result.correct}/{len(result.labels)}), "
        f"{result.runtime} {result.executed_precision}"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_evaluation(result: Evaluation, out: Path | str, force: bool = False) -> Path:
    """Write eval.txt, eval.json and confusion.png into the directory `out`; returns the directory."""
    from edgecnn.benchmarks.report import _check_out, _record_files
    from edgecnn.export.staging import destination_error, marked_staging

    target = check_out(out, force)
    try:
        with marked_staging(target, "evaluation", lambda now: _check_out(now, force)) as staging:
            (staging / TEXT_NAME).write_text("\n".join(result.lines()) + "\n")
            (staging / JSON_NAME).write_text(json.dumps(result.to_json(), indent=1) + "\n")
            _plot_confusion(result, staging / PLOT_NAME)
            _record_files(staging)
    except OSError as e:
        raise destination_error(target, e, "evaluation") from e
    return Path(out)


__all__ = ["Evaluation", "check_out", "evaluate", "write_evaluation"]
