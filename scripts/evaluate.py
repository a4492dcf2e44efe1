#!/usr/bin/env python
"""Evaluate a training run's checkpoint on its dataset's validation split (torchvision's --test-only).

    python scripts/evaluate.py --checkpoint runs/<stamp>/best.ckpt              # the run's data and val subset
    python scripts/evaluate.py --checkpoint best.ckpt --data ~/imagenet --all  # the whole validation split

Prints top-1 and top-5 error (top-5 from 6 classes up) and each class's accuracy, and writes the
confusion matrix (rows: true class, columns: predicted) as confusion.png and confusion.csv beside
the checkpoint (or in --out). The preprocessing is the run's validation's (predict.py's).
Unreadable images are counted and skipped.
"""

import argparse
import csv
import io
import json
import os
import sys
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file: make the repository's nbcnn and the scripts beside this one importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from nbcnn.checkpoint import CheckpointError, atomic_write  # noqa: E402
from nbcnn.data import DataError, Loader  # noqa: E402
from nbcnn.train import TOP5_MIN_CLASSES, eval_log_probs  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a last.ckpt or best.ckpt of a training run")
    p.add_argument("--data", metavar="DIR", help="the dataset (default: the run's)")
    p.add_argument("--all", action="store_true", help="the whole validation split, not the run's --val-subset")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("-b", "--batch-size", type=int, default=64, metavar="N", help="images per forward pass (default: 64)")
    p.add_argument("-j", "--workers", type=int, default=0, metavar="N", help="data loading processes (default: 0)")
    p.add_argument("--out", metavar="DIR", help="where confusion.png/.csv go (default: the checkpoint's folder)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return p


def confusion_matrix(true, predicted, k):
    """(k, k) counts: row the true class, column the predicted one."""
    m = np.zeros((k, k), np.int64)
    np.add.at(m, (true, predicted), 1)
    return m


def evaluate(predictor, dataset, batch_size, workers):
    """(confusion matrix, top-5 error or None, unreadable count) of the predictor on `dataset`."""
    k = len(predictor.classes)
    true, top1, in_top5, unreadable = [], [], [], 0
    with Loader(dataset, predictor.transform, batch_size, workers) as loader:
        for batch in loader.eval_batches(predictor.ten_crop):
            unreadable += batch.bad
            if len(batch.y) == 0:
                continue
            logp = eval_log_probs(predictor.net, batch.x, predictor.device, predictor.ten_crop)
            order = np.argsort(-logp, axis=1, kind="stable")
            true.append(batch.y)
            top1.append(order[:, 0])
            in_top5.append((order[:, :5] == batch.y[:, None]).any(axis=1))
    if not true:
        raise DataError("no validation image could be read")
    top5 = 1 - float(np.mean(np.concatenate(in_top5))) if k >= TOP5_MIN_CLASSES else None
    return confusion_matrix(np.concatenate(true), np.concatenate(top1), k), top5, unreadable


def write_outputs(out_dir, classes, matrix):
    """confusion.csv and confusion.png in out_dir, each written atomically."""
    with atomic_write(os.path.join(out_dir, "confusion.csv"), "w") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted"] + classes)
        w.writerows([name] + row.tolist() for name, row in zip(classes, matrix))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    k = len(classes)
    fig, ax = plt.subplots(figsize=(min(4 + 0.4 * k, 20), min(3.5 + 0.4 * k, 20)))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if k <= 30:
        ax.set_xticks(range(k), classes, rotation=90)
        ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_write(os.path.join(out_dir, "confusion.png")) as f:
        f.write(buf.getvalue())


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.workers < 0:
        print("error: --batch-size must be at least 1 and --workers at least 0", file=sys.stderr)
        return 2
    from predict import PredictError, Predictor
    from train_alexnet import load_data
    try:
        predictor = Predictor(args.checkpoint, args.device)
        recipe = predictor.recipe
        data = os.path.abspath(os.path.expanduser(args.data)) if args.data else recipe["data"]
        _, val, _ = load_data(SimpleNamespace(data=data, subset=None,
                                              val_subset=None if args.all else recipe.get("val_subset")))
        if list(val.classes) != predictor.classes and predictor.named:
            raise DataError(f"the classes of {data or 'the embedded digits'} are not the checkpoint's "
                            f"({len(val.classes):,} against {len(predictor.classes):,})")
        matrix, top5, unreadable = evaluate(predictor, val, args.batch_size, args.workers)
        out_dir = args.out or os.path.dirname(os.path.abspath(args.checkpoint))
        os.makedirs(out_dir, exist_ok=True)
        write_outputs(out_dir, predictor.classes, matrix)
    except (CheckpointError, PredictError, DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n = int(matrix.sum())
    per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    result = {"images": n, "unreadable": unreadable, "top1_err": 1 - float(np.trace(matrix)) / n, "top5_err": top5,
              "per_class_accuracy": dict(zip(predictor.classes, per_class.tolist())),
              "confusion_png": os.path.join(out_dir, "confusion.png")}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{n:,} validation images ({unreadable:,} unreadable, skipped): top-1 error {result['top1_err']:.2%}"
          + ("" if top5 is None else f", top-5 error {top5:.2%}"))
    width = max(len(c) for c in predictor.classes)
    for name, acc, count in zip(predictor.classes, per_class, matrix.sum(axis=1)):
        print(f"  {name:<{width}}  {acc:8.2%} of {count:,}")
    print(f"confusion matrix: {result['confusion_png']} and confusion.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
