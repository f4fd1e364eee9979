#!/usr/bin/env python3
"""Classify images with this bundle's model: top-k classes with their probabilities, one line per image.

    python3 run.py IMAGE|FOLDER [--top-k 5] [--backend NAME] [--threads N]
    python3 run.py --check          # verify every file's SHA-256 and load the model once (setup.sh does this)

Needs numpy, Pillow and the runtime in requirements.txt; nothing from edgecnn, no torch.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.dont_write_bytecode = True  # the bundle stays exactly the files edgecnn wrote

from pathlib import Path  # noqa: E402

try:
    import numpy as np

    from edgecnn_bundle import (BundleError, Model, batch_of, decode_image, image_paths, load_manifest, pick_backend,
                                positive)
except ImportError as e:  # the bundle's requirements are not installed for this interpreter
    print(f"run.py: error: {e.name} is not installed for {sys.executable}: pip install -r requirements.txt "
          "(./setup.sh says what else is missing)", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="?", type=Path, metavar="IMAGE|FOLDER")
    p.add_argument("--top-k", type=positive, default=5, help="classes shown per image (default: 5)")
    p.add_argument("--backend", help="runtime to use (default: the bundle's; a Jetson bundle without an engine "
                                     "falls back to ONNX Runtime)")
    p.add_argument("--threads", type=positive, help="CPU threads of the runtime (default: the runtime's)")
    p.add_argument("--check", action="store_true", help="verify the bundle and load its model, then exit")
    args = p.parse_args(argv)
    if args.images is None and not args.check:
        p.error("give an IMAGE or a FOLDER of images (or --check)")
    try:
        manifest = load_manifest()
        backend = pick_backend(manifest, args.backend, lambda line: print(f"note: {line}", file=sys.stderr))
        model = Model(manifest, backend, args.threads)
        if args.check:
            shape = [d if isinstance(d, int) else 1 for d in manifest["input"]["shape"]]
            model.classify(np.zeros(shape, np.float32))
            print(f"ok: {manifest['model']['name']} ({manifest['precision']}) verified and loaded on {backend}")
            return 0
        paths = image_paths(args.images)
        pixels = [decode_image(path) for path in paths]
        names = manifest["class_names"] or [str(i) for i in range(manifest["model"]["num_classes"])]
        k = min(args.top_k, len(names))
        done = 0
        for x in batch_of(pixels, manifest):
            logits, exits = model.classify(x)
            for row in range(min(len(x), len(paths) - done)):
                z = logits[row].astype(np.float64)
                prob = np.exp(z - z.max())
                prob /= prob.sum()
                top = np.argsort(-prob)[:k]
                where = f"  [exit {int(exits[row]) + 1}/{len(model.stages)}]" if exits is not None else ""
                shown = ", ".join(f"{names[i]} {prob[i]:.3f}" for i in top)
                print(f"{paths[done + row]}: {shown}{where}")
            done += len(x)
    except BundleError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # piped into head and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
