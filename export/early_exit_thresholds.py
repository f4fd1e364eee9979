"""Early-exit thresholds: the N-1 entropy thresholds of a BranchyNet artifact, chosen on the validation split.

Given each exit's outputs on the split (entropies (exits-1, S), predictions (exits, S), labels (S)) and the stage costs
measured on the target runtime, `tune` sweeps every combination of candidate thresholds (entropy quantiles per
exit, plus "nobody leaves" and "everybody leaves"), and `choose` keeps the fastest setting whose accuracy loss against
the final exit, plus `MARGIN_SE` standard errors of that paired loss, is within the budget (default
`DEFAULT_BUDGET_PT` points). A sample leaves at the first exit whose entropy is below that exit's threshold
(`exit_indices`) and pays every stage up to it (`expected_ms`).

Pure numpy: the export pass (`edgecnn.export.early_exit`) and the benchmarks both use it.
"""
from __future__ import annotations

import itertools
import math
from typing import NamedTuple, Sequence

import numpy as np

from edgecnn.errors import UserError

DEFAULT_BUDGET_PT = 0.5
MARGIN_SE = 1.0               # standard errors of the validation loss kept back from the budget (see choose)
CANDIDATES_PER_EXIT = 40      # entropy quantiles tried per exit (plus "nobody leaves" and "everybody leaves")


class Setting(NamedTuple):
    thresholds: tuple[float, ...]
    accuracy: float               # percent, on the validation split
    expected_ms: float            # mean per-sample latency at batch 1 from the measured stage costs
    exit_fractions: tuple[float, ...]
    loss_se_pt: float = 0.0       # standard error (points) of the accuracy lost vs the final exit, paired


def evaluate_setting(thresholds: Sequence[float], entropies: np.ndarray, predictions: np.ndarray,
                     labels: np.ndarray, stage_ms: Sequence[float]) -> Setting:
    """Accuracy, exit fractions and expected latency of one threshold setting on precomputed exit outputs:
    `entropies` (exits-1, S), `predictions` (exits, S); a sample pays every stage up to its exit."""
    n_exits, n = predictions.shape
    exit_at = exit_indices(thresholds, entropies)
    correct = predictions[exit_at, np.arange(n)] == labels
    fractions = np.bincount(exit_at, minlength=n_exits) / n
    final = predictions[-1] == labels
    lost, gained = int((final & ~correct).sum()), int((~final & correct).sum())
    se = 100 * math.sqrt(max(0.0, lost + gained - (lost - gained) ** 2 / n)) / n
    return Setting(tuple(float(t) for t in thresholds), float(100 * correct.mean()),
                   expected_ms(fractions, stage_ms), tuple(float(f) for f in fractions), se)


def expected_ms(exit_fractions: Sequence[float], stage_ms: Sequence[float]) -> float:
    """Mean latency per sample at batch 1 when these shares of the samples leave at each exit: a sample pays every
    stage up to its exit (the cost of stage k weighs by the share still in at k)."""
    reach = 1.0 - np.concatenate([[0.0], np.cumsum(exit_fractions)[:-1]])
    return float(np.dot(reach, stage_ms))


def exit_indices(thresholds: Sequence[float], entropies: np.ndarray) -> np.ndarray:
    """The exit rule on precomputed (exits-1, S) entropies: each sample's 0-based exit."""
    exit_at = np.full(entropies.shape[1], len(thresholds))
    for k in reversed(range(len(thresholds))):
        exit_at[entropies[k] < thresholds[k]] = k
    return exit_at


def candidate_thresholds(entropy: np.ndarray, count: int = CANDIDATES_PER_EXIT) -> list[float]:
    """0 (nobody leaves), entropy quantiles of the split (as midpoints, so each is a real cut), ln C + 1."""
    qs = np.quantile(entropy, np.linspace(0, 1, count + 1)[1:-1])
    return sorted({0.0, *(round(float(q), 6) for q in qs), round(float(entropy.max()) + 1.0, 6)})


def sweep(entropies: np.ndarray, predictions: np.ndarray, labels: np.ndarray,
          stage_ms: Sequence[float]) -> list[Setting]:
    """Every combination of candidate thresholds, evaluated."""
    grids = [candidate_thresholds(e) for e in entropies]
    return [evaluate_setting(t, entropies, predictions, labels, stage_ms) for t in itertools.product(*grids)]


def pareto(settings: Sequence[Setting]) -> list[Setting]:
    """The settings no other beats on both accuracy and expected latency, fastest first."""
    front: list[Setting] = []
    for s in sorted(settings, key=lambda s: (s.expected_ms, -s.accuracy)):
        if not front or s.accuracy > front[-1].accuracy:
            front.append(s)
    return front


def choose(settings: Sequence[Setting], final_accuracy: float, budget_pt: float,
           margin_se: float = MARGIN_SE) -> Setting:
    """The fastest setting whose loss against the final exit, plus `margin_se` standard errors of that paired
    loss, is at most `budget_pt` (ties: the more accurate). The margin is there because the thresholds are
    tuned on the validation split and judged on images they never saw: a setting that spends the whole budget
    on validation overshoots it on new images about half the time."""
    allowed = [s for s in settings if final_accuracy - s.accuracy + margin_se * s.loss_se_pt <= budget_pt + 1e-9]
    return min(allowed, key=lambda s: (s.expected_ms, -s.accuracy))


def tune(entropies: np.ndarray, predictions: np.ndarray, labels: np.ndarray, stage_ms: Sequence[float],
         budget_pt: float = DEFAULT_BUDGET_PT) -> tuple[Setting, list[Setting], float]:
    """(chosen setting, Pareto sweep, final exit's accuracy) on one split's exit outputs."""
    if not (math.isfinite(budget_pt) and budget_pt >= 0):
        raise UserError(f"the accuracy budget is {budget_pt} points; give a finite number ≥ 0")
    final = float(100 * (predictions[-1] == labels).mean())
    settings = sweep(entropies, predictions, labels, stage_ms)
    return choose(settings, final, budget_pt), pareto(settings), final


__all__ = ["CANDIDATES_PER_EXIT", "DEFAULT_BUDGET_PT", "MARGIN_SE", "Setting", "candidate_thresholds", "choose",
           "evaluate_setting", "exit_indices", "expected_ms", "pareto", "sweep", "tune"]
