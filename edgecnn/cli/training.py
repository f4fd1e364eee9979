"""`edgecnn train` and `edgecnn eval`."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgecnn.cli.args import add_description, add_output
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
    p.add_argument("--batch", "--batch-size", dest="batch_size", type=arg_type(positive_int, "--batch"),
                   help="global batch size; default: the recipe's (--batch-size: the old name)")
    p.add_argument("--lr", type=arg_type(positive_float, "--lr"),
                   help="default: the recipe's, scaled linearly with the batch size")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="default: the model's (see `edgecnn info`)")
    p.add_argument("--augment", choices=AUGMENTATIONS,
                   help="random crop (pad 2) and horizontal flip of training images; default: the recipe's "
                        "(fmnist: crop+flip; use crop or none for digits and text)")
    p.add_argument("--data",
                   help="fashion_mnist, cifar10 or a dataset directory (IDX, CIFAR-10 batches or one sub-folder per "
                        "class); default: the dataset the --init/--trunk weights were trained on, else fashion_mnist")
    p.add_argument("--data-root", help="where the named dataset lives; default for Fashion-MNIST: Debian's "
                                       "package path")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init", metavar="committed|CHECKPOINT",
                       help="start from trained weights (fine-tuning, as timm's pretrained=True): the committed ones "
                            "or a checkpoint of NAME; the classifier is re-initialised when the data has another "
                            "class count, every other weight is kept")
    start.add_argument("--trunk", metavar="committed|CHECKPOINT",
                       help="BranchyNet models (b_*): train the exits on this trained trunk (the committed one or a "
                            "checkpoint of the trunk model, e.g. yours), frozen unless --train-trunk")
    p.add_argument("--train-trunk", action="store_true",
                   help="with --trunk: train trunk and exits jointly (the paper's joint training), from that trunk")
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

    p = sub.add_parser("eval", help="score any model on a labelled dataset: top-1, per class, confusion matrix",
                       description="Score MODEL on the test split of its weights' own dataset (a checkpoint's "
                                   "sidecar, an artifact's manifest; the committed weights: Fashion-MNIST) or of "
                                   "--data: top-1, per-class accuracy, the confusion matrix and the precision the "
                                   "runtime executed. MODEL is a zoo name (its committed weights, or --checkpoint), "
                                   "an edgecnn checkpoint, an ONNX file, an artifact folder or a deploy bundle; "
                                   "artifacts and bundles run on the runtime their manifest names, as bench times "
                                   "them.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--checkpoint", help="with a zoo name: an edgecnn or timm .safetensors file, or a "
                                        "torchvision-style .pth state dict (tensors only); default: the committed "
                                        "weights")
    add_description(p, data_help="a labelled dataset to score on instead of the weights' own: a folder (test/ with one "
                                 "sub-folder per class, or the class sub-folders themselves), IDX files, CIFAR-10 "
                                 "batches, or fashion_mnist / cifar10")
    p.add_argument("--data-root", help="where the named --data lives; default for Fashion-MNIST: Debian's "
                                       "package path")
    p.add_argument("--backend", help="artifacts and bundles: the runtime to run on (default: the manifest's)")
    p.add_argument("--threads", type=arg_type(positive_int, "--threads"),
                   help="threads of the runtime (default: the runtime's own)")
    p.add_argument("--batch", "--batch-size", dest="batch_size", type=arg_type(positive_int, "--batch"), default=500,
                   help="images per call where the model takes any batch (default: 500)")
    p.add_argument("--limit", type=arg_type(positive_int, "--limit"), help="score the first N test images only")
    p.add_argument("--out", type=Path,
                   help="a directory for eval.txt, eval.json and confusion.png (default: print only)")
    add_output(p, progress=False)
    p.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> int:
    from edgecnn.train import train

    result = train(args.name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, recipe=args.recipe,
                   data=args.data, data_root=args.data_root, out=args.out, seed=args.seed, resume=args.resume,
                   force=args.force, threads=args.threads, limit=args.limit, augment=args.augment,
                   save_dtype=torch.float16 if args.fp16_weights else torch.float32, init=args.init, trunk=args.trunk,
                   train_trunk=args.train_trunk)
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"{result.model}: test accuracy {result.test_accuracy:.2f}% (val {result.val_accuracy:.2f}%) on "
              f"{result.dataset} "
              f"after {result.epochs} epochs in {result.wall_time_s:.0f} s → {result.checkpoint}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from edgecnn.benchmarks.evaluation import check_out, evaluate, write_evaluation
    from edgecnn.model_ref import Description, WeightsData

    if args.checkpoint is not None and not Path(args.checkpoint).name:
        raise UserError(f"--checkpoint {args.checkpoint!r} is not a file name")
    if args.out is not None:
        check_out(args.out, args.force)  # before any work: nothing is scored for an --out that cannot be written
    if args.data_root is not None and args.data is None:
        raise UserError("--data-root says where the dataset --data names lives; give --data too (e.g. --data cifar10)")
    data = WeightsData.named(args.data, root=args.data_root) if args.data is not None else None
    result = evaluate(args.model, data, checkpoint=args.checkpoint, threads=args.threads, backend=args.backend,
                      batch_size=args.batch_size, limit=args.limit,
                      description=Description(mean=args.mean, std=args.std, classes=args.classes))
    print("\n".join(result.lines()))
    if args.out is not None:
        print(f"wrote {write_evaluation(result, args.out, args.force)}/: eval.txt, eval.json, confusion.png")
    return 0
