"""What a measurement can tell apart: `pick` never acts on a difference smaller than its noise.

- Chance: a configuration whose top-1 is near chance for its class count is no trained model for the data it was
  measured on (committed Fashion-MNIST weights scored on someone's digits): near means within a tenth of the way
  from chance to 100 %, or not significantly above chance (one-sided binomial test at 1 %) on so few images.
- Accuracy: two top-1 figures on the same test images differ only when the difference is significant at 5 %.
  Configurations of one model (same weights, same images) are paired: the images on which they disagree are at
  most those on which either disagrees with their common FP32 reference, and McNemar's test needs the difference
  to exceed 1.96 × sqrt(that count) images. Other pairs are compared as two binomial proportions. Never less
  than one image.
- Latency: two configurations are as fast as each other when their medians differ by less than the spread of
  their interleaved rounds' medians.

Among configurations tied in accuracy the faster ranks first (`rank`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

Z_95 = 1.96
CHANCE_ALPHA = 0.01
NEAR_CHANCE_SHARE = 0.1   # of the way from chance to 100 %
T = TypeVar("T")


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p), summed in log space (stable for n in the tens of thousands)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def near_chance(accuracy: dict[str, Any]) -> str | None:
    """Why an accuracy record is no trained model's (None when it is, or when its class count is not recorded)."""
    classes, samples, top1 = accuracy.get("classes"), accuracy.get("samples"), accuracy["top1"]
    if not isinstance(classes, int) or classes < 2 or not isinstance(samples, int) or samples < 1:
        return None
    chance = 100.0 / classes
    bar = chance + NEAR_CHANCE_SHARE * (100.0 - chance)
    significant = binomial_tail(round(top1 * samples / 100), samples, chance / 100) < CHANCE_ALPHA
    if top1 > bar and significant:
        return None
    return (f"not a trained model for this dataset: {top1:.2f}% top-1 on {samples} {accuracy.get('dataset', '')} "
            f"images is near chance ({chance:.2f}% for {classes} classes; a trained model is well above {bar:.1f}%)")


def accuracy_resolution(a: dict[str, Any], b: dict[str, Any], paired: bool) -> float:
    """The smallest top-1 difference, in points, that tells accuracy records `a` and `b` apart (see the module doc).
    `paired`: measured on the same images against the same FP32 reference (one model's configurations). Records
    that do not say how many images they were measured on are compared as they are (resolution 0)."""
    if not (isinstance(a.get("samples"), int) and isinstance(b.get("samples"), int)):
        return 0.0
    n = min(a["samples"], b["samples"])
    one_image = 100.0 / n
    agree = [r.get("agreement_vs_torch_fp32") for r in (a, b)]
    if paired and None not in agree:
        discordant = sum(n * (100.0 - x) / 100.0 for x in agree)
        return max(one_image, Z_95 * math.sqrt(max(discordant, 1.0)) * one_image)
    pa, pb = a["top1"] / 100.0, b["top1"] / 100.0
    spread = math.sqrt(pa * (1 - pa) / a["samples"] + pb * (1 - pb) / b["samples"])
    return max(one_image, 100.0 * Z_95 * spread)


def latency_tied(a: dict[str, Any], b: dict[str, Any], a_ms: float, b_ms: float) -> bool:
    """Whether two records' latencies differ by less than the spread of their rounds' medians."""
    spread = max(max(r["round_p50_ms"]) - min(r["round_p50_ms"]) for r in (a, b))
    return abs(a_ms - b_ms) <= spread


def rank(candidates: Sequence[T], accuracy: Callable[[T], float], latency: Callable[[T], float],
         resolution: Callable[[T, T], float]) -> list[T]:
    """Most accurate first, where accuracy differences under `resolution` are ties broken by latency: the most
    accurate remaining candidate and every one not significantly below it form a tier, fastest first."""
    left = sorted(candidates, key=lambda c: (-accuracy(c), latency(c)))
    ranked: list[T] = []
    while left:
        top = left[0]
        tier = [c for c in left if c is top or accuracy(top) - accuracy(c) < resolution(top, c)]
        ranked += sorted(tier, key=latency)
        placed = {id(c) for c in tier}
        left = [c for c in left if id(c) not in placed]
    return ranked


__all__ = ["accuracy_resolution", "binomial_tail", "latency_tied", "near_chance", "rank"]
