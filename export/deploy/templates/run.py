#!/usr/bin/env python3
"""Classify images with this bundle's model: top-k classes with their probabilities, one line per image.

    python3 run.py IMAGE|FOLDER [--top-k 5] [--backend NAME] [--threads N] [--verify-key PUB.pem]
    python3 run.py --check          # verify every file's SHA-256 and load the model once (setup.sh does this)

A labelled FOLDER (one sub-folder per class, named as the model's classes, as `edgecnn eval --data` reads one) also
gets its top-1 accuracy, on the last line.

Needs numpy, Pillow and the runtime in requirements.txt (and cryptography for --verify-key); nothing from edgecnn,
no torch.
"""
import sys

# Python put this script's folder first on sys.path: off it goes, before any other import, so a file dropped into
# the bundle (an argparse.py, a numpy.py) is never imported; the bundle's own code is loaded by path below.
if __name__ == "__main__" and not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
    del sys.path[0]
sys.dont_write_bytecode = True  # the bundle stays exactly the files edgecnn wrote

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, List, Optional  # noqa: E402

PROG = os.path.basename(sys.argv[0]) or "run.py"  # bench.py starts through this file too


def interrupted() -> int:
    """Ctrl-C: one line, exit 130 (what a shell reports for SIGINT), no traceback."""
    print(f"{PROG}: interrupted", file=sys.stderr)
    return 130


def module_beside(name: str) -> types.ModuleType:
    """A Python file of this bundle, loaded by its path (this folder is not on sys.path)."""
    spec = importlib.util.spec_from_file_location(Path(name).stem, Path(__file__).resolve().with_name(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


try:  # edgecnn_bundle's load_manifest then checks every listed file, itself included, before a model is loaded
    import numpy as np

    b = module_beside("edgecnn_bundle.py")
except ImportError as e:  # the bundle's requirements are not installed for this interpreter
    print(f"{PROG}: error: {e.name} is not installed for {sys.executable}: pip install -r requirements.txt "
          "(./setup.sh says what else is missing)", file=sys.stderr)
    sys.exit(2)
except (OSError, SyntaxError) as e:
    print(f"{PROG}: error: edgecnn_bundle.py beside it is missing or damaged ({type(e).__name__}); copy the "
          "bundle again", file=sys.stderr)
    sys.exit(2)
except KeyboardInterrupt:
    sys.exit(interrupted())


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="?", type=Path, metavar="IMAGE|FOLDER")
    p.add_argument("--top-k", type=b.positive, default=5, help="classes shown per image (default: 5)")
    p.add_argument("--backend", help="runtime to use (default: the bundle's; a Jetson bundle without an engine "
                                     "falls back to ONNX Runtime)")
    p.add_argument("--threads", type=b.positive, help="CPU threads of the runtime (default: the runtime's)")
    p.add_argument("--max-image-pixels", type=b.positive, default=b.DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                   help="refuse images of more pixels, unread (decompression bombs; default: %(default)s)")
    p.add_argument("--verify-key", type=Path, metavar="PUB.pem",
                   help="refuse the bundle unless manifest.json.sig is its signature by this Ed25519 public key")
    p.add_argument("--check", action="store_true", help="verify the bundle and load its model, then exit")
    args = p.parse_args(argv)
    if args.images is None and not args.check:
        p.error("give an IMAGE or a FOLDER of images (or --check)")
    try:
        manifest = b.load_manifest(verify_key=args.verify_key)
        backend = b.pick_backend(manifest, args.backend, lambda line: print(f"note: {line}", file=sys.stderr))
        model = b.Model(manifest, backend, args.threads)
        if args.check:
            return _check(manifest, model, backend, signed=args.verify_key is not None)
        paths = b.image_paths(args.images)
        names = manifest["class_names"] or [str(i) for i in range(manifest["model"]["num_classes"])]
        labels = b.labelled_images(args.images, paths, manifest["class_names"])
        logits, exits = b.classify_images(model, paths, manifest, args.max_image_pixels)
        k = min(args.top_k, len(names))
        for row, path in enumerate(paths):
            z = logits[row].astype(np.float64)
            prob = np.exp(z - z.max())
            prob /= prob.sum()
            top = np.argsort(-prob)[:k]
            where = f"  [exit {int(exits[row]) + 1}/{len(model.stages)}]" if exits is not None else ""
            shown = ", ".join(f"{names[i]} {prob[i]:.3f}" for i in top)
            print(b.printable(f"{path}: {shown}{where}"))
        if labels is not None:
            score = b.accuracy_record(logits.argmax(axis=1), labels, args.images, manifest)
            print(b.printable(f"accuracy: top-1 {score['top1']:.2f}% ({score['correct']}/{score['samples']}) on "
                              f"{args.images}, labelled by its class sub-folders"))
    except b.BundleError as e:
        print(f"run.py: error: {b.printable(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # piped into head and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return interrupted()
    return 0


def _check(manifest: dict, model: Any, backend: str, signed: bool) -> int:
    """One run of the model on zeros; files the manifest does not list are named (never verified, never loaded)."""
    shape = [d if isinstance(d, int) else 1 for d in manifest["input"]["shape"]]
    model.classify(np.zeros(shape, np.float32))
    unlisted = b.unlisted_files(manifest)
    if unlisted:
        print(b.printable(f"run.py: warning: {len(unlisted)} file(s) here are not listed in manifest.json, so they "
                          f"were not verified (and are never loaded): {', '.join(unlisted)}"), file=sys.stderr)
    print(b.printable(f"ok: {manifest['model']['name']} ({manifest['precision']}) verified"
                      f"{' (signature included)' if signed else ''} and loaded on {backend}"
                      f"{f'; {len(unlisted)} unlisted file(s) not verified' if unlisted else ''}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
