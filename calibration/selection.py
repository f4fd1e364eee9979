"""Choosing by accuracy: the calibrator that scores best, and the fewest nodes returned to float.

Both are searches over quantizer runs that edgecnn orchestrates; the runs themselves (a quantizer
call and a validation score) are callables the export stage passes in, so this module knows no
runtime.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from edgecnn.errors import UserError


def correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image, whether its top-1 class is the label (what paired comparisons of two models need)."""
    return np.asarray(logits).argmax(1) == np.asarray(labels)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return accuracy_of(correct(logits, labels))


# McNemar's test at 5 % (two-sided): a candidate replaces the first one only if the images it gets right
# and the first gets wrong outnumber the reverse by more than Z * sqrt(their sum).
SWITCH_Z = 1.96


@dataclass
class CalibratorChoice:
    best: str
    scores: dict[str, float]   # calibrator → validation accuracy (%), every one tried
    versus_first: dict[str, dict[str, Any]] = field(default_factory=dict)  # paired test against candidates[0]


def paired_comparison(ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """McNemar on the same images: those only `ours` gets right (gained), those only `theirs` does (lost), and
    whether the gain is significant (SWITCH_Z)."""
    gained, lost = int((ours & ~theirs).sum()), int((~ours & theirs).sum())
    return {"gained": gained, "lost": lost, "significant": gained - lost > SWITCH_Z * math.sqrt(gained + lost)}


def choose_calibrator(candidates: Sequence[str], score: Callable[[str], np.ndarray],
                      progress: Callable[[str], None] | None = None) -> CalibratorChoice:
    """Quantize-and-score each candidate; keep the first (the quantizer's preferred one, e.g. the library's
    defaults) unless another is significantly more accurate on the same validation images.

    `score(name)` returns per-image correctness (bool array). A few images either way is noise, and picking
    the plain highest score then loses to the library default on the test split as often as it wins; the
    paired test (McNemar) switches only for a real gain. Among significant gains the most accurate wins,
    ties going to the earlier candidate.
    """
    if not candidates:
        raise UserError("no calibrator to choose from")
    hits: dict[str, np.ndarray] = {}
    for name in candidates:
        if progress:
            progress(name)
        hits[name] = np.asarray(score(name), dtype=bool)
    scores = {name: accuracy_of(h) for name, h in hits.items()}
    versus = {name: paired_comparison(hits[name], hits[candidates[0]]) for name in candidates[1:]}
    better = [n for n in candidates[1:] if versus[n]["significant"]]
    best = max(better, key=lambda n: (scores[n], -candidates.index(n))) if better else candidates[0]
    return CalibratorChoice(best, scores, versus)


def measurable_drop(max_drop: float, images: int) -> float:
    """--max-drop as a validation split of `images` can measure it: rounded up to a whole number of images (one image
    is 100 / images points), so a drop that differs from the bound by less than one image is never acted on."""
    one_image = 100.0 / images
    return math.ceil(max_drop / one_image - 1e-9) * one_image


def resolution_record(images: int, max_drop: float | None) -> dict[str, Any]:
    """What the validation split can tell apart, for the manifest: one image in points, the calibrator choice's
    rule, and --max-drop as measured."""
    return {"validation_images": images, "one_image_pt": round(100.0 / images, 4),
            "calibrator_choice": f"a calibrator replaces the first only when McNemar's test finds it better at 5 % "
                                 f"(gained − lost > {SWITCH_Z} × sqrt(gained + lost) images)",
            **({"max_drop_as_measured_pt": round(measurable_drop(max_drop, images), 4),
                "max_drop_rule": "a drop within one image of --max-drop is not acted on"}
               if max_drop is not None else {})}


def accuracy_of(hits: np.ndarray) -> float:
    """Top-1 accuracy in percent from per-image correctness."""
    return round(float(100.0 * np.asarray(hits, dtype=bool).mean()), 4)


@dataclass
class FallbackResult:
    excluded: list[str]                       # nodes returned to float, most sensitive first
    accuracy: float
    steps: list[dict[str, Any]] = field(default_factory=list)


def fallback_to_float(ranked: Sequence[str], score: Callable[[list[str]], float], fp32_accuracy: float,
                      quantized_accuracy: float, max_drop: float) -> FallbackResult:
    """Return the most sensitive nodes to float, doubling the count each step, until the drop fits.

    `ranked` lists quantized nodes most sensitive first; `score(excluded)` re-quantizes without them
    and returns the validation accuracy. Doubling bounds the search to log2(nodes) quantizer runs;
    the last step narrows back between the two counts around the first that fits (bisection).
    """
    steps = [{"excluded": 0, "accuracy": quantized_accuracy, "drop": round(fp32_accuracy - quantized_accuracy, 4)}]
    if fp32_accuracy - quantized_accuracy <= max_drop:
        return FallbackResult([], quantized_accuracy, steps)
    results: dict[int, float] = {0: quantized_accuracy}

    def trial(k: int) -> float:
        if k not in results:
            results[k] = score(list(ranked[:k]))
            steps.append({"excluded": k, "accuracy": results[k], "drop": round(fp32_accuracy - results[k], 4)})
        return results[k]

    fits = lambda k: fp32_accuracy - trial(k) <= max_drop  # noqa: E731
    low, high = 0, 1
    while high < len(ranked) and not fits(high):
        low, high = high, min(2 * high, len(ranked))
    while high - low > 1:  # the smallest count that fits lies in (low, high]; all of them is the FP32 model
        mid = (low + high) // 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    if high >= len(ranked):
        raise UserError(f"every quantized node is too sensitive: the accuracy drop stays above {max_drop:g} pt "
                        f"until all {len(ranked)} are back in float, which is the FP32 model. Nothing was "
                        "written; raise --max-drop, try another --calibrator, or export fp32/fp16")
    return FallbackResult(list(ranked[:high]), results[high], steps)
