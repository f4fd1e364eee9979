"""`edgecnn train` and `edgecnn eval`."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgecnn.checkpoint import committed_checkpoint, load_checkpoint, read_sidecar
from edgecnn.errors import UserError
from edgecnn.validation import arg_type, non_negative_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from edgecnn.train import AUGMENTATIONS, MAX_DEFAULT_EPOCHS, MIN_DEFAULT_STEPS, RECIPES

    p = sub.add_parser(
        "train", help="train a zoo model (Fashion-MNIST by default)",
        description="Train a registered model with its default recipe (or --recipe). The validation split "
                    "is carved from train; the test set is only reported. Files already at --out are never "
                    "replaced unless they are an earlier edgecnn run and --force is given. For 2 processes on "
                    "one machine: torchrun --nproc_per_node=2 --no-python edgecnn train NAME ...")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--epochs", type=arg_type(positive_int, "--epochs"),
                   help=f"default: the recipe's, raised on small data to reach {MIN_DEFAULT_STEPS} optimizer "
                        f"steps (at most {MAX_DEFAULT_EPOCHS} epochs)")
    p.add_argument("--batch-size", type=arg_type(positive_int, "--batch-size"),
                   help="global batch size; default: the recipe's")
    p.add_argument("--lr", type=arg_type(positive_float, "--lr"),
                   help="default: the recipe's, scaled linearly with the batch size")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="default: the model's (see `edgecnn info`)")
    p.add_argument("--augment", choices=AUGMENTATIONS,
                   help="random crop (pad 2) and horizontal flip of training images; default: the recipe's "
                        "(fmnist: crop+flip; use crop or none for digits and text)")
    p.add_argument("--data", default="fashion_mnist",
                   help="fashion_mnist (default), cifar10 or a dataset directory (IDX, CIFAR-10 batches or one "
                        "sub-folder per class)")
    p.add_argument("--data-root", help="where the named dataset lives; default for Fashion-MNIST: Debian's "
                                       "package path")
    p.add_argument("--out", help="checkpoint path ending in .safetensors (a .json sidecar and a .log go next "
                                 "to it); default: runs/NAME/NAME.safetensors")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier edgecnn run at --out (never a file edgecnn did not write)")
    p.add_argument("--seed", type=arg_type(non_negative_int, "--seed"), default=0, help="default: 0")
    p.add_argument("--resume", action="store_true", help="continue from the training state next to --out")
    p.add_argument("--threads", type=arg_type(positive_int, "--threads"),
                   help="intra-op threads per process; default: torch's")
    p.add_argument("--limit", type=arg_type(positive_int, "--limit"),
                   help="train on the first N images only (smoke runs)")
    p.add_argument("--fp16-weights", action="store_true", help="save weights in fp16 (half the size)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a model's checkpoint",
                       description="Print top-1 accuracy on the test split. Without --checkpoint the committed "
                                   "weights are used.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--checkpoint", help="an edgecnn or timm .safetensors file, or a torchvision-style .pth "
                                        "state dict (tensors only); default: the committed weights")
    p.add_argument("--data", default="fashion_mnist",
                   help="fashion_mnist (default), cifar10 or a dataset directory; its test split is scored")
    p.add_argument("--data-root", help="where the named dataset lives; default for Fashion-MNIST: Debian's "
                                       "package path")
    p.add_argument("--batch-size", type=arg_type(positive_int, "--batch-size"), default=500,
                   help="images per forward pass (default: 500)")
    p.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    from edgecnn.train import train

    result = train(args.name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, recipe=args.recipe,
                   data=args.data, data_root=args.data_root, out=args.out, seed=args.seed, resume=args.resume,
                   force=args.force, threads=args.threads, limit=args.limit, augment=args.augment,
                   save_dtype=torch.float16 if args.fp16_weights else torch.float32)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"{result.model}: test accuracy {result.test_accuracy:.2f}% (val {result.val_accuracy:.2f}%) "
              f"after {result.epochs} epochs in {result.wall_time_s:.0f} s → {result.checkpoint}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from edgecnn.data import load_dataset
    from edgecnn.registry import create_model
    from edgecnn.train import evaluate

    path = committed_checkpoint(args.name) if args.checkpoint is None else Path(args.checkpoint)
    if path is not None and not path.name:
        raise UserError(f"--checkpoint {args.checkpoint!r} is not a file name")
    if path is None:
        raise UserError(f"{args.name} has no committed weights; pass --checkpoint PATH (train one with "
                        f"`edgecnn train {args.name}`)")
    # a model trained on the user's own data may predict other classes from other channels than the zoo's
    trained = read_sidecar(path).get("config") or {}
    model = create_model(args.name, num_classes=trained.get("num_classes"),
                         in_chans=(trained.get("input_size") or [None])[0])
    load_checkpoint(model, path)
    ds = load_dataset(args.data, "test", args.data_root)
    if len(ds.class_names) != model.config.num_classes:
        raise UserError(f"{args.name} predicts {model.config.num_classes} classes but {args.data} has "
                        f"{len(ds.class_names)}")
    acc = evaluate(model, ds, batch_size=args.batch_size, progress=True)
    print(f"{args.name}: test accuracy {acc:.2f}% on {len(ds)} {ds.name} images ({path})")
    return 0
