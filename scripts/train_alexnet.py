#!/usr/bin/env python
"""Train AlexNet (Krizhevsky, Sutskever and Hinton, 2012) with the paper's recipe on real images.

    python scripts/train_alexnet.py --device cpu                # 5,000 embedded MNIST digits
    python scripts/train_alexnet.py --data ~/imagenet --device cuda --workers 8
    python scripts/train_alexnet.py --resume runs/<stamp>/last.ckpt
    python scripts/train_alexnet.py --finetune runs/<stamp>/best.ckpt --data DIR --freeze 0 --freeze 4
    python scripts/train_alexnet.py --finetune alexnet.safetensors --arch alexnet-torchvision --data DIR
    mpiexec -n 2 python scripts/train_alexnet.py --device cpu -b 64   # data parallel (docs/distributed.md)

--data DIR takes an ImageFolder tree (DIR/train/<class>/*.jpg, DIR/val/<class>/...), MNIST-format
IDX files (MNIST, Fashion-MNIST) or CIFAR-10's python batches. Writes metrics.csv, curves.png,
filters.png, last.ckpt and best.ckpt under --out. See docs/training.md.
"""

import argparse
import csv
import io
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a file: make the repository's nbcnn importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import nbcnn  # noqa: E402
from nbcnn import distributed  # noqa: E402
from nbcnn.checkpoint import (CheckpointError, atomic_write, read_checkpoint,  # noqa: E402
                              remove_stale_temporaries, restore_checkpoint)
from nbcnn.data import (DataError, Loader, Transform, cached_channel_stats, class_subset,  # noqa: E402
                        dataset_summary, embedded_mnist, open_dataset, stratified_subset, summary_difference)
from nbcnn.layers import AdaptiveAvgPool2d, AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d  # noqa: E402
from nbcnn.module import iter_modules  # noqa: E402
from nbcnn.train import (POLICIES, Interrupted, OutputError, TrainConfig, Trainer, TrainingError,  # noqa: E402
                         best_row, is_legacy_schedule_state, legacy_schedule_state, make_schedule, plural,
                         repair_best, writing)

EMBEDDED_EPOCHS = 12
DATA_EPOCHS = 90  # the paper: about 90 passes over ImageNet
SMALL_IMAGES = 64  # images up to this many pixels (short side) get alexnet-small
# Data parallel: seconds a process waits for a batch from its loader workers before it fails (and
# so ends the job) instead of leaving the others waiting in their next allreduce.
LOADER_TIMEOUT = 600


@dataclass(frozen=True)
class Arch:
    """A network --arch names: how to build it and the recipe it comes with."""

    build: Callable  # build(num_classes, in_channels, input_size, init) -> the network
    min_crop: int    # the smallest crop it takes
    inits: tuple     # the --init values it takes, its default first
    small: bool      # True: crops of the images' own size, zero-padded by crop/8 (CIFAR's recipe);
    #                  False: ImageNet's 224 crops of images resized to 256
    lighting: bool = False  # the PCA colour noise on colour images (AlexNet's)


# --arch's networks; a new one is a line here (the models' classifier head is their last Linear).
ARCHS = {
    "alexnet": Arch(lambda n, c, size, init: nbcnn.models.alexnet(n, input_size=size, in_channels=c, init=init),
                    min_crop=63, inits=("kaiming", "paper"), small=False, lighting=True),
    "alexnet-small": Arch(lambda n, c, size, init: nbcnn.models.alexnet_small(n, in_channels=c, input_size=size,
                                                                              init=init),
                          min_crop=7, inits=("he", "kaiming", "paper"), small=True),
    # the models' own init only ("torchvision": Kaiming normal, fan out); any crop size (global average pooling)
    "resnet20": Arch(lambda n, c, size, init: nbcnn.models.resnet20(n, in_channels=c),
                     min_crop=8, inits=("torchvision",), small=True),
    "mobilenet-small": Arch(lambda n, c, size, init: nbcnn.models.mobilenet_small(n, in_channels=c),
                            min_crop=8, inits=("torchvision",), small=True),
    "resnet18": Arch(lambda n, c, size, init: nbcnn.models.resnet18(n, in_channels=c),
                     min_crop=32, inits=("torchvision",), small=False),
    # torchvision's AlexNet with its keys, so that its pretrained weights fine-tune (--finetune FILE.safetensors);
    # PyTorch's default init; its adaptive pooling to 6x6 takes any crop from 63 (the last max pool's 3x3 input)
    "alexnet-torchvision": Arch(lambda n, c, size, init: nbcnn.models.alexnet_torchvision(n, in_channels=c),
                                min_crop=63, inits=("torchvision",), small=False),
}
# --opt's optimisers and their defaults where --lr, --momentum, --weight-decay are not given:
# torch.optim's, but SGD's, which are the paper's (torch's SGD has no default lr)
OPTIMISERS = {
    "sgd": (nbcnn.SGD, {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}),
    "adam": (nbcnn.Adam, {"lr": 1e-3, "weight_decay": 0.0}),
    "adamw": (nbcnn.AdamW, {"lr": 1e-3, "weight_decay": 1e-2}),
    "rmsprop": (nbcnn.RMSprop, {"lr": 1e-2, "momentum": 0.0, "weight_decay": 0.0}),
}
# Arguments that define the run; --resume takes them from the checkpoint.
RECIPE = ("data", "arch", "batch_size", "opt", "lr", "momentum", "weight_decay", "lr_policy", "lr_step",
          "lr_patience", "warmup_epochs", "seed", "crop", "image_size", "pad", "flip", "init", "lighting",
          "subset", "val_subset", "classes", "stats_sample", "ten_crop", "finetune", "freeze", "sync_bn")
# The values of recipe flags added after checkpoints were first written, for those checkpoints.
RECIPE_BEFORE = {"opt": "sgd", "warmup_epochs": 0, "classes": None, "finetune": None, "freeze": [], "sync_bn": False}
# Recipe flags whose None means "chosen from the data" (resolve_recipe).
AUTOMATIC = ("arch", "crop", "image_size", "pad", "flip", "init")
CSV_FIELDS = ("epoch", "lr", "train_loss", "train_top1_err", "val_loss", "val_top1_err",
              "val_top5_err", "unreadable", "time_s", "epoch_s")
# The files a run writes in --out (each through a temporary that a SIGKILL can leave behind).
OUTPUTS = ("last.ckpt", "best.ckpt", "metrics.csv", "curves.png", "filters.png")


class UsageError(Exception):
    """Flags that cannot be used together (exit status 2, as for argparse's errors)."""


class HelpFormatter(argparse.HelpFormatter):
    """Appends a flag's default where it has one and its help does not already state it."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        return text if unset or "default" in text else text + " (default: %(default)s)"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--data", metavar="DIR",
                   help="dataset: an ImageFolder tree (DIR/train/<class>/*.jpg, DIR/val/...), MNIST IDX files or "
                        "CIFAR-10 python batches (default: the embedded MNIST digits)")
    p.add_argument("--arch", choices=list(ARCHS),
                   help=f"network (default: alexnet-small for images of {SMALL_IMAGES} pixels or less, else alexnet; "
                        "the --finetune checkpoint's with --finetune)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--epochs", type=int, metavar="N",
                   help=f"epochs (default: {EMBEDDED_EPOCHS} on the embedded digits, {DATA_EPOCHS} otherwise, "
                        "the checkpoint's with --resume)")
    p.add_argument("-b", "--batch-size", type=int, default=128, metavar="N",
                   help="images per optimiser step and process: under mpiexec -n N a step's global batch is N times it")
    p.add_argument("--val-batch-size", type=int, metavar="N",
                   help="images per validation forward pass (default: --batch-size); not part of the recipe, "
                        "so a resumed run may change it")
    p.add_argument("--opt", choices=list(OPTIMISERS), default="sgd",
                   help="optimiser, with torch.optim's update rule and defaults (betas, eps, alpha)")
    p.add_argument("--lr", type=float,
                   help="initial learning rate (default: 0.01 for sgd and rmsprop, 0.001 for adam and adamw)")
    p.add_argument("--momentum", type=float, metavar="M",
                   help="momentum of sgd and rmsprop (default: 0.9 for sgd, 0 for rmsprop)")
    p.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, metavar="WD",
                   help="weight decay: L2 added to the gradient (sgd, adam, rmsprop), decoupled (adamw) "
                        "(default: 5e-4 for sgd, 0.01 for adamw, 0 for adam and rmsprop)")
    p.add_argument("--lr-policy", choices=POLICIES, default="plateau",
                   help="plateau: lr/10 when the validation error stops improving (the paper); "
                        "step: lr/10 every --lr-step epochs; cosine: cosine annealing per step to 0 at the end")
    p.add_argument("--warmup-epochs", type=int, default=0, metavar="N",
                   help="ramp the lr linearly per step from lr/100 over the first N epochs, then the lr policy")
    p.add_argument("--lr-step", type=int, default=30, metavar="N", help="epochs between lr drops for --lr-policy step")
    p.add_argument("--lr-patience", type=int, default=2, metavar="N",
                   help="epochs without a better validation top-1 error before lr/10 (plateau)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seeds the init, dropout, data order and augmentation")
    p.add_argument("--init", choices=sorted({init for arch in ARCHS.values() for init in arch.inits}),
                   help="weight init (default: kaiming for alexnet, he for alexnet-small, torchvision for the "
                        "others); paper: N(0, 0.01) weights and biases of 1 as in the paper; he: N(0, 2/fan_in); "
                        "torchvision: the resnets' and mobilenet-small's own (Kaiming normal, fan out), "
                        "alexnet-torchvision's PyTorch init (Kaiming uniform)")
    p.add_argument("--crop", type=int, metavar="N",
                   help="training crop (default: 224 for alexnet, the image size for small images)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="short side images are resized to (default: crop*256/224 for alexnet, the crop otherwise)")
    p.add_argument("--pad", type=int, metavar="N",
                   help="zero padding before the random crop (default: crop//8 for alexnet-small, 0 for alexnet)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on for colour images, off for greyscale digits)")
    p.add_argument("--lighting", type=float, default=0.1, metavar="STD",
                   help="std of the PCA colour noise for alexnet on colour images (0 disables)")
    p.add_argument("--ten-crop", action="store_true", help="validate on the 10 crops, softmax averaged")
    p.add_argument("--subset", type=int, metavar="N", help="train on a fixed, stratified subset of this many images")
    p.add_argument("--val-subset", type=int, metavar="N",
                   help="validate on a fixed, stratified subset of this many images")
    p.add_argument("--classes", type=class_list, metavar="NAME,NAME,...",
                   help="train and validate on these classes only (class names: 0,1,2 for the digits, "
                        "folder names for an ImageFolder)")
    p.add_argument("--stats-sample", type=int, default=1000, metavar="N",
                   help="training images sampled for the channel mean and colour eigenvectors")
    p.add_argument("--max-unreadable", type=float, default=0.01, metavar="FRACTION",
                   help="stop when more than this fraction of a split's images cannot be decoded "
                        "(default: 0.01, i.e. 1%%)")
    p.add_argument("-j", "--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                   help="data loading processes (0: load in the main process)")
    p.add_argument("--prefetch", type=int, default=2, metavar="N", help="batches in flight per worker")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default: runs/<timestamp>, or the --resume checkpoint's)")
    p.add_argument("--resume", metavar="CKPT",
                   help="continue the run saved in this checkpoint, with its recipe (data, network, "
                        "optimiser and augmentation flags); --data may name the dataset's new folder")
    p.add_argument("--finetune", metavar="CKPT",
                   help="start a new run from this checkpoint's network, parameters, buffers and channel "
                        "statistics, its classifier head (the last Linear) re-initialised where the classes "
                        "differ; a new optimiser and schedule (not with --resume). Or from a weights file: "
                        ".safetensors or .npz with PyTorch's keys (e.g. torchvision's pretrained AlexNet for "
                        "--arch alexnet-torchvision), or .onnx (its weights taken in graph order); it records "
                        "no network, so --arch is required, and the data's own channel statistics are used")
    p.add_argument("--freeze", action="append", metavar="NAME_PREFIX",
                   help="do not train the parameters under this name (0 for 0.weight and 0.bias, layer1 "
                        "for layer1.0.conv1.weight, ...); repeatable")
    p.add_argument("--sync-bn", action="store_true",
                   help="under several processes, batch norms normalise with the global batch's statistics "
                        "(SyncBatchNorm, as torchvision's --sync-bn); one process is unchanged by it")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop and checkpoint after this many steps in all")
    p.add_argument("--save-every", type=int, metavar="N",
                   help="also write last.ckpt every N steps, not only at epoch ends (for long epochs)")
    return p


def given_flags(parser, argv):
    """The names (dests) of the flags given on the command line.

    argparse fills in a default only where the namespace lacks the attribute, so parsing into
    a namespace that already holds a marker for every flag leaves the marker on those not given.
    A repeatable flag appends to its value, so it keeps its default (None) and is given when set.
    """
    unset = object()
    repeatable = {a.dest for a in parser._actions if isinstance(a, argparse._AppendAction)}
    namespace = argparse.Namespace(**{name: None if name in repeatable else unset
                                      for name in vars(parser.parse_args([]))})
    parser.parse_args(argv, namespace=namespace)
    return {name for name, value in vars(namespace).items()
            if value is not (None if name in repeatable else unset)}


def flag(name):
    """A namespace attribute as its flag: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def class_list(text):
    """--classes: comma-separated class names, each once."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected class names separated by commas, got {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a class is named twice in {text!r}")
    return names


def bad_number(args):
    """The message for the first numeric flag out of its range, else None."""
    for name in ("epochs", "batch_size", "val_batch_size", "lr_step", "lr_patience", "crop", "image_size",
                 "subset", "val_subset", "stats_sample", "max_steps", "save_every", "prefetch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"{flag(name)} must be at least 1, got {value}"
    for name in ("workers", "pad", "warmup_epochs"):
        value = getattr(args, name)
        if value is not None and value < 0:
            return f"{flag(name)} must be at least 0, got {value}"
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        return f"--lr must be a finite number above 0, got {args.lr}"
    for name in ("momentum", "weight_decay", "lighting"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            return f"{flag(name)} must be a finite number of at least 0, got {value}"
    if not 0 <= args.max_unreadable <= 1:
        return f"--max-unreadable must be a fraction between 0 and 1, got {args.max_unreadable}"
    return None


def bad_combination(args):
    """The message for flags that cannot go together, else None."""
    if args.momentum is not None and "momentum" not in OPTIMISERS[args.opt][1]:
        return f"--momentum is for --opt sgd and rmsprop; {args.opt} keeps its betas (0.9, 0.999)"
    if args.finetune and args.resume:
        return ("--finetune starts a new run from a checkpoint's parameters and --resume continues a run: "
                "give one of them")
    if args.epochs is not None and args.warmup_epochs >= args.epochs:
        return (f"--warmup-epochs {args.warmup_epochs} leaves no epoch of the lr policy in --epochs {args.epochs}: "
                "give fewer warm-up epochs")
    return None


def optimiser_defaults(args):
    """--lr, --momentum and --weight-decay where not given: the --opt optimiser's defaults
    (momentum None for adam and adamw, which have none)."""
    for name, value in OPTIMISERS[args.opt][1].items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def parse_args(argv):
    p = build_parser()
    args = p.parse_args(argv)
    message = bad_number(args) or bad_combination(args)
    if message:
        p.error(message)
    optimiser_defaults(args)
    args.data, args.finetune = data_path(args.data), data_path(args.finetune)
    args.freeze = args.freeze or []
    args.given = given_flags(p, argv)
    args.world = distributed.World()  # one process until run() joins the launcher's (take_world)
    return args


def data_path(path):
    """--data as an absolute path, so that a resume from another folder finds the data."""
    return path and os.path.abspath(os.path.expanduser(path))


def load_data(args):
    """(train, val, the full dataset's summary) with the recipe's classes and subsets."""
    train, val = open_dataset(args.data) if args.data else embedded_mnist()
    summary = dataset_summary(train, val)
    if args.classes:
        train, val = class_subset(train, args.classes), class_subset(val, args.classes)
    for name, n in (("subset", args.subset), ("val_subset", args.val_subset)):
        if n is not None and n < len(train.classes):
            raise DataError(f"{flag(name)} {n} is smaller than the number of classes ({len(train.classes):,}): "
                            "a stratified subset holds at least one image of each class")
    if args.subset:
        train = train.subset(stratified_subset(train.labels, args.subset))
    if args.val_subset:
        val = val.subset(stratified_subset(val.labels, args.val_subset))
    return train, val, summary


def resolve_recipe(args, train, image_size):
    """Fill in the recipe flags left automatic (arch, crop, image size, pad, flip, init) from the
    data, in args, so that checkpoints record the recipe as run. `image_size` is the data's
    image size as the choice sees it (train.image_size, but see Resume.legacy)."""
    small = image_size is not None and image_size <= SMALL_IMAGES
    args.arch = args.arch or ("alexnet-small" if small else "alexnet")
    arch = ARCHS[args.arch]
    if arch.small:
        args.crop = args.crop or image_size or 32
        args.image_size = args.image_size or args.crop
        args.pad = args.crop // 8 if args.pad is None else args.pad
    else:
        args.crop = args.crop or 224
        args.image_size = args.image_size or round(args.crop * 256 / 224)
        args.pad = args.pad or 0
    args.init = args.init or arch.inits[0]
    args.flip = train.channels == 3 if args.flip is None else args.flip
    check_recipe(args)


def check_recipe(args):
    """A DataError for a recipe the network or the crops cannot run."""
    crop, resize, pad, arch = args.crop, args.image_size, args.pad, ARCHS[args.arch]
    if resize + 2 * pad < crop:
        raise DataError(f"--crop {crop} is larger than the resized image ({resize} pixels + {pad} padding)")
    if crop < arch.min_crop:
        smaller = [name for name, a in ARCHS.items() if a.small and a.min_crop <= crop]
        raise DataError(f"--arch {args.arch} needs a crop of at least {arch.min_crop} pixels, got {crop}"
                        + (f"; use --arch {smaller[0]}" if smaller else ""))
    if args.init not in arch.inits:
        raise DataError(f"--init {args.init} is not for --arch {args.arch}, which takes {' or '.join(arch.inits)}")


def lighting_on(args, train):
    """The PCA colour noise: the paper's, for alexnet on colour images."""
    return ARCHS[args.arch].lighting and train.channels == 3 and args.lighting > 0


def build_model(args, train, crop=None):
    """The recipe's network, sized for the data's classes, channels and crop (args.crop unless given)."""
    return ARCHS[args.arch].build(len(train.classes), train.channels, crop or args.crop, args.init)


# -- memory: refuse a recipe that cannot fit before allocating it ------------------------------
def network_size(args, train):
    """(parameters, activations an image) of the recipe's network on its crops, from the layers of
    the same network built for the smallest crop (building it at the crop would allocate what
    is being estimated). Activations: the elements of every layer's output."""
    net = build_model(args, train, crop=ARCHS[args.arch].min_crop)
    _, params, activations = module_size(net, (train.channels, args.crop, args.crop))
    return params, activations


def module_size(module, shape):
    """(output shape, parameters, activation elements) of `module` on one image of `shape`
    ((C, H, W), or (F,) after a Flatten), from its layers' settings alone. A Linear's weight is
    sized by the features it is given, the other layers' parameters do not depend on the shape."""
    if isinstance(module, nbcnn.Residual):
        out, params, acts = module_size(module.body, shape)
        if module.shortcut is not None:
            _, p, a = module_size(module.shortcut, shape)
            params, acts = params + p, acts + a
        acts += math.prod(out)  # the sum
        if module.after is not None:
            out, p, a = module_size(module.after, out)
            params, acts = params + p, acts + a
        return out, params, acts
    if module.children():  # a container running its children in order (Sequential)
        params = acts = 0
        for child in module.children():
            shape, p, a = module_size(child, shape)
            params, acts = params + p, acts + a
        return shape, params, acts
    if isinstance(module, Linear):
        return (module.out_features,), module.out_features * (shape[0] + 1), module.out_features
    if isinstance(module, Flatten):
        return (math.prod(shape),), 0, 0  # a view, no new memory
    params = sum(math.prod(p.shape) for p in module.parameters())
    if isinstance(module, Conv2d):
        shape = (module.out_channels, module.output_size(shape[1]), module.output_size(shape[2]))
    elif isinstance(module, (MaxPool2d, AvgPool2d)):
        k, s, pad = module.kernel_size, module.stride, module.padding
        shape = (shape[0], *((side + 2 * pad - k) // s + 1 for side in shape[1:]))
    elif isinstance(module, AdaptiveAvgPool2d):
        shape = (shape[0], *(side if size is None else size for size, side in zip(module.output_size, shape[1:])))
    return shape, params, math.prod(shape)  # anything else keeps the shape (ReLU, LRN, batch norm, dropout)


def memory_bytes(device):
    """The device's memory in bytes: the GPU's, or the machine's RAM (its cgroup's limit when
    lower); None when unknown (the CUDA simulator)."""
    if device == "cuda":
        from numba import config, cuda
        if config.ENABLE_CUDASIM:
            return None
        try:
            return cuda.current_context().get_memory_info()[1]
        except Exception:  # a driver without the query: no estimate is better than no run
            return None
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
    except OSError:
        limit = "max"
    return min(total, int(limit)) if limit.isdigit() else total


def check_memory(args, train, params, activations):
    """A DataError when the recipe's network needs more memory than the device has, counting
    only what it cannot do without (a lower bound): float32 weights, gradients and the
    optimiser's state (sgd's momentum, adam's two averages), and every layer's output for the
    largest batch (a validation batch is 10 times larger with --ten-crop)."""
    total = memory_bytes(args.device)
    batch = max(args.batch_size, (args.val_batch_size or args.batch_size) * (10 if args.ten_crop else 1))
    states = 2 if args.opt in ("adam", "adamw") else 1 + (args.opt == "rmsprop" and args.momentum > 0)
    need = 4 * ((2 + states) * params + batch * activations)
    if total is None or need <= total:
        return
    size = "image size unknown" if train.image_size is None else f"the images are {train.image_size} pixels"
    raise DataError(f"{args.arch} on {args.crop}x{args.crop} crops needs at least {need / 2**30:,.1f} GiB of memory "
                    f"({params:,} parameters, {activations * 4 / 2**20:,.1f} MiB of activations an image, "
                    f"batches of {batch:,}), more than the {total / 2**30:,.1f} GiB of --device {args.device}; "
                    f"use a smaller --crop ({size}) or --batch-size")


def check_device(device):
    """None when `device` works, else the message to print."""
    try:
        nbcnn.get_backend(device)
        nbcnn.asarray(np.zeros(1, np.float32), device)
    except ValueError as exc:
        return f"unknown --device {device!r}: {exc}"
    except Exception as exc:
        if device == "cuda":
            return f"--device cuda: no usable CUDA GPU ({type(exc).__name__}: {exc}); use --device cpu"
        return f"--device {device}: {exc}"
    return None


# -- resume: the checkpoint's recipe ----------------------------------------------------------------
def flag_value(value):
    """A flag's value as the resume error shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):  # --classes, --freeze
        return ",".join(value) if value else "not given"
    return "not given" if value is None else str(value)


def flag_differences(pairs):
    """A UsageError naming each (name, given, checkpoint's) pair; None when there are none."""
    if not pairs:
        return None
    return UsageError("--resume continues the checkpoint's recipe, and these flags differ from it: "
                      + ", ".join(f"{flag(name)} {flag_value(given)} (the checkpoint's: {flag_value(saved)})"
                                  for name, given, saved in pairs)
                      + "; drop them to resume, or start a new run without --resume")


@dataclass
class Resume:
    """A --resume checkpoint and what taking its recipe left to check once the data is loaded."""

    state: dict
    # Automatic flags (AUTOMATIC) given on the command line where the checkpoint recorded None:
    # compared with the values the run resolves to (check_pending_flags).
    pending: dict = field(default_factory=dict)
    # The checkpoint's data folder when --data names another one: the data found there must
    # match the checkpoint's (check_moved_data).
    moved_from: str | None = None
    # Written before checkpoints recorded the recipe as run (d88042c and before: automatic flags
    # None in args, the network in progress["arch"]); that code saw no image size in an ImageFolder.
    legacy: bool = False

    @property
    def progress(self):
        return self.state["progress"]


def take_checkpoint_recipe(args, progress):
    """Set the recipe flags to the checkpoint's (a Resume's pending, moved_from and legacy
    fields returned); a UsageError naming each flag given on the command line with a value
    other than the checkpoint's (flags that do not change the recipe, such as --device,
    --workers, --epochs or --out, stay free)."""
    saved = {**RECIPE_BEFORE, **progress.get("args", {})}
    if saved.get("data"):
        saved["data"] = data_path(saved["data"])
    # an automatic flag recorded as None: written before the recipe was recorded as run
    legacy = any(key in saved and saved[key] is None for key in AUTOMATIC)
    if saved.get("arch") is None and progress.get("arch"):
        saved["arch"] = progress["arch"]  # the network the run actually used wins
    moved_from = None
    if "data" in args.given and saved.get("data") and args.data != saved["data"]:
        moved_from, saved["data"] = saved["data"], args.data
    given = [key for key in RECIPE if key in saved and key in args.given]
    pending = {key: getattr(args, key) for key in given if key in AUTOMATIC and saved[key] is None}
    error = flag_differences([(key, getattr(args, key), saved[key]) for key in given
                              if key not in pending and getattr(args, key) != saved[key]])
    if error:
        raise error
    for key in RECIPE:
        if key in saved:
            setattr(args, key, saved[key])
    return pending, moved_from, legacy


def check_pending_flags(args, pending):
    """A UsageError for automatic flags given on the command line that differ from the values the
    resumed run resolved to (the checkpoint recorded them as automatic)."""
    error = flag_differences([(key, given, getattr(args, key)) for key, given in pending.items()
                              if given != getattr(args, key)])
    if error:
        raise error


def check_moved_data(args, resume, summary):
    """--data naming another folder than the checkpoint's: fine when the dataset there is the
    checkpoint's (same layout, classes and counts), a UsageError otherwise; a warning when the
    checkpoint predates the record."""
    if resume is None or resume.moved_from is None:
        return
    saved = resume.progress.get("data_summary")
    if saved is None:
        print(f"warning: the checkpoint does not record what its dataset held (it predates that record), so "
              f"nothing checks that --data {args.data} holds the dataset of {resume.moved_from}; resuming on it",
              flush=True)
        return
    difference = summary_difference(saved, summary)
    if difference:
        raise UsageError(f"--data {args.data} is not the checkpoint's dataset ({resume.moved_from}): {difference}; "
                         "resume without --data once the dataset is back, or start a new run without --resume")
    print(f"data: the checkpoint's {resume.moved_from} found at {args.data} (same layout, classes and counts)",
          flush=True)


def read_checkpoint_flag(option, path):
    """The checkpoint `path` given to --resume or --finetune (`option`), or a CheckpointError
    (a folder: suggest its last.ckpt)."""
    if os.path.isdir(path):
        hint = os.path.join(path, "last.ckpt")
        raise CheckpointError(f"{option} {path} is a folder, not a checkpoint file; "
                              + (f"did you mean {option} {hint}?" if os.path.isfile(hint)
                                 else "give a run's last.ckpt or best.ckpt"))
    return read_checkpoint(path)


def read_resume(args):
    """The --resume checkpoint as a Resume (None without one); its recipe, epochs and folder go
    into args."""
    if not args.resume:
        return None
    state = read_checkpoint_flag("--resume", args.resume)
    progress = state["progress"]
    resume = Resume(state, *take_checkpoint_recipe(args, progress))
    if args.data and resume.moved_from is None and not os.path.exists(args.data):
        raise DataError(f"the checkpoint's data folder {args.data} does not exist; if the dataset moved, "
                        "resume with --data NEW_FOLDER")
    args.out = args.out or os.path.dirname(os.path.abspath(args.resume))
    args.epochs = args.epochs or progress.get("epochs")
    return resume


def check_schedule_length(args, resume, epochs):
    """A UsageError for a warm-up as long as the run, or a cosine run resumed with other --epochs
    (the cosine is laid over the run's epochs)."""
    if args.warmup_epochs >= epochs:
        raise UsageError(f"--warmup-epochs {args.warmup_epochs} leaves no epoch of the lr policy in "
                         f"{plural(epochs, 'epoch')}: give fewer warm-up epochs")
    saved = resume and resume.progress.get("epochs")
    if saved and args.lr_policy == "cosine" and epochs != saved:
        raise UsageError(f"--epochs {epochs}: the run's cosine schedule anneals over its {saved} epochs, so its "
                         "length cannot change; to train longer, start a new run with --finetune "
                         f"{args.resume}")


def run_is_complete(progress, epochs):
    """True when a checkpoint's run has trained and validated all its epochs."""
    return progress.get("step", 0) == 0 and progress.get("epoch", 0) >= epochs


def finish_complete_run(args, resume, epochs, out_dir):
    """--resume of a run with nothing left to train: repair best.ckpt and the reports (a kill may
    have cut them off after the last last.ckpt) and say how to train it longer."""
    p = resume.progress
    best = os.path.join(out_dir, "best.ckpt")
    if args.world.is_root and repair_best(args.resume, best, p["epoch"], p["step"], p.get("history", [])):
        print(f"{best} was missing or older than epoch {p['epoch']}: copied it from {args.resume}")
    if args.world.is_root and p.get("history"):
        write_reports(out_dir, p["history"], first_conv_weight(resume.state["model"]))
    longer = (f"start a new run with --finetune {args.resume} (its cosine schedule ended)" if args.lr_policy == "cosine"
              else f"resume with --epochs N for an N above {p['epoch']}")
    print(f"the run is already complete: {args.resume} ends epoch {p['epoch']} of {epochs}; to train it longer, "
          f"{longer}")
    return 0


# -- reuse of trained layers: --finetune, --freeze ------------------------------------------------
# The weights files --finetune takes besides checkpoints: state_dicts with PyTorch's keys, ONNX graphs.
WEIGHTS_FILES = (*nbcnn.weights.FORMATS, ".onnx")


@dataclass
class Finetune:
    """A --finetune checkpoint or weights file: its path, its model state_dict (parameters and
    buffers), the classes its head was trained on and its channel statistics (None where it does
    not record them); in_order: keys that are not the network's (an ONNX graph's), matched by order."""

    path: str
    model: dict
    classes: list | None
    stats: dict | None
    in_order: bool = False


def read_finetune(args):
    """The --finetune checkpoint or weights file (None without one). A checkpoint's network is
    the run's: its --arch, and its crop unless --crop is given (alexnet's classifier is sized by
    the crop)."""
    if not args.finetune:
        return None
    if os.path.splitext(args.finetune)[1].lower() in WEIGHTS_FILES:
        return read_weights_file(args)
    try:
        state = read_checkpoint_flag("--finetune", args.finetune)
    except CheckpointError as exc:
        if not os.path.isfile(args.finetune) or args.finetune.endswith(".ckpt"):
            raise
        raise CheckpointError(f"{exc}; --finetune takes an nbcnn checkpoint or a weights file "
                              f"({', '.join(WEIGHTS_FILES)}): save a PyTorch model's state_dict with "
                              "safetensors.torch.save_file") from None
    progress = state["progress"]
    saved = progress.get("args", {})
    arch = saved.get("arch") or progress.get("arch")
    if arch is not None and arch not in ARCHS:
        raise CheckpointError(f"--finetune {args.finetune} holds a {arch} network, which --arch does not offer")
    if arch and args.arch and args.arch != arch:
        raise UsageError(f"--finetune {args.finetune} holds an --arch {arch} network, not --arch {args.arch}: "
                         "drop --arch (fine-tuning keeps the checkpoint's network)")
    args.arch = args.arch or arch
    if args.crop is None:
        args.crop = saved.get("crop")
    classes = progress.get("classes") or progress.get("data_summary", {}).get("classes")
    return Finetune(args.finetune, state["model"], classes, progress.get("stats"))


def read_weights_file(args):
    """A --finetune weights file: .safetensors or .npz (nbcnn.weights: PyTorch's keys) or .onnx
    (nbcnn.onnx.load's network: its keys are positions, so its weights are matched in order). It
    records no network, classes nor channel statistics: --arch must name the network."""
    path = args.finetune
    if not args.arch:
        raise UsageError(f"--finetune {path} is a weights file, which does not record its network: "
                         f"give --arch ({', '.join(ARCHS)})")
    try:
        if path.lower().endswith(".onnx"):
            from nbcnn.onnx import load as load_onnx
            return Finetune(path, load_onnx(path).state_dict(), None, None, in_order=True)
        return Finetune(path, nbcnn.load(path), None, None)
    except (ValueError, ImportError) as exc:  # WeightsFileError, OnnxError; the onnx package missing
        raise CheckpointError(f"--finetune {path}: {exc}") from None


def in_order(finetune, own):
    """An ONNX graph's weights under the names of the network's state_dict `own`, in order: ONNX
    keeps the layers in computation order but not PyTorch's module names. A CheckpointError
    where the counts differ; start_from checks the shapes."""
    if len(finetune.model) != len(own):
        raise CheckpointError(f"--finetune {finetune.path}: its graph holds {len(finetune.model)} parameters and "
                              f"buffers, the --arch network {len(own)}, so they cannot be matched in order (ONNX "
                              "keeps no module names; PyTorch's exporter folds batch norm into the convolutions "
                              "in inference); save the model's state_dict with safetensors.torch.save_file instead")
    return dict(zip(own, finetune.model.values()))


def classifier_head(net, prefix=""):
    """The name of the network's last Linear layer (its classifier head), None without one."""
    head = None
    for name, child in net.named_children():
        head = prefix + name if isinstance(child, Linear) else classifier_head(child, f"{prefix}{name}.") or head
    return head


def start_from(finetune, net, classes):
    """Load the --finetune checkpoint's parameters and buffers into `net` but for its classifier
    head (the last Linear) where that does not fit: of another shape, or trained on other classes
    than `classes`. Returns the head's keys left at their fresh init ([] when the head was loaded);
    a CheckpointError for anything else that does not fit."""
    own = net.state_dict()
    saved = in_order(finetune, own) if finetune.in_order else finetune.model
    head = classifier_head(net)
    head_keys = [key for key in own if key.rpartition(".")[0] == head]
    missing, unexpected = [k for k in own if k not in saved], [k for k in saved if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"--finetune {finetune.path} does not hold this network's parameters: missing "
                              f"{missing[:4]}, unexpected {unexpected[:4]}")
    for key in own:
        if key not in head_keys and np.shape(saved[key]) != own[key].shape:
            raise CheckpointError(f"--finetune {finetune.path} does not fit this network: its {key} has shape "
                                  f"{np.shape(saved[key])}, the network's {own[key].shape} (the images' channels "
                                  "and --crop must be the checkpoint's)")
    fits = all(np.shape(saved[key]) == own[key].shape for key in head_keys)
    reinit = [] if fits and finetune.classes in (None, list(classes)) else head_keys
    net.load_state_dict({key: own[key] if key in reinit else saved[key] for key in own})
    return reinit


def finetune_line(finetune, reinit, classes):
    """What --finetune loaded and what it left at its fresh init."""
    if not reinit:
        kept = "the same classes" if finetune.classes is not None else "its shape fits the classes"
        return f"fine-tuning from {finetune.path}: every parameter and buffer loaded, the head kept ({kept})"
    why = (f"the checkpoint's was trained on {plural(len(finetune.classes), 'class', 'classes')}: "
           f"{', '.join(finetune.classes[:10])}{', ...' if len(finetune.classes) > 10 else ''}"
           if finetune.classes is not None else "the saved head has another number of classes")
    return (f"fine-tuning from {finetune.path}: the rest loaded; {', '.join(reinit)} re-initialised, a new head for "
            f"{plural(len(classes), 'class', 'classes')} ({why})")


def frozen_names(names, prefixes):
    """The parameter names under the --freeze prefixes: a prefix is a name or ends at a dot (layer1
    covers layer1.0.conv1.weight, not layer10.weight). A UsageError for a prefix that matches
    nothing, listing the network's top-level names, and for one that leaves nothing to train."""
    frozen = []
    for prefix in prefixes:
        stem = prefix[:-1] if prefix.endswith(".") else prefix
        hits = [name for name in names if name == stem or name.startswith(stem + ".")]
        if not hits:
            top = dict.fromkeys(name.split(".")[0] for name in names)
            raise UsageError(f"--freeze {prefix} matches no parameter; the network's top-level names are "
                             f"{', '.join(top)}")
        frozen += [name for name in hits if name not in frozen]
    if frozen and len(frozen) == len(names):
        raise UsageError(f"--freeze {' --freeze '.join(prefixes)} freezes every parameter: nothing would train")
    return frozen


def freeze(net, names):
    """requires_grad False for the parameters `names`: the layers skip their weight gradients and
    the optimiser leaves them unchanged."""
    for name, p in net.named_parameters():
        if name in names:
            p.requires_grad = False


def freeze_line(net, prefixes, names):
    training = [name for name, p in net.named_parameters() if p.requires_grad]
    values = sum(math.prod(p.shape) for p in net.parameters() if not p.requires_grad)
    return (f"frozen: {plural(len(names), 'parameter')} under {', '.join(prefixes)} ({values:,} values); training "
            + (", ".join(training) if len(training) <= 8 else plural(len(training), "parameter")))


def first_conv_weight(state):
    """The first convolution weight of a state_dict (filters.png)."""
    return next(value for key, value in state.items() if key.endswith("weight") and np.ndim(value) == 4)


# -- reports ----------------------------------------------------------------------------------
def csv_cell(value):
    """A metrics.csv cell: empty where there is no value (top-5 with few classes, or a column
    added after an older checkpoint's epochs)."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def write_metrics(path, history):
    with writing(path), atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow({k: csv_cell(row.get(k)) for k in CSV_FIELDS})


def save_png(path, fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    with writing(path), atomic_write(path) as f:
        f.write(buf.getvalue())


def plot_curves(path, history):
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    ax1.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax2.plot(epochs, [100 * r["train_top1_err"] for r in history], "o-", label="train top-1")
    ax2.plot(epochs, [100 * r["val_top1_err"] for r in history], "o-", label="validation top-1")
    if all(r.get("val_top5_err") is not None for r in history):
        ax2.plot(epochs, [100 * r["val_top5_err"] for r in history], "o-", label="validation top-5")
    ax2.set(xlabel="epoch", ylabel="error (%)", title="error")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_png(path, fig)
    plt.close(fig)


def filter_grid(weight, gap=1):
    """conv1 filters (O, C, k, k) as one image, each filter scaled to [0, 1] on its own
    (Figure 3 of the paper); (H, W, 3) for colour filters, (H, W) for greyscale."""
    o, c, k, _ = weight.shape
    cols = int(np.ceil(np.sqrt(o * 2))) if o > 16 else o
    rows = -(-o // cols)
    grid = np.ones((rows * (k + gap) + gap, cols * (k + gap) + gap, c), np.float32)
    for i in range(o):
        f = weight[i].transpose(1, 2, 0)
        f = (f - f.min()) / max(float(f.max() - f.min()), 1e-12)
        r, q = divmod(i, cols)
        grid[gap + r * (k + gap):gap + r * (k + gap) + k, gap + q * (k + gap):gap + q * (k + gap) + k] = f
    return grid[..., 0] if c == 1 else grid[..., :3] if c >= 3 else grid.mean(axis=2)


def plot_filters(path, weight):
    import matplotlib.pyplot as plt
    grid = filter_grid(weight)
    scale = max(1, 12 // weight.shape[2])
    fig = plt.figure(figsize=(grid.shape[1] * scale / 50 + 0.4, grid.shape[0] * scale / 50 + 0.6))
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.88])
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"conv1: {weight.shape[0]} filters of {weight.shape[1]}x{weight.shape[2]}x{weight.shape[3]}",
                 fontsize=9)
    save_png(path, fig)
    plt.close(fig)


def write_reports(out_dir, history, conv1_weight):
    """metrics.csv, curves.png and filters.png (the weight given: first_conv_weight)."""
    write_metrics(os.path.join(out_dir, "metrics.csv"), history)
    plot_curves(os.path.join(out_dir, "curves.png"), history)
    plot_filters(os.path.join(out_dir, "filters.png"), conv1_weight)


# -- main ---------------------------------------------------------------------------------------
def check_environment(args):
    """A DataError when the device or the report library is missing."""
    message = check_device(args.device)
    if message:
        raise DataError(message)
    try:
        import matplotlib
        matplotlib.use("Agg")
    except ImportError:
        raise DataError("the reports need matplotlib: pip install matplotlib (or pip install -e .[train])") from None


def prepare_out_dir(args):
    """The output folder, created and found writable, without the temporaries a killed run left
    in it; an OutputError when it cannot be used. Data parallel: rank 0's folder, which only it
    touches."""
    out_dir = args.world.broadcast(args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
    if not args.world.is_root:
        return out_dir
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"the output folder {out_dir} is a file; choose a folder with --out")
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):  # fail now, not after the first epoch
            pass
        removed = remove_stale_temporaries(out_dir, OUTPUTS)
    except OSError as exc:
        raise OutputError(f"cannot write to the output folder {out_dir}: {exc.strerror or exc}; "
                          "choose another with --out") from None
    if removed:
        print(f"removed {plural(len(removed), 'temporary file')} a killed run left in {out_dir}")
    return out_dir


def make_transform(args, train, stats):
    """The per-image pipeline of the recipe, with the training set's channel statistics."""
    lighting = lighting_on(args, train)
    return Transform(args.image_size, args.crop, pad=args.pad, flip=args.flip, mean=stats["mean"],
                     eigval=stats["eigval"] if lighting else None,
                     eigvec=stats["eigvec"] if lighting else None, lighting_std=args.lighting)


def data_line(args, train, val):
    """The header's first line: layout, source, counts, classes, channels, image size."""
    classes = plural(len(train.classes), "class", "classes")
    if args.classes:
        classes += f" (--classes {','.join(train.classes)})"
    where = args.data or train.name
    size = "image size unknown" if train.image_size is None else f"{train.image_size} pixels"
    if train.layout == "ImageFolder" and train.image_size is not None:
        size += " (the largest short side in a sample)"
    return (f"data: {train.layout}, {where}: {len(train):,} training / {plural(len(val), 'validation image')}, "
            f"{classes}, {plural(train.channels, 'channel')}, {size}")


def print_data_and_model(args, train, val, params):
    """The header's first two lines, flushed before the slow or memory-hungry steps (channel
    statistics, building the network) so that a run killed in them shows what it was doing."""
    print(data_line(args, train, val))
    print(f"model: {args.arch} on {args.crop}x{args.crop} crops (resize {args.image_size}, pad {args.pad}, "
          f"flip {'on' if args.flip else 'off'}, lighting {'on' if lighting_on(args, train) else 'off'}), "
          f"{params:,} parameters, device {args.device}", flush=True)


def sync_batchnorm(net, world, samples, batch_size):
    """--sync-bn: the network's batch norms made SyncBatchNorm (in place) where several processes
    train it (DataParallel hands them the world); the log line saying what it did. A UsageError,
    before any training, where the epoch's last batch of the `samples` would leave a process
    without an image (SyncBatchNorm needs every process in each batch)."""
    norms = [m for m in iter_modules(net) if isinstance(m, (nbcnn.BatchNorm1d, nbcnn.BatchNorm2d))]
    if world.size == 1:
        return "--sync-bn: one process, whose batch is the global batch: its batch norms are unchanged"
    if not norms:
        return "--sync-bn: the network has no batch norm"
    last = samples % (batch_size * world.size)
    if 0 < last < world.size:
        raise UsageError(f"--sync-bn: the last batch of each epoch ({last} of {samples:,} images) leaves "
                         f"{world.size - last} of {world.size} processes without an image, and SyncBatchNorm "
                         "needs every process in every batch: choose another --batch-size or number of processes")
    nbcnn.SyncBatchNorm.convert_sync_batchnorm(net)
    return (f"--sync-bn: {plural(len(norms), 'batch norm')} normalise with the statistics of the global batch "
            f"of {world.size} processes (one allgather each, forward and backward)")


def optimiser_line(args, opt):
    """The optimiser, its lr now (set by the schedule: a warm-up starts low, a plateau lowers it)
    and its settings."""
    lr = f"lr {opt.lr:g}" + (f" (--lr {args.lr:g}, scheduled)" if opt.lr != args.lr else "")
    momentum = f" momentum {args.momentum:g}" if args.momentum is not None else ""
    warmup = f" after {plural(args.warmup_epochs, 'warm-up epoch')}" if args.warmup_epochs else ""
    world = args.world
    batch = (f"batch {args.batch_size}" if world.size == 1 else
             f"batch {args.batch_size * world.size} ({world.size} processes of {args.batch_size})")
    return (f"{opt.name} {lr}{momentum} weight decay {args.weight_decay:g} {batch}, "
            f"lr policy {args.lr_policy}{warmup}")


def print_run(args, opt, epochs, out_dir, progress):
    """The header's last lines: the optimiser (at the lr it continues at) and the position."""
    print(f"{optimiser_line(args, opt)}; {plural(epochs, 'epoch')}; output {out_dir}")
    if progress is not None:
        print(f"resuming {args.resume} at epoch {progress['epoch'] + 1} step {progress['step']} "
              f"(global step {progress['global_step']})", flush=True)


def print_summary(trainer, out_dir):
    """The last and the best validation accuracy of a finished run."""
    best, last = best_row(trainer.history), trainer.history[-1]
    print(f"done: validation top-1 accuracy {1 - last['val_top1_err']:.2%} after epoch {last['epoch']} "
          f"(best {1 - best['val_top1_err']:.2%}, epoch {best['epoch']}); {trainer.elapsed:.0f} s of "
          f"training; outputs in {out_dir}")


def take_world(args):
    """The data-parallel processes this run is one of (one without a launcher), in args.world:
    a GPU each by rank on its machine, the cores and loader workers shared among a machine's
    processes unless NUMBA_NUM_THREADS or --workers say otherwise; progress printed by rank 0."""
    world = args.world = distributed.init()
    if world.size == 1:
        return world
    if not world.is_root:  # torchvision's reference script silences print the same way
        sys.stdout = open(os.devnull, "w")
    if args.device == "cuda":
        world.select_gpu()
    cores = max(1, (os.cpu_count() or 1) // world.local_size)
    if "NUMBA_NUM_THREADS" not in os.environ:
        import numba
        numba.set_num_threads(min(numba.get_num_threads(), cores))
    if "workers" not in args.given:
        args.workers = min(args.workers, cores)
    return world


def batch_for_world(args, resume, world):
    """A resumed run's per-process batch on this many processes: the checkpoint's global batch
    (its --batch-size times its processes) shared out, so that the run goes on as it was."""
    if resume is None:
        return
    saved_world = resume.progress.get("world_size", 1)
    if saved_world == world.size:
        return
    global_batch = args.batch_size * saved_world
    if global_batch % world.size:
        raise UsageError(f"the checkpoint's global batch of {global_batch} ({saved_world} processes of "
                         f"{args.batch_size}) cannot be shared out among {world.size} processes: resume on a "
                         "number of processes that divides it")
    args.batch_size = global_batch // world.size
    print(f"resuming a run of {plural(saved_world, 'process', 'processes')} on {world.size}: global batch "
          f"{global_batch}, {args.batch_size} per process")


def run(args):
    world = take_world(args)
    resume = read_resume(args)
    batch_for_world(args, resume, world)
    finetune = None if resume is not None else read_finetune(args)  # a resumed run's parameters are its own
    check_environment(args)
    epochs = args.epochs or (DATA_EPOCHS if args.data else EMBEDDED_EPOCHS)
    check_schedule_length(args, resume, epochs)
    if resume is not None and run_is_complete(resume.progress, epochs):
        return finish_complete_run(args, resume, epochs, prepare_out_dir(args))
    train, val, summary = load_data(args)
    check_moved_data(args, resume, summary)
    legacy_size = resume is not None and resume.legacy and train.layout == "ImageFolder"
    resolve_recipe(args, train, None if legacy_size else train.image_size)
    if resume is not None:
        check_pending_flags(args, resume.pending)
    params, activations = network_size(args, train)
    check_memory(args, train, params, activations)
    names = [name for name, _ in build_model(args, train, crop=ARCHS[args.arch].min_crop).named_parameters()]
    frozen = frozen_names(names, args.freeze)
    out_dir = prepare_out_dir(args)
    print_data_and_model(args, train, val, params)
    if resume is not None and "stats" in resume.progress:
        stats = resume.progress["stats"]
    elif finetune is not None and finetune.stats is not None and len(finetune.stats["mean"]) == train.channels:
        stats = finetune.stats  # the inputs the trained layers expect
    else:  # rank 0 computes (and caches) them, so that every process normalises alike
        stats = world.broadcast(cached_channel_stats(train, args.image_size, args.crop, args.stats_sample)
                                if world.is_root else None)
    transform = make_transform(args, train, stats)

    nbcnn.manual_seed(args.seed)
    net = build_model(args, train)
    if finetune is not None:
        print(finetune_line(finetune, start_from(finetune, net, train.classes), train.classes))
    net.to(args.device)
    freeze(net, frozen)
    if frozen:
        print(freeze_line(net, args.freeze, frozen))
    if args.sync_bn:
        print(sync_batchnorm(net, world, len(train), args.batch_size))
    cls, defaults = OPTIMISERS[args.opt]
    opt = cls(net.parameters(), **{name: getattr(args, name) for name in defaults})
    timeout = LOADER_TIMEOUT if world.size > 1 else None
    train_loader = Loader(train, transform, args.batch_size, args.workers, args.prefetch, world.shard, timeout)
    schedule = make_schedule(opt, args.lr_policy, epochs=epochs, steps_per_epoch=len(train_loader),
                             step=args.lr_step, patience=args.lr_patience, warmup_epochs=args.warmup_epochs)
    progress = None if resume is None else restore_checkpoint(resume.state, net, opt, path=args.resume)
    if progress is not None and is_legacy_schedule_state(progress["schedule"]):  # written by LRSchedule
        progress["schedule"] = legacy_schedule_state(progress["schedule"], args.lr_policy, args.lr, progress["epoch"])

    config = TrainConfig(
        epochs=epochs, checkpoint_path=os.path.join(out_dir, "last.ckpt"),
        best_path=os.path.join(out_dir, "best.ckpt"), device=args.device, seed=args.seed,
        ten_crop=args.ten_crop, max_steps=args.max_steps, save_every=args.save_every,
        max_unreadable=args.max_unreadable, resumed_from=args.resume)
    extra = {"args": {k: getattr(args, k) for k in RECIPE}, "stats": stats, "arch": args.arch, "epochs": epochs,
             "data_summary": summary, "classes": list(train.classes), "world_size": world.size}
    trainer = Trainer(
        net, opt, train_loader,
        Loader(val, transform, args.val_batch_size or args.batch_size, args.workers, args.prefetch, world.shard,
               timeout),
        schedule, config, progress=progress, extra=extra, world=world,
        write_reports=lambda history, model: write_reports(out_dir, history, first_conv_weight(model.state_dict())))
    print_run(args, opt, epochs, out_dir, progress)
    if trainer.run() == "done" and trainer.history:
        print_summary(trainer, out_dir)
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (DataError, TrainingError, CheckpointError, OutputError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:  # every process at once: its exit needs no MPI_Abort
        if exc.announce:
            print(f"\ninterrupted: checkpoint saved to {exc.path}; continue with\n"
                  f"  python scripts/train_alexnet.py --resume {exc.path}", file=sys.stderr)
        return distributed.AgreedExit(130)
    except KeyboardInterrupt:  # the second Ctrl-C: the step was cut short, so nothing is saved
        print("\ninterrupted again: quit without saving; the last checkpoint is intact", file=sys.stderr)
        return 130


def entry_point():
    """main() as the process's exit, under distributed.run: a process of a data-parallel job that
    fails or exits non-zero ends the whole job (MPI_Abort) instead of leaving the others waiting."""
    distributed.run(lambda: sys.exit(main()))


if __name__ == "__main__":
    entry_point()
