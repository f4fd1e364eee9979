"""`edgecnn train` and `edgecnn eval`."""
from __future__ import annotations

import argparse

import torch

from edgecnn.checkpoint import committed_checkpoint, load_checkpoint
from edgecnn.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from edgecnn.train import RECIPES

    p = sub.add_parser(
        "train", help="train a zoo model (Fashion-MNIST by default)",
        description="Train a registered model with its default recipe (or --recipe). The validation split "
                    "is carved from train; the test set is only reported. For 2 processes on one machine: "
                    "torchrun --nproc_per_node=2 --no-python edgecnn train NAME ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--epochs", type=int, help="default: the recipe's")
    p.add_argument("--batch-size", type=int, help="global batch size; default: the recipe's")
    p.add_argument("--lr", type=float, help="default: the recipe's, scaled linearly with the batch size")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="default: the model's (see `edgecnn info`)")
    p.add_argument("--data", default="fashion_mnist", help="fashion_mnist, cifar10 or a dataset directory")
    p.add_argument("--data-root", help="where the named dataset lives (Fashion-MNIST: Debian's package path)")
    p.add_argument("--out", help="checkpoint path (.safetensors); default runs/NAME/NAME.safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the training state next to --out")
    p.add_argument("--threads", type=int, help="intra-op threads per process")
    p.add_argument("--limit", type=int, help="train on the first N images only (smoke runs)")
    p.add_argument("--fp16-weights", action="store_true", help="save weights in fp16 (half the size)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a model's checkpoint",
                       description="Print top-1 accuracy on the test split. Without --checkpoint the committed "
                                   "weights are used.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the committed weights)")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--data-root")
    p.add_argument("--batch-size", type=int, default=500)
    p.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    from edgecnn.train import train

    result = train(args.name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, recipe=args.recipe,
                   data=args.data, data_root=args.data_root, out=args.out, seed=args.seed, resume=args.resume,
                   threads=args.threads, limit=args.limit,
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

    model = create_model(args.name)
    path = args.checkpoint or committed_checkpoint(args.name)
    if path is None:
        raise UserError(f"{args.name} has no committed weights; pass --checkpoint PATH (train one with "
                        f"`edgecnn train {args.name}`)")
    load_checkpoint(model, path)
    ds = load_dataset(args.data, "test", args.data_root)
    if len(ds.class_names) != model.config.num_classes:
        raise UserError(f"{args.name} predicts {model.config.num_classes} classes but {args.data} has "
                        f"{len(ds.class_names)}")
    acc = evaluate(model, ds, batch_size=args.batch_size, progress=True)
    print(f"{args.name}: test accuracy {acc:.2f}% on {len(ds)} {ds.name} images ({path})")
    return 0
