"""`edgecnn list` and `edgecnn info`: what is in the zoo."""
from __future__ import annotations

import argparse

from edgecnn.checkpoint import committed_checkpoint, read_sidecar
from edgecnn.cli.table import format_table, human_count
from edgecnn.registry import get_config, list_models
from edgecnn.stats import model_stats


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the model zoo (name, family, input, params, MACs)",
                       description="List registered models. MACs (multiply-accumulates, k/M/G = 10^3/10^6/10^9) "
                                   "are per image at the model's input size.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*' or '*_fmnist'")
    p.add_argument("--family", help="only this family (e.g. resnet, inception_v3)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="show one model's configuration, size and weights",
                       description="Show models' configurations side by side (give several names to compare).")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_info)


def cmd_list(args: argparse.Namespace) -> int:
    names = [n for n in list_models(args.pattern) if not args.family or get_config(n).family == args.family]
    if not names:
        print(f"no model matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
        return 1
    rows = []
    for n in names:
        cfg = get_config(n)
        params, macs = model_stats(n)
        weights = committed_checkpoint(n)
        acc = read_sidecar(weights).get("test_accuracy") if weights else None
        rows.append([n, cfg.family, "×".join(map(str, cfg.input_size)), f"{params:,}", human_count(macs),
                     f"{acc:.2f}%" if acc is not None else ""])
    print(format_table(rows, ["name", "family", "input", "params", "MACs", "test acc"]))
    return 0


def _info_rows(name: str) -> dict[str, str]:
    cfg = get_config(name)
    params, macs = model_stats(name)
    ref = cfg.reference_params
    weights = committed_checkpoint(name)
    meta = read_sidecar(weights) if weights else {}
    return {
        "family": cfg.family,
        "description": cfg.description,
        "input (C×H×W)": "×".join(map(str, cfg.input_size)),
        "classes": str(cfg.num_classes),
        "dataset": cfg.dataset,
        "mean / std": f"{tuple(cfg.mean)} / {tuple(cfg.std)}",
        "parameters": f"{params:,} ({human_count(params)})",
        "reference": (f"{ref:,} ({cfg.reference_source}) " + ("✓ equal" if ref == params else "✗ DIFFERS"))
        if ref else "—",
        "with aux heads": f"{cfg.reference_params_with_aux:,}" if cfg.reference_params_with_aux else "—",
        "MACs / image": f"{macs:,} ({human_count(macs)})",
        "training recipe": cfg.recipe + (f", aux weight {cfg.aux_weight}" if cfg.aux_weight else "")
        + (f", label smoothing {cfg.label_smoothing}" if cfg.label_smoothing else ""),
        "weights": (f"{weights.name}: test {meta.get('test_accuracy')}%, {meta.get('epochs')} epochs, "
                    f"{meta.get('wall_time_s')} s") if weights else "none committed (random init)",
    }


def cmd_info(args: argparse.Namespace) -> int:
    infos = {n: _info_rows(n) for n in args.names}
    keys = list(next(iter(infos.values())))
    rows = [[k] + [infos[n][k] for n in args.names] for k in keys]
    print(format_table(rows, [""] + args.names))
    return 0
