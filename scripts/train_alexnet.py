#!/usr/bin/env python
"""Train AlexNet (Krizhevsky, Sutskever and Hinton, 2012) with the paper's recipe on real images.

    python scripts/train_alexnet.py --device cpu                # 5,000 embedded MNIST digits
    python scripts/train_alexnet.py --data ~/imagenet --device cuda --workers 8
    python scripts/train_alexnet.py --resume runs/<stamp>/last.ckpt

--data DIR takes an ImageFolder tree (DIR/train/<class>/*.jpg, DIR/val/<class>/...), MNIST-format
IDX files (MNIST, Fashion-MNIST) or CIFAR-10's python batches. Writes metrics.csv, curves.png,
filters.png, last.ckpt and best.ckpt under --out. See docs/training.md.
"""

import argparse
import csv
import io
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository's nbcnn importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import nbcnn  # noqa: E402
from nbcnn.checkpoint import CheckpointError, atomic_write, load_checkpoint, read_checkpoint  # noqa: E402
from nbcnn.data import (DataError, Loader, Transform, cached_channel_stats, embedded_mnist,  # noqa: E402
                        open_dataset, stratified_subset)
from nbcnn.train import Interrupted, LRSchedule, Trainer, TrainingError  # noqa: E402

EMBEDDED_EPOCHS = 12
DATA_EPOCHS = 90  # the paper: about 90 passes over ImageNet
# Arguments that define the run; --resume takes them from the checkpoint.
RECIPE = ("data", "arch", "batch_size", "lr", "momentum", "weight_decay", "lr_policy", "lr_step",
          "lr_patience", "seed", "crop", "image_size", "pad", "flip", "init", "lighting", "subset",
          "val_subset", "stats_sample")
CSV_FIELDS = ("epoch", "lr", "train_loss", "train_top1_err", "val_loss", "val_top1_err",
              "val_top5_err", "unreadable", "time_s")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", help="dataset directory (default: the embedded MNIST digits)")
    p.add_argument("--arch", choices=["alexnet", "alexnet-small"],
                   help="network (default: alexnet-small for images of 64 pixels or less, else alexnet)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--epochs", type=int,
                   help=f"epochs (default {EMBEDDED_EPOCHS} on the embedded digits, {DATA_EPOCHS} otherwise, "
                        "the checkpoint's with --resume)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-policy", choices=["plateau", "step"], default="plateau",
                   help="plateau: lr/10 when the validation error stops improving (the paper); "
                        "step: lr/10 every --lr-step epochs")
    p.add_argument("--lr-step", type=int, default=30, help="epochs between lr drops for --lr-policy step")
    p.add_argument("--lr-patience", type=int, default=2,
                   help="epochs without a better validation top-1 error before lr/10 (plateau)")
    p.add_argument("--seed", type=int, default=0, help="seeds the init, dropout, data order and augmentation")
    p.add_argument("--init", choices=["he", "kaiming", "paper"],
                   help="weight init (default: kaiming for alexnet, he for alexnet-small); paper: N(0, 0.01) "
                        "weights and biases of 1 as in the paper; he: N(0, 2/fan_in)")
    p.add_argument("--crop", type=int, help="training crop (default 224 for alexnet, the image size for small images)")
    p.add_argument("--image-size", type=int,
                   help="short side images are resized to (default crop*256/224 for alexnet, the crop otherwise)")
    p.add_argument("--pad", type=int, help="zero padding before the random crop (default crop//8 for alexnet-small, 0 for alexnet)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="random horizontal flips (default: on for colour images, off for greyscale digits)")
    p.add_argument("--lighting", type=float, default=0.1,
                   help="std of the PCA colour noise for alexnet on colour images (0 disables)")
    p.add_argument("--ten-crop", action="store_true", help="validate on the 10 crops, softmax averaged")
    p.add_argument("--subset", type=int, help="train on a fixed, stratified subset of this many images")
    p.add_argument("--val-subset", type=int, help="validate on a fixed, stratified subset of this many images")
    p.add_argument("--stats-sample", type=int, default=1000,
                   help="training images sampled for the channel mean and colour eigenvectors")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data loading processes (0: load in the main process)")
    p.add_argument("--prefetch", type=int, default=2, help="batches in flight per worker")
    p.add_argument("--out", help="output directory (default runs/<timestamp>, or the --resume checkpoint's)")
    p.add_argument("--resume", metavar="CKPT", help="continue the run saved in this checkpoint")
    p.add_argument("--max-steps", type=int, help="stop and checkpoint after this many steps in all")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "lr_step", "crop", "image_size", "subset", "val_subset",
                 "stats_sample", "max_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.workers < 0 or args.prefetch < 1 or args.lr <= 0 or (args.pad is not None and args.pad < 0):
        p.error("--workers must be >= 0, --prefetch >= 1, --lr > 0 and --pad >= 0")
    return args


def load_data(args):
    if args.data:
        train, val = open_dataset(os.path.expanduser(args.data))
        name = args.data
    else:
        train, val = embedded_mnist()
        name = "embedded MNIST digits (4,500 train / 500 validation)"
    if args.subset:
        train = train.subset(stratified_subset(train.labels, args.subset))
    if args.val_subset:
        val = val.subset(stratified_subset(val.labels, args.val_subset))
    return train, val, name


def recipe(args, train):
    """The network and transform settings that follow from the data and the flags."""
    small = train.image_size is not None and train.image_size <= 64
    arch = args.arch or ("alexnet-small" if small else "alexnet")
    if arch == "alexnet":
        crop = args.crop or 224
        resize = args.image_size or round(crop * 256 / 224)
        pad = args.pad or 0
    else:
        crop = args.crop or train.image_size or 32
        resize = args.image_size or crop
        pad = crop // 8 if args.pad is None else args.pad
    flip = train.channels == 3 if args.flip is None else args.flip
    if resize + 2 * pad < crop:
        raise DataError(f"--crop {crop} is larger than the resized image ({resize} pixels + {pad} padding)")
    if arch == "alexnet" and crop < 63:
        raise DataError(f"--arch alexnet needs a crop of at least 63 pixels, got {crop}; use --arch alexnet-small")
    if arch == "alexnet-small" and crop < 7:
        raise DataError(f"--arch alexnet-small needs a crop of at least 7 pixels, got {crop}")
    return arch, crop, resize, pad, flip


def build_model(arch, num_classes, channels, crop, init):
    if arch == "alexnet":
        if init == "he":
            raise DataError("--init he is for --arch alexnet-small; alexnet takes kaiming or paper")
        return nbcnn.models.alexnet(num_classes, input_size=crop, in_channels=channels, init=init or "kaiming")
    return nbcnn.models.alexnet_small(num_classes, in_channels=channels, input_size=crop, init=init or "he")


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


# -- reports ----------------------------------------------------------------------------------
def write_metrics(path, history):
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in CSV_FIELDS})


def save_png(path, fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    with atomic_write(path) as f:
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


def write_reports(out_dir, history, net):
    write_metrics(os.path.join(out_dir, "metrics.csv"), history)
    plot_curves(os.path.join(out_dir, "curves.png"), history)
    plot_filters(os.path.join(out_dir, "filters.png"), net.state_dict()["0.weight"])


# -- main ---------------------------------------------------------------------------------------
def run(args):
    resume_state = None
    if args.resume:
        resume_state = read_checkpoint(args.resume)
        saved = resume_state["progress"].get("args", {})
        for key in RECIPE:
            if key in saved:
                setattr(args, key, saved[key])
        args.out = args.out or os.path.dirname(os.path.abspath(args.resume))
        args.epochs = args.epochs or resume_state["progress"].get("epochs")
    message = check_device(args.device)
    if message:
        raise DataError(message)
    try:
        import matplotlib
        matplotlib.use("Agg")
    except ImportError:
        raise DataError("the reports need matplotlib: pip install matplotlib (or pip install -e .[train])") from None

    train, val, data_name = load_data(args)
    arch, crop, resize, pad, flip = recipe(args, train)
    epochs = args.epochs or (DATA_EPOCHS if args.data else EMBEDDED_EPOCHS)
    out_dir = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)

    if resume_state is not None and "stats" in resume_state["progress"]:
        stats = resume_state["progress"]["stats"]
    else:
        stats = cached_channel_stats(train, resize, crop, args.stats_sample)
    lighting = arch == "alexnet" and train.channels == 3 and args.lighting > 0
    transform = Transform(resize, crop, pad=pad, flip=flip, mean=stats["mean"],
                          eigval=stats["eigval"] if lighting else None,
                          eigvec=stats["eigvec"] if lighting else None, lighting_std=args.lighting)

    nbcnn.manual_seed(args.seed)
    net = build_model(arch, len(train.classes), train.channels, crop, args.init).to(args.device)
    opt = nbcnn.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    schedule = LRSchedule(args.lr_policy, args.lr, step=args.lr_step, patience=args.lr_patience)
    progress = None
    if args.resume:
        progress = load_checkpoint(args.resume, net, opt)

    print(f"data: {data_name}: {len(train)} training / {len(val)} validation images, "
          f"{len(train.classes)} classes, {train.channels} channel(s)")
    print(f"model: {arch} on {crop}x{crop} crops (resize {resize}, pad {pad}, flip {'on' if flip else 'off'}, "
          f"lighting {'on' if lighting else 'off'}), {sum(int(np.prod(p.shape)) for p in net.parameters()):,} "
          f"parameters, device {args.device}")
    print(f"SGD lr {args.lr:g} momentum {args.momentum:g} weight decay {args.weight_decay:g} batch "
          f"{args.batch_size}, lr policy {args.lr_policy}; {epochs} epochs; output {out_dir}")
    if progress is not None:
        print(f"resuming {args.resume} at epoch {progress['epoch'] + 1} step {progress['step']} "
              f"(global step {progress['global_step']})")

    extra = {"args": {k: getattr(args, k) for k in RECIPE}, "stats": stats, "arch": arch, "epochs": epochs}
    trainer = Trainer(
        net, opt,
        Loader(train, transform, args.batch_size, args.workers, args.prefetch),
        Loader(val, transform, args.batch_size, args.workers, args.prefetch),
        device=args.device, epochs=epochs, seed=args.seed, schedule=schedule,
        checkpoint_path=os.path.join(out_dir, "last.ckpt"), best_path=os.path.join(out_dir, "best.ckpt"),
        ten_crop=args.ten_crop, max_steps=args.max_steps, progress=progress, extra=extra,
        on_epoch_end=lambda history, model: write_reports(out_dir, history, model))
    status = trainer.run()
    if status == "done" and trainer.history:
        best = min(trainer.history, key=lambda r: r["val_top1_err"])
        last = trainer.history[-1]
        print(f"done: validation top-1 accuracy {1 - last['val_top1_err']:.2%} after epoch {last['epoch']} "
              f"(best {1 - best['val_top1_err']:.2%}, epoch {best['epoch']}); {trainer.elapsed:.0f} s of "
              f"training; outputs in {out_dir}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (DataError, TrainingError, CheckpointError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"\ninterrupted: checkpoint saved to {exc.path}; continue with\n"
              f"  python scripts/train_alexnet.py --resume {exc.path}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # the second Ctrl-C: the step was cut short, so nothing is saved
        print("\ninterrupted again: quit without saving; the last checkpoint is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
