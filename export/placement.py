"""Which layers an INT8 artifact leaves in float, chosen by measurement on this runtime.

- `--placement fast` (`place_for_speed`): the layers whose INT8 kernel the runtime's profiler measures slower than
  their float kernel go back to float; the result is kept only if it is faster end to end, and where no INT8
  placement beats FP32 here, every layer stays float (the artifact is never slower than its FP32 one).
- `--fallback cost` (`cheapest_fallback`), for `--max-drop`: the accuracy each candidate layer recovers alone in float
  and the latency it adds there are measured, the cheapest set whose gains reach the drop is chosen (every subset of
  the candidates is weighed: a knapsack over measured numbers), then quantized and scored once to confirm it; where
  gains do not add up, the layers cheapest in float go back first.
  `--fallback sensitivity` (the default) returns the most sensitive nodes first, whatever they cost.

Both work through a `Trial`, which quantizes with some layers excluded, scores, keeps copies and profiles; the
quantize pass (`edgecnn.export.quantize`) lends one over its staging directory, `edgecnn explain` one over a copy.
"""
from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from edgecnn.calibration import fallback_to_float
from edgecnn.export.profile import LayerComparison, LayerMap, Profile, compare, graph_layers

MAX_CANDIDATES = 8    # layers --fallback cost measures (and explain scores in float): K quantizations
CONFIRMATIONS = 4     # cheapest subsets confirmed before the layers are taken cheapest first


@dataclass
class Trial:
    """What a layer search may do: quantize with some graph nodes left in float (returns the validation accuracy,
    NaN without labels; the trial's model file then holds that model), keep a copy of the model aside and put one
    back, and profile model files in interleaved rounds (FP32's first)."""
    fp32: Path                                       # the FP32 model file the quantizer reads
    quantize: Callable[[list[str]], float]
    keep: Callable[[str], Path]
    restore: Callable[[Path], None]
    profile: Callable[[list[Path]], list[Profile]]


def _machine() -> dict[str, Any]:
    """This machine's record (CPU and its speed-deciding flags): measured placements hold for it alone."""
    from edgecnn.export.deploy import bundle_code

    return bundle_code().machine_info()


def median_ratio(ours: Profile, theirs: Profile) -> float:
    """Median over the interleaved rounds of our latency over theirs (drift hits both alike within a round)."""
    return statistics.median(a / b for a, b in zip(ours.round_latency_ms, theirs.round_latency_ms))


def layer_rows(trial: Trial, layers: LayerMap, models: dict[str, Path]) -> list[LayerComparison]:
    """Profile `models` (label → model file, FP32's first) in one interleaved run and compare them layer by layer."""
    profiles = dict(zip(models, trial.profile(list(models.values()))))
    return compare({label: profiles[label].by_layer(layers if path == trial.fp32 else graph_layers(trial.fp32, path))
                    for label, path in models.items()}, layers.layers)


def _nodes(layers: LayerMap, names: Sequence[str]) -> list[str]:
    return [node for layer in names for node in layers.nodes.get(layer, [])]


def slower_in_int8(row: LayerComparison) -> bool:
    return bool(row.layers) and row.us.get("int8", 0.0) > row.us.get("fp32", math.inf)


def place_for_speed(trial: Trial, layers: LayerMap, exclude: list[str], accuracy: float,
                    fp32_accuracy: float | None) -> tuple[list[str], float | None, dict[str, Any]]:
    """Leave in float the layers INT8 runs slower here; returns (nodes now excluded, accuracy, the record).

    Three candidates are timed in one interleaved run: every quantized layer in INT8 (the trial's model as it is),
    the slow layers in float, and, for comparison, FP32. The faster INT8 placement is kept; if neither beats FP32,
    every layer goes back to float (the FP32 model: INT8 gains nothing on this runtime here)."""
    all_int8 = trial.keep("placement-all-int8")
    rows = layer_rows(trial, layers, {"fp32": trial.fp32, "int8": all_int8})
    slow = [row for row in rows if slower_in_int8(row)]
    record: dict[str, Any] = {
        "machine": _machine(),
        "rule": "a layer whose INT8 kernel(s) the runtime's profiler measures slower than its float kernel(s) stays "
                "in float; kept only if faster end to end, and never slower than FP32",
        "layers": [{"layers": list(row.layers), "fp32_us": round(row.us.get("fp32", 0.0), 2),
                    "int8_us": round(row.us.get("int8", 0.0), 2), "slower_in_int8": slower_in_int8(row)}
                   for row in rows if row.layers]}
    candidates = {"all-int8": (all_int8, exclude, accuracy)}
    if slow:
        placed_exclude = exclude + [n for n in _nodes(layers, [l for row in slow for l in row.layers])
                                    if n not in exclude]
        placed_accuracy = trial.quantize(placed_exclude)
        candidates["placed"] = (trial.keep("placement-placed"), placed_exclude, placed_accuracy)
    profiles = dict(zip(["fp32", *candidates], trial.profile([trial.fp32, *(c[0] for c in candidates.values())])))
    ratios = {name: median_ratio(profiles[name], profiles["fp32"]) for name in candidates}
    best = min(ratios, key=ratios.get)
    record["latency_ms"] = {name: round(p.latency_ms, 4) for name, p in profiles.items()}
    record["ratio_to_fp32"] = {name: round(r, 3) for name, r in ratios.items()}
    if ratios[best] > 1:
        trial.restore(trial.fp32)
        record.update(chosen="float", left_in_float="every layer", reason=(
            "no INT8 placement ran faster than FP32 on this runtime here (every one measured slower in the same "
            "interleaved run), so every layer computes in float"))
        return exclude, fp32_accuracy, record
    path, chosen_exclude, chosen_accuracy = candidates[best]
    trial.restore(path)
    record.update(chosen=best, left_in_float=[l for row in slow for l in row.layers] if best == "placed" else [])
    return chosen_exclude, chosen_accuracy, record


def accuracy_gains(quantize: Callable[[list[str]], float], layers: LayerMap, candidates: Sequence[str],
                   exclude: list[str], accuracy: float) -> dict[str, float]:
    """Per candidate layer, the validation accuracy (points) it recovers alone in float, on top of `exclude`
    (`quantize(nodes)` quantizes with those nodes in float and returns the accuracy)."""
    return {layer: round(quantize(exclude + _nodes(layers, [layer])) - accuracy, 4) for layer in candidates}


def ranked_layers(layers: LayerMap, ranked_nodes: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """Layers in the order of their most sensitive node, leaving out those already in float."""
    order = []
    for node in ranked_nodes:
        layer = layers.resolve(node)
        if layer and layer not in order and not set(layers.nodes.get(layer, [])) <= set(exclude):
            order.append(layer)
    return order


def cheapest_subset(gains: dict[str, float], costs: dict[str, float], needed: float,
                    refused: Sequence[frozenset[str]] = ()) -> frozenset[str] | None:
    """The set of layers whose summed accuracy gain reaches `needed` at the least summed latency cost (every subset
    weighed; ties: fewer layers, then more gain); None if no set not in `refused` reaches it."""
    best, best_key = None, None
    for size in range(1, len(gains) + 1):
        for subset in itertools.combinations(gains, size):
            chosen = frozenset(subset)
            gain = sum(gains[l] for l in subset)
            if gain + 1e-9 < needed or chosen in refused:
                continue
            key = (sum(costs[l] for l in subset), size, -gain)
            if best_key is None or key < best_key:
                best, best_key = chosen, key
    return best


def cheapest_fallback(trial: Trial, layers: LayerMap, ranked_nodes: Sequence[str], exclude: list[str],
                      fp32_accuracy: float, accuracy: float, max_drop: float) -> tuple[list[str], float, dict[str, Any]]:
    """Return to float the layers that bring the drop within `max_drop` at the least latency lost, measured: (the
    nodes returned to float, the confirmed accuracy, the record; the trial's model is then that one).

    The knapsack weighs the candidates' measured gains; where no set of them is confirmed (gains that do not add up,
    or too few candidates), every layer is ordered by the latency it adds in float, cheapest first (ties: the most
    sensitive first), and the fewest of that order that meet the drop are found as the sensitivity order's are
    (doubling, then bisection); all of them being needed is refused as it is there."""
    ranked = ranked_layers(layers, ranked_nodes, exclude)
    candidates = ranked[:MAX_CANDIDATES]
    gains = accuracy_gains(trial.quantize, layers, candidates, exclude, accuracy)
    trial.quantize(exclude)  # the model the costs are measured on: every candidate in INT8
    rows = layer_rows(trial, layers, {"fp32": trial.fp32, "int8": trial.keep("fallback-base")})
    by_layer = {layer: row for row in rows for layer in row.layers}
    # the latency a layer adds back in float: its float kernel's time less its INT8 kernel's (negative: it saves)
    costs = {layer: round(by_layer[layer].us.get("fp32", 0.0) - by_layer[layer].us.get("int8", 0.0), 2)
             if layer in by_layer else 0.0 for layer in ranked}
    needed = fp32_accuracy - max_drop - accuracy
    record: dict[str, Any] = {
        "method": "edgecnn: cost — per candidate layer (the most sensitive first, up to "
                  f"{MAX_CANDIDATES}), the validation accuracy it recovers alone in float and the latency its float "
                  "kernel adds (runtime profiler); the cheapest set whose gains reach the drop, confirmed by "
                  "scoring it; else every layer, cheapest in float first, doubling then bisection",
        "candidates": [{"layer": l, "accuracy_gain_pt": gains[l], "latency_cost_us": costs[l]} for l in candidates],
        "needed_gain_pt": round(needed, 4), "confirmations": [], "machine": _machine()}

    def in_float(chosen: Sequence[str]) -> list[str]:
        return exclude + [n for n in _nodes(layers, chosen) if n not in exclude]

    def chosen_record(chosen: Sequence[str], how: str) -> dict[str, Any]:
        record.update(chosen_by=how, estimated_latency_cost_us=round(sum(costs[l] for l in chosen), 2), chosen=[
            {"layer": l, "nodes": layers.nodes[l], "accuracy_gain_pt": gains.get(l), "latency_cost_us": costs[l]}
            for l in chosen])
        return record

    refused: list[frozenset[str]] = []
    for _ in range(CONFIRMATIONS):
        subset = cheapest_subset(gains, costs, needed, refused)
        if subset is None:
            break
        chosen = [l for l in candidates if l in subset]
        confirmed = trial.quantize(in_float(chosen))
        record["confirmations"].append({"layers": chosen, "accuracy": confirmed,
                                        "drop": round(fp32_accuracy - confirmed, 4)})
        if fp32_accuracy - confirmed <= max_drop:
            return in_float(chosen)[len(exclude):], confirmed, chosen_record(chosen, "knapsack over measured gains")
        refused.append(subset)
    order = sorted(ranked, key=lambda layer: (costs[layer], ranked.index(layer)))
    result = fallback_to_float(order, lambda chosen: trial.quantize(in_float(chosen)), fp32_accuracy, accuracy,
                               max_drop)
    trial.quantize(in_float(result.excluded))
    record["cost_order"] = {"order": order, "steps": result.steps}
    return (in_float(result.excluded)[len(exclude):], result.accuracy,
            chosen_record(result.excluded, "cheapest in float first, doubling then bisection"))


__all__ = ["CONFIRMATIONS", "MAX_CANDIDATES", "Trial", "accuracy_gains",
           "cheapest_fallback", "cheapest_subset", "layer_rows", "median_ratio", "place_for_speed", "ranked_layers"]
