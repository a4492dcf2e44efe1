#!/usr/bin/env python
"""Classify images with a network trained by scripts/train_alexnet.py: the top classes by name.

    python scripts/predict.py --checkpoint runs/<stamp>/best.ckpt photo.jpg more_photos/
    python scripts/predict.py --checkpoint best.ckpt --json digit.png     # machine-readable

Each image gets the run's validation preprocessing (resize the short side, centre crop or the
ten crops with --ten-crop runs, minus the training set's channel means, all from the checkpoint).
A folder is searched for .jpg/.jpeg/.png files. Files that cannot be read as images are reported
and skipped (exit status 1). A checkpoint from before class names were recorded prints indices.
--export FILE writes the checkpoint's network as ONNX (.onnx, for inputs of the run's crop) or
its weights (.safetensors or .npz, PyTorch's keys), with or without images to classify.
"""

import argparse
import json
import os
import sys
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file: make the repository's nbcnn and train_alexnet importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from nbcnn.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from nbcnn.data import Transform  # noqa: E402
from nbcnn.data.datasets import IMAGE_EXTENSIONS  # noqa: E402
from nbcnn.train import eval_log_probs  # noqa: E402


class PredictError(Exception):
    """A checkpoint or an argument predict cannot use (one line, exit status 1)."""


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="a last.ckpt or best.ckpt of a training run")
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR", help="image files, or folders of them")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes shown per image (default: 5)")
    p.add_argument("-b", "--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default: 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--export", metavar="FILE",
                   help="write the network as ONNX (FILE.onnx, batch size free, the run's crop) or its weights "
                        "(FILE.safetensors or FILE.npz)")
    return p


# -- the checkpoint's network and preprocessing -----------------------------------------------------
class Predictor:
    """The network, transform and class names of a training run's checkpoint."""

    def __init__(self, path, device="cpu"):
        import train_alexnet  # the training script's build_model: the same network for every --arch
        problem = train_alexnet.check_device(device)
        if problem:
            raise PredictError(problem)
        state = read_checkpoint(path)
        progress = state["progress"]
        if not all(k in progress for k in ("arch", "args", "stats")):
            raise PredictError(f"{path} does not record a training recipe (network, crop, channel means); "
                               "predict takes checkpoints of scripts/train_alexnet.py")
        self.recipe = progress["args"]  # the training flags that define the run (train_alexnet.RECIPE)
        args = SimpleNamespace(**{"arch": progress["arch"], **self.recipe})
        weights = [v for v in state["model"].values() if np.ndim(v) >= 2]
        channels, num_classes = weights[0].shape[1], weights[-1].shape[0]
        names = progress.get("data_summary", {}).get("classes")
        self.named = names is not None and len(names) == num_classes
        self.classes = list(names) if self.named else [str(i) for i in range(num_classes)]
        data = SimpleNamespace(classes=self.classes, channels=channels)
        self.net = train_alexnet.build_model(args, data).to(device)
        try:
            self.net.load_state_dict({k: np.asarray(v) for k, v in state["model"].items()})
        except (ValueError, TypeError) as exc:
            raise PredictError(f"{path} does not fit its recorded {args.arch}: {exc}") from None
        self.net.eval()
        self.device, self.channels, self.ten_crop = device, channels, bool(args.ten_crop)
        self.transform = Transform(args.image_size, args.crop, mean=progress["stats"]["mean"])

    def export(self, path):
        """Write the network as ONNX (.onnx) or its weights (.safetensors, .npz), by the extension."""
        if str(path).lower().endswith(".onnx"):
            import nbcnn.onnx
            nbcnn.onnx.export(self.net, path, (1, self.channels, self.transform.crop, self.transform.crop))
        else:
            self.net.save(path)

    def read(self, path):
        """The image at `path` as uint8 (H, W, C) in the network's channels; OSError/ValueError if unreadable."""
        from PIL import Image
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB" if self.channels == 3 else "L"), dtype=np.uint8).reshape(
                img.size[1], img.size[0], self.channels)

    def probabilities(self, images):
        """(len(images), classes) float64 probabilities, as validation computes them."""
        if self.ten_crop:
            x = np.stack([self.transform.eval_ten(img) for img in images])
        else:
            x = np.stack([self.transform.eval(img) for img in images])
        return np.exp(eval_log_probs(self.net, x, self.device, self.ten_crop))


def image_files(paths):
    """(files to classify, [(path, error)] for arguments that name nothing usable), in argument order."""
    files, problems = [], []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names
                           if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
            files += found
            if not found:
                problems.append((path, f"no {', '.join(IMAGE_EXTENSIONS)} files in this folder"))
        elif os.path.exists(path):
            files.append(path)
        else:
            problems.append((path, "no such file or folder"))
    return files, problems


def predict(predictor, paths, top=5, batch_size=32):
    """(predictions [(path, [(index, probability)] best first)], skipped [(path, reason)])."""
    files, skipped = image_files(paths)
    predictions = []
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start:start + batch_size]:
            try:
                batch.append((path, predictor.read(path)))
            except Exception as exc:  # Pillow raises many types for a file that is not an image
                skipped.append((path, f"not an image Pillow can read ({type(exc).__name__}: {exc})"))
        if batch:
            probs = predictor.probabilities([img for _, img in batch])
            for (path, _), p in zip(batch, probs):
                best = np.argsort(-p, kind="stable")[:top]
                predictions.append((path, [(int(i), float(p[i])) for i in best]))
    return predictions, skipped


def report_json(predictor, predictions, skipped):
    return json.dumps({
        "classes_named": predictor.named,
        "predictions": [{"path": path, "top": [{"index": i, "class": predictor.classes[i] if predictor.named else None,
                                                "probability": p} for i, p in top]}
                        for path, top in predictions],
        "skipped": [{"path": path, "error": error} for path, error in skipped]}, indent=1)


def report_text(predictor, predictions):
    lines = []
    for path, top in predictions:
        lines.append(path)
        lines += [f"  {p:8.2%}  {predictor.classes[i] if predictor.named else f'class {i}'}" for i, p in top]
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.top < 1 or args.batch_size < 1:
        print("error: --top and --batch-size must be at least 1", file=sys.stderr)
        return 2
    if not args.images and not args.export:
        print("error: give images or folders to classify, or --export FILE", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.checkpoint, args.device)
        if args.export:
            predictor.export(args.export)
            print(f"wrote {args.export}", file=sys.stderr)
    except (CheckpointError, PredictError, ImportError, ValueError) as exc:  # WeightsFileError, OnnxError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.images:
        return 0
    if not predictor.named:
        print(f"note: {args.checkpoint} has no class names (written before runs recorded them): showing class indices",
              file=sys.stderr)
    predictions, skipped = predict(predictor, args.images, min(args.top, len(predictor.classes)), args.batch_size)
    for path, error in skipped:
        print(f"skipped {path}: {error}", file=sys.stderr)
    print(report_json(predictor, predictions, skipped) if args.json else report_text(predictor, predictions))
    return 1 if skipped or not predictions else 0


if __name__ == "__main__":
    sys.exit(main())
