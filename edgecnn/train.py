"""Training and evaluation on CPU, one process or many (`torchrun --nproc_per_node=2`, DDP over gloo).

The papers' recipes are named presets (`RECIPES`); a model's config names its default one. The
validation split is carved from train with a fixed seed; the test set is only ever reported.
Everything a run will write is checked before any data is read: a run never replaces a file
edgecnn did not write, and replaces its own earlier output only with `force=True`.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from edgecnn.checkpoint import (SAFETENSORS_SUFFIX, committed_checkpoint, ensure_writable_dir,
                                is_edgecnn_checkpoint, is_edgecnn_sidecar, is_edgecnn_training_state, load_checkpoint,
                                load_training_state, read_sidecar, save_checkpoint, save_training_state,
                                sidecar_path)
from edgecnn.branchynet import MultiExitNet, exit_accuracies
from edgecnn.data import ImageDataset, load_dataset, preprocess, train_val_split
from edgecnn.errors import UserError
from edgecnn.layers import AuxOutputs, logits_of
from edgecnn.model_ref import WeightsData, comparable_class_name, config_from_sidecar, weights_data
from edgecnn.registry import ModelConfig, create_model, get_config
from edgecnn.validation import non_negative_int, positive_float, positive_int
from edgecnn.zoo.branchynet import TRUNKS

AUGMENTATIONS = ("none", "crop", "crop+flip")
# Without --epochs a run gets its recipe's epochs, raised on small data so it takes at least
# MIN_DEFAULT_STEPS optimizer steps (a 1,294-image folder at batch 128 is 9 steps an epoch: the
# recipe's 15 epochs would be 135 steps), but never more than MAX_DEFAULT_EPOCHS epochs.
MIN_DEFAULT_STEPS = 2000
MAX_DEFAULT_EPOCHS = 300


@dataclass(frozen=True)
class Recipe:
    optimizer: str               # "sgd" | "rmsprop"
    lr: float                    # for `batch_size`; scaled linearly when the batch size changes
    batch_size: int
    epochs: int
    weight_decay: float
    schedule: str                # "cosine" (per step, 1 warm-up epoch) | "step"
    step_epochs: int = 0         # step schedule: multiply by `step_gamma` every `step_epochs`
    step_gamma: float = 1.0
    momentum: float = 0.9
    nesterov: bool = False
    rmsprop_alpha: float = 0.9   # RMSProp decay
    rmsprop_eps: float = 1.0
    augment: str = "crop+flip"   # one of AUGMENTATIONS: random crop (pad 2), then horizontal flip
    label_smoothing: float | None = None  # None: the model config's value
    source: str = ""


RECIPES: dict[str, Recipe] = {
    "fmnist": Recipe("sgd", 0.1, 128, 15, 5e-4, "cosine", nesterov=True,
                     source="edgecnn: fast Fashion-MNIST recipe for 2 CPU cores"),
    "inception_v3": Recipe("rmsprop", 0.045, 32, 100, 4e-5, "step", step_epochs=2, step_gamma=0.94,
                           label_smoothing=0.1,
                           source="Szegedy et al. 2015 (Inception v3): RMSProp decay 0.9, eps 1.0, lr 0.045 "
                                  "x0.94 every 2 epochs, batch 32, label smoothing 0.1"),
    "googlenet": Recipe("sgd", 0.01, 128, 100, 2e-4, "step", step_epochs=8, step_gamma=0.96,
                        source="Szegedy et al. 2014 (GoogLeNet): SGD momentum 0.9, lr -4% every 8 epochs"),
    "resnet": Recipe("sgd", 0.1, 256, 90, 1e-4, "step", step_epochs=30, step_gamma=0.1,
                     source="He et al. 2015: SGD momentum 0.9, lr 0.1 /10 every 30 epochs, wd 1e-4, batch 256"),
    "vgg": Recipe("sgd", 0.01, 256, 74, 5e-4, "step", step_epochs=25, step_gamma=0.1,
                  source="Simonyan & Zisserman 2014: SGD momentum 0.9, lr 0.01 /10 on plateau, wd 5e-4, batch 256"),
    "alexnet": Recipe("sgd", 0.01, 128, 90, 5e-4, "step", step_epochs=30, step_gamma=0.1,
                      source="Krizhevsky et al. 2012: SGD momentum 0.9, lr 0.01 /10 on plateau, wd 5e-4, batch 128"),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return RECIPES[name]


# ---------------------------------------------------------------- distributed plumbing

def _world() -> tuple[int, int]:
    """(rank, world size); starts the gloo process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _all_sum(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------- pieces

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_augment(mode: str) -> str:
    if mode not in AUGMENTATIONS:
        raise UserError(f"--augment must be one of {', '.join(AUGMENTATIONS)}, got {mode!r}")
    return mode


def augment_batch(images: torch.Tensor, mode: str, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """A uint8 batch as `mode` says: untouched ("none"), randomly cropped after zero padding ("crop"),
    then also flipped horizontally half the time ("crop+flip"; wrong for digits and text)."""
    if mode == "none":
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if mode == "crop":
        return out
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)


def make_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    # No weight decay on norms and biases: they are not what regularisation means to shrink. A frozen part (a
    # BranchyNet's trunk) is not the optimizer's at all.
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim > 1]
    no_decay = [p for p in trained if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=recipe.rmsprop_alpha, eps=recipe.rmsprop_eps,
                                   momentum=recipe.momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)


def lr_factor(recipe: Recipe, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    total = epochs * steps_per_epoch
    if recipe.schedule == "cosine":
        warm = steps_per_epoch

        def cosine(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        return cosine

    def step_decay(step: int) -> float:
        return recipe.step_gamma ** ((step // steps_per_epoch) // recipe.step_epochs)
    return step_decay


def default_epochs(recipe_epochs: int, steps_per_epoch: int) -> int:
    """Epochs when the user gives none: the recipe's, or enough for MIN_DEFAULT_STEPS optimizer steps on
    small data, whichever is more, capped at MAX_DEFAULT_EPOCHS (the cap never lowers the recipe's)."""
    needed = math.ceil(MIN_DEFAULT_STEPS / steps_per_epoch)
    return max(recipe_epochs, min(needed, MAX_DEFAULT_EPOCHS))


def _progress(iterable: Any, desc: str, enabled: bool) -> Any:
    """A tqdm bar on a terminal only: redirected output would hold a bar frozen at 0/N, so it gets the
    per-epoch log lines alone."""
    return tqdm(iterable, desc=desc, leave=False, mininterval=1.0, disable=not (enabled and sys.stderr.isatty()))


def loss_fn(output: torch.Tensor | AuxOutputs, target: torch.Tensor, aux_weight: float,
            label_smoothing: float) -> torch.Tensor:
    if not isinstance(output, AuxOutputs):
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)
    weights = output.weights or (aux_weight,) * len(output.aux) + (1.0,)
    return sum(w * F.cross_entropy(head, target, label_smoothing=label_smoothing)
               for w, head in zip(weights, (*output.aux, output.logits)))


@torch.no_grad()
def evaluate(model: nn.Module, ds: ImageDataset, batch_size: int = 500, rank: int = 0, world: int = 1,
             progress: bool = False) -> float:
    """Top-1 accuracy in percent; under DDP each rank scores a shard and the counts are summed."""
    positive_int("batch_size", batch_size)
    model.eval()
    config = getattr(model, "module", model).config
    indices = torch.arange(rank, len(ds), world)
    correct = 0
    for start in _progress(range(0, len(indices), batch_size), "eval", progress and rank == 0):
        images, labels = ds.get_batch(indices[start:start + batch_size], size=config.input_size[1:])
        x = preprocess(images, config).contiguous(memory_format=torch.channels_last)
        correct += (logits_of(model(x)).argmax(1) == labels).sum().item()
    correct, total = _all_sum([correct, len(indices)], world)
    return 100.0 * correct / max(1, total)


# ---------------------------------------------------------------- the training loop

@dataclass
class TrainResult:
    model: str
    checkpoint: str
    epochs: int
    val_accuracy: float
    test_accuracy: float
    wall_time_s: float
    dataset: str = ""  # the name of the data the accuracies are measured on


def _is_training_log(path: Path) -> bool:
    """A log edgecnn wrote: JSON lines, one per epoch plus a final one (small; a user's file is not)."""
    try:
        if path.stat().st_size > 1 << 20:
            return False
        entries = [json.loads(line) for line in path.read_text().splitlines()]
    except (OSError, ValueError):
        return False
    return all(isinstance(e, dict) and ("epoch" in e or "final" in e) for e in entries)


def run_files(out: Path) -> dict[str, Path]:
    """Every file a run writes for the checkpoint `out`."""
    return {"checkpoint": out, "sidecar": sidecar_path(out), "log": out.with_suffix(".log"),
            "state": out.with_name(out.stem + ".state.safetensors")}


def check_outputs(out: Path, *, resume: bool, force: bool) -> None:
    """Refuse, before any data is read, every way this run could replace what it should not.

    A file that is there must be edgecnn's own output (checkpoint with an edgecnn sidecar, training log,
    training state), and even that is replaced only with `force` (or continued with `resume`).
    """
    if out.suffix != SAFETENSORS_SUFFIX or not out.stem:
        example = out.with_suffix(SAFETENSORS_SUFFIX) if out.stem else out / f"model{SAFETENSORS_SUFFIX}"
        raise UserError(f"--out {str(out)!r}: a checkpoint path is a file name ending in {SAFETENSORS_SUFFIX} "
                        f"(e.g. {example})")
    files = run_files(out)
    if resume and not files["state"].is_file():
        raise UserError(f"--resume: there is no saved training state {files['state']}, so there is nothing to "
                        "resume; run without --resume to start from scratch")
    ours = {"checkpoint": is_edgecnn_checkpoint, "sidecar": is_edgecnn_sidecar, "log": _is_training_log,
            "state": is_edgecnn_training_state}
    for kind, path in files.items():
        if not path.exists():
            continue
        if not path.is_file() or not ours[kind](path):
            raise UserError(f"{path} exists and is not an edgecnn {kind}; edgecnn never replaces it, "
                            "whatever the flags: choose another --out")
        if not (force or resume):
            hint = ("pass --resume to continue that run, or --force to start over" if kind == "state"
                    else "pass --force to replace that earlier run, or choose another --out")
            raise UserError(f"{path} exists (an earlier edgecnn run); {hint}")
    ensure_writable_dir(out.parent)


def _data_loader(data: str | None, data_root: str | None,
                 start: StartingWeights | None) -> Callable[[str], ImageDataset]:
    """How the run reads a split: `data` when given, else the dataset the starting weights were trained on (one line
    asking for --data when it is not here), else Fashion-MNIST."""
    if data is None and data_root is None and start is not None and start.dataset is not None:
        return start.dataset.load
    return lambda split: load_dataset(data or "fashion_mnist", split, data_root)


def _dataset_path(data: str | None, data_root: str | None, start: StartingWeights | None) -> str | None:
    """Where the data was read from; None for a named dataset in its default place."""
    if data_root is not None:
        return str(Path(data_root).resolve())
    if data is None:
        return start.dataset.path if start is not None and start.dataset is not None else None
    return str(Path(data).resolve()) if Path(data).is_dir() else None


# ---------------------------------------------------------------- starting from trained weights

COMMITTED = "committed"  # --init/--trunk: edgecnn's committed Fashion-MNIST weights


@dataclass(frozen=True)
class StartingWeights:
    """Trained weights a run starts from (timm's pretrained=True): the whole model's (`role` "init", fine-tuning)
    or a BranchyNet trunk's ("trunk"). `config` says how they were trained (classes, channels), `dataset` on what."""
    role: str
    path: Path
    committed: bool
    config: ModelConfig
    dataset: WeightsData | None
    frozen: bool = False

    def record(self, reinitialised: list[str]) -> dict[str, Any]:
        """What the run's sidecar says it started from."""
        return {"weights": COMMITTED if self.committed else str(self.path.absolute()), "model": self.config.name,
                "num_classes": self.config.num_classes, "class_names": list(self.config.class_names or []) or None,
                "dataset": self.dataset.record() if self.dataset else None,
                **({"frozen": self.frozen} if self.role == "trunk" else {"reinitialised": reinitialised})}


def _weights_file(name: str, given: str | Path, flag: str) -> tuple[Path, bool]:
    """(path, committed) of --init/--trunk: 'committed' or a checkpoint file."""
    if str(given) == COMMITTED:
        path = committed_checkpoint(name)
        if path is None:
            raise UserError(f"{flag} committed: {name} has no committed weights; pass a checkpoint file "
                            f"(train one with `edgecnn train {name}`)")
        return path, True
    path = Path(given)
    if not path.is_file():
        raise UserError(f"{flag} {str(given)!r} is neither 'committed' nor a checkpoint file; pass a .safetensors "
                        "checkpoint (with its .json sidecar) or a torchvision-style .pth state dict")
    return path, False


def starting_weights(name: str, init: str | Path | None = None, trunk: str | Path | None = None,
                     train_trunk: bool = False) -> StartingWeights | None:
    """The weights `--init` or `--trunk` names, read before any data is: one line for a combination that does not
    make sense. A checkpoint's sidecar says its classes, channels and dataset; a file without one (timm, torchvision)
    is taken as trained for the zoo configuration of `name` (its trunk's, for `--trunk`)."""
    if train_trunk and trunk is None:
        raise UserError("--train-trunk goes with --trunk CHECKPOINT: it fine-tunes that trunk jointly with the exits")
    if init is not None and trunk is not None:
        raise UserError("--init and --trunk both say where the weights start (--init: the whole model, --trunk: a "
                        "BranchyNet's trunk, its exits fresh); give one")
    given, role = (trunk, "trunk") if trunk is not None else (init, "init")
    if given is None:
        return None
    get_config(name)  # an unknown model: one line with suggestions
    if role == "trunk" and name not in TRUNKS:
        raise UserError(f"--trunk goes with a BranchyNet model ({', '.join(TRUNKS)}); {name} has no exits: start it "
                        "from trained weights with --init")
    architecture = TRUNKS[name] if role == "trunk" else name
    path, committed = _weights_file(architecture, given, f"--{role}")
    meta = read_sidecar(path)
    trained = meta.get("model") if isinstance(meta.get("model"), str) else None
    if trained not in (None, architecture):
        raise UserError(f"--{role} {path} holds {trained} weights, not {architecture}'s; pass {architecture} weights"
                        + (f" (the trunk of {name})" if role == "trunk" else f", or fine-tune {trained} with them"))
    source = config_from_sidecar(trained, meta) if trained else get_config(architecture)
    record = {"dataset": meta.get("dataset"), "committed": committed}
    return StartingWeights(role, path, committed, source, weights_data(source, record),
                           frozen=role == "trunk" and not train_trunk)


def build_model(name: str, start: StartingWeights | None, class_names: tuple[str, ...],
                model_kwargs: dict[str, Any]) -> tuple[nn.Module, list[str]]:
    """The model a run trains on data of `class_names`, and the tensors re-initialised because the data's class count
    differs from the weights'. `--init`: every tensor of the weights kept but the classifier when the class count
    differs (timm's pretrained=True); `--trunk`: the BranchyNet built on that trunk (frozen unless --train-trunk)."""
    if start is None:
        return create_model(name, **model_kwargs), []
    source = start.config
    kwargs = {"in_chans": source.input_size[0], **model_kwargs}
    if start.role == "trunk":
        _check_trunk_data(start, class_names)
        weights = COMMITTED if start.committed else str(start.path)
        return create_model(name, **{**kwargs, "num_classes": source.num_classes}, trunk_weights=weights,
                            train_trunk=not start.frozen), []
    trained = create_model(name, **{**kwargs, "num_classes": source.num_classes})
    load_checkpoint(trained, start.path)
    model = create_model(name, **{"num_classes": len(class_names), **kwargs})
    own = model.state_dict()
    reinitialised = [k for k, v in trained.state_dict().items() if v.shape != own[k].shape]
    model.load_state_dict({k: v for k, v in trained.state_dict().items() if k not in reinitialised}, strict=False)
    return model, reinitialised


def _check_trunk_data(start: StartingWeights, class_names: tuple[str, ...]) -> None:
    """A trunk's classifier is the final exit: the data must have its classes (by name when the trunk records them)."""
    names = start.config.class_names
    same = (len(class_names) == start.config.num_classes and
            (not names or [comparable_class_name(n) for n in names] == [comparable_class_name(n) for n in class_names]))
    if not same:
        raise UserError(f"the trunk {start.path} was trained on {start.config.num_classes} classes "
                        f"({', '.join((names or ('unnamed',))[:3])}…) and the data has {len(class_names)} "
                        f"({', '.join(class_names[:3])}…); train the exits on the trunk's own data (leave --data out), "
                        "or fine-tune the trunk on this data first (edgecnn train TRUNK --init ...)")


def train(name: str, *, epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
          recipe: str | None = None, data: str | None = None, data_root: str | None = None,
          out: str | Path | None = None, seed: int = 0, resume: bool = False, force: bool = False,
          threads: int | None = None, limit: int | None = None, augment: str | None = None,
          save_dtype: torch.dtype = torch.float32, progress: bool = True,
          model_kwargs: dict[str, Any] | None = None, init: str | Path | None = None,
          trunk: str | Path | None = None, train_trunk: bool = False) -> TrainResult:
    """Train a registered model; write `out` (.safetensors + .json sidecar + .log) and return the result.

    `None` means the recipe's value (epochs: see `default_epochs`); zero and negative numbers are errors.
    `limit` trains on the first N training images (smoke tests); the val/test sets stay whole.
    `force` replaces an earlier run's files at `out`; files edgecnn did not write are never replaced.
    `init` ('committed' or a checkpoint) starts from trained weights, the classifier re-initialised when the data's
    class count differs; `trunk` (BranchyNet models) trains exits on that trained trunk, frozen unless `train_trunk`.
    `data` defaults to the dataset those weights were trained on, else Fashion-MNIST.
    """
    epochs = None if epochs is None else positive_int("epochs", epochs)
    batch_size = None if batch_size is None else positive_int("batch_size", batch_size)
    lr = None if lr is None else positive_float("lr", lr)
    seed = non_negative_int("seed", seed)
    limit = None if limit is None else positive_int("limit", limit)
    augment = None if augment is None else check_augment(augment)
    if threads is not None:
        torch.set_num_threads(positive_int("threads", threads))
    out = Path(out) if out is not None else Path("runs") / name / f"{name}.safetensors"
    start = starting_weights(name, init, trunk, train_trunk)
    load_split = _data_loader(data, data_root, start)
    rank, world = _world()
    seed_everything(seed + rank)
    recipe = get_config(name).recipe if recipe is None else recipe
    rcp = get_recipe(recipe)
    check_outputs(out, resume=resume, force=force)
    if world > 1:
        dist.barrier()  # every rank has checked the outputs before rank 0 writes any
    batch_size = rcp.batch_size if batch_size is None else batch_size
    if batch_size % world:
        raise UserError(f"--batch-size {batch_size} must divide evenly over {world} processes")
    lr = rcp.lr * batch_size / rcp.batch_size if lr is None else lr
    augment = rcp.augment if augment is None else augment
    files = run_files(out)
    state_path, log_path = files["state"], files["log"]

    full = load_split("train")
    train_ds, val_ds = train_val_split(full)
    if limit is not None:
        train_ds = train_ds.subset(torch.arange(min(limit, len(train_ds))))
    test_ds = load_split("test")
    model, reinitialised = build_model(name, start, train_ds.class_names, model_kwargs or {})
    config = model.config
    if len(train_ds.class_names) != config.num_classes:
        raise UserError(f"{name} predicts {config.num_classes} classes but {full.name} has "
                        f"{len(train_ds.class_names)}; pick a model made for it, pass a matching dataset, or "
                        f"fine-tune it to these classes with --init committed")
    smoothing = config.label_smoothing if rcp.label_smoothing is None else rcp.label_smoothing

    # Channels-last is this CPU's fast layout (max-pooling ~8x faster than NCHW in torch's CPU build).
    model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    optimizer = make_optimizer(model, rcp, lr)
    sampler = torch.utils.data.DistributedSampler(range(len(train_ds)), num_replicas=world, rank=rank,
                                                  shuffle=True, seed=seed, drop_last=True)
    per_rank = batch_size // world
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch == 0:
        raise UserError(f"only {len(train_ds)} training images: fewer than one batch of {batch_size}")
    if epochs is None:
        epochs = default_epochs(rcp.epochs, steps_per_epoch)
        epochs_from = "recipe" if epochs == rcp.epochs else f"minimum of {MIN_DEFAULT_STEPS} optimizer steps"
        if epochs != rcp.epochs and progress and rank == 0:
            print(f"{name}: {len(train_ds)} training images are {steps_per_epoch} steps an epoch; training "
                  f"{epochs} epochs instead of the recipe's {rcp.epochs} to reach {MIN_DEFAULT_STEPS} steps "
                  "(--epochs sets them)", file=sys.stderr)
    else:
        epochs_from = "--epochs"
    schedule = {"epochs": epochs, "epochs_from": epochs_from, "steps_per_epoch": steps_per_epoch,
                "optimizer_steps": epochs * steps_per_epoch,
                "rule": f"without --epochs: the recipe's {rcp.epochs} epochs, raised to reach {MIN_DEFAULT_STEPS} "
                        f"optimizer steps, at most {MAX_DEFAULT_EPOCHS} epochs"}
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(rcp, epochs, steps_per_epoch))
    start_epoch, history = 0, []
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    if resume:
        meta, rng = load_training_state(state_path, model, optimizer, scheduler)
        start_epoch, history = meta["epoch"], meta["history"]
        if rng:  # states written before RNG capture resume with fresh streams (not bit-identical)
            gen.set_state(rng["augment"])
            torch.set_rng_state(rng["torch"])
    elif rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    run_args = dict(epochs=epochs, batch_size=batch_size, lr=lr, recipe=recipe, seed=seed,
                    world_size=world, label_smoothing=smoothing, aux_weight=config.aux_weight,
                    data=data if data is not None else full.name,
                    augment=augment, train_images=len(train_ds), val_images=len(val_ds),
                    model_kwargs=model_kwargs or {})
    t0 = time.time() - sum(h["epoch_time_s"] for h in history)
    for epoch in range(start_epoch, epochs):
        te = time.time()
        sampler.set_epoch(epoch)
        net.train()
        order = torch.tensor(list(sampler))
        seen = correct = loss_sum = 0.0
        bar = _progress(range(steps_per_epoch), f"{name} {epoch + 1}/{epochs}", progress and rank == 0)
        for step in bar:
            images, labels = train_ds.get_batch(order[step * per_rank:(step + 1) * per_rank],
                                                size=config.input_size[1:])
            images = augment_batch(images, augment, gen)
            output = net(preprocess(images, config).contiguous(memory_format=torch.channels_last))
            loss = loss_fn(output, labels, config.aux_weight, smoothing)
            if not torch.isfinite(loss):
                raise UserError(f"loss became {loss.item()} at epoch {epoch + 1}; lower --lr "
                                f"(now {lr:g}) or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            correct += (logits_of(output).argmax(1) == labels).sum().item()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
        seen, correct, loss_sum = _all_sum([seen, correct, loss_sum], world)
        val_acc = evaluate(net, val_ds, rank=rank, world=world)
        entry = {"epoch": epoch + 1, "train_loss": round(loss_sum / seen, 4),
                 "train_acc": round(100 * correct / seen, 2), "val_acc": round(val_acc, 2),
                 "lr": round(scheduler.get_last_lr()[0], 6), "epoch_time_s": round(time.time() - te, 1)}
        history.append(entry)
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")
            save_training_state(state_path, model, optimizer, scheduler,
                                {"epoch": epoch + 1, "history": history, "args": run_args},
                                rng={"augment": gen.get_state(), "torch": torch.get_rng_state()})
            if progress:  # on stderr with the bar, so stdout holds only the result line
                tqdm.write(f"{name} epoch {epoch + 1}/{epochs}: loss {entry['train_loss']:.4f} "
                           f"train {entry['train_acc']:.2f}% val {entry['val_acc']:.2f}% "
                           f"({entry['epoch_time_s']:.0f}s)", file=sys.stderr)
    if save_dtype != torch.float32:  # report the accuracy of the weights as they will be saved
        with torch.no_grad():
            for v in model.state_dict().values():
                if v.is_floating_point():
                    v.copy_(v.to(save_dtype))
    test_acc = evaluate(net, test_ds, rank=rank, world=world)
    wall = time.time() - t0
    result = TrainResult(name, str(out), epochs, history[-1]["val_acc"] if history else float("nan"),
                         round(test_acc, 2), round(wall, 1), full.name)
    if rank == 0:
        class_names = list(train_ds.class_names)
        exits = ({"exit_accuracy": {"val": exit_accuracies(model, val_ds), "test": exit_accuracies(model, test_ds),
                                    "exit_weights": list(model.exit_weights)}}
                 if isinstance(model, MultiExitNet) else {})
        started = {start.role: start.record(reinitialised)} if start is not None else {}
        save_checkpoint(model, out, {**exits, **started,
            "model": name, "config": {**config.to_dict(), "class_names": class_names, "dataset": full.name},
            "epochs": epochs, "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy, "wall_time_s": result.wall_time_s,
            "class_names": class_names,
            "dataset": {"name": full.name, "path": _dataset_path(data, data_root, start),
                        "fingerprint": full.fingerprint},
            "data_fingerprint": full.fingerprint, "train": run_args, "history": history, "schedule": schedule,
            "recipe": asdict(replace(rcp, epochs=epochs, batch_size=batch_size, lr=lr, augment=augment)),
        }, dtype=save_dtype)
        with open(log_path, "a") as f:
            f.write(json.dumps({"final": True, "test_acc": result.test_accuracy, "wall_time_s": result.wall_time_s})
                    + "\n")
        state_path.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    return result
