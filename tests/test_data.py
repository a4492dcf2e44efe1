"""The data pipeline: loaders for each layout on tiny files the tests write, transforms, batching."""

import gzip
import pickle
import re

import numpy as np
import pytest

from nbcnn.data import (DataError, ImageFolder, Loader, Transform, channel_stats, embedded_mnist, epoch_order,
                        open_dataset, read_idx, stratified_split)
from nbcnn.data.transforms import ten_crops

PIL = pytest.importorskip("PIL.Image")


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def make_image_folder(root, sizes=((40, 50), (50, 40)), per_class=3, classes=("cat", "dog")):
    """Two classes of small JPEGs: class 0 dark-red images, class 1 bright-blue ones."""
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                h, w = sizes[i % len(sizes)]
                img = np.zeros((h, w, 3), np.uint8)
                img[..., 0 if c == 0 else 2] = 200
                img[:, : w // 2, 1] = 100  # left half greener: shows flips
                PIL.fromarray(img).save(d / f"{i}.jpg" if i % 2 == 0 else d / f"{i}.png")
    return root


def test_embedded_mnist_split_is_fixed_and_stratified():
    train, val = embedded_mnist()
    assert (len(train), len(val)) == (4500, 500)
    assert np.bincount(val.labels).tolist() == [50] * 10
    assert train.images.shape[1:] == (28, 28, 1) and train.images.dtype == np.uint8
    again = embedded_mnist()[1]
    assert np.array_equal(again.images, val.images)


def test_idx_loader(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", 12, True), ("t10k", 5, False)):
        ext = ".gz" if gz else ""
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte{ext}"), images)
        write_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}"), labels)
        if prefix == "train":
            expected = images
    train, val = open_dataset(str(tmp_path))
    assert (len(train), len(val), train.channels, train.image_size) == (12, 5, 1, 28)
    assert np.array_equal(train.images[..., 0], expected)
    assert train.labels.tolist() == [i % 10 for i in range(12)]


def test_idx_rejects_a_bad_file(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(DataError, match="header says shape"):
        read_idx(str(path))


def test_cifar_loader(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    first = None
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        first = data if first is None else first
        with open(d / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(range(n))}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    train, val = open_dataset(str(tmp_path))
    assert (len(train), len(val), train.channels, train.image_size) == (20, 3, 3, 32)
    assert train.classes[:2] == ["c0", "c1"]
    # the red plane of image 0 is the first 1024 bytes, row by row
    assert np.array_equal(train.images[0, :, :, 0], first[0, :1024].reshape(32, 32))
    assert np.array_equal(train.images[0, :, :, 2], first[0, 2048:].reshape(32, 32))


def test_image_folder_labels_crops_flips(tmp_path):
    make_image_folder(tmp_path)
    train, val = open_dataset(str(tmp_path))
    assert isinstance(train, ImageFolder) and train.classes == ["cat", "dog"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and len(val) == 6
    img = train.load(0)
    assert img.shape == (40, 50, 3) and img.dtype == np.uint8
    t = Transform(resize=36, crop=32, flip=True)
    x = t.eval(img)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert x[0].mean() > 0.7 and x[2].mean() < 0.1  # class 0 is red
    # a flip mirrors the greener left half to the right
    rng = np.random.default_rng(0)
    outs = [t.train(img, rng) for _ in range(20)]
    left_green = [o[1, :, :8].mean() > o[1, :, -8:].mean() for o in outs]
    assert any(left_green) and not all(left_green)
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert Transform(36, 32, flip=False).train(img, rng)[1, :, :8].mean() > 0.3
    crops = t.eval_ten(img)
    assert crops.shape == (10, 3, 32, 32)
    assert np.allclose(crops[5], crops[0][:, :, ::-1])


def test_ten_crops_are_corners_and_centre():
    img = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8, 1)
    crops = ten_crops(img, 4)
    assert crops[0][0, 0, 0] == 0 and crops[3][-1, -1, 0] == img[-1, -1, 0]
    assert np.array_equal(crops[4], img[1:5, 2:6]) and np.array_equal(crops[9], img[1:5, 2:6][:, ::-1])


def test_lighting_moves_colour_along_the_eigenvectors():
    img = np.full((8, 8, 3), 128, np.uint8)
    eigvec = np.eye(3, dtype=np.float32)
    t = Transform(8, 8, flip=False, eigval=np.array([1.0, 0, 0]), eigvec=eigvec)
    x = t.train(img, np.random.default_rng(1))
    base = 128 / 255
    assert abs(x[0].mean() - base) > 1e-3 and np.allclose(x[1:], base)
    assert np.allclose(x[0], x[0, 0, 0])  # one offset for the whole image


def test_epoch_order_and_batches_are_pure_functions(tmp_path):
    assert np.array_equal(epoch_order(10, 3, 1), epoch_order(10, 3, 1))
    assert not np.array_equal(epoch_order(10, 3, 1), epoch_order(10, 3, 2))
    train, _ = embedded_mnist()
    train = train.subset(np.arange(100))
    t = Transform(28, 28, pad=3, flip=False)
    loader = Loader(train, t, 32)
    all_batches = list(loader.train_batches(seed=5, epoch=2))
    assert [len(b.y) for b in all_batches] == [32, 32, 32, 4]
    later = list(loader.train_batches(seed=5, epoch=2, start_step=2))
    assert np.array_equal(later[0].x, all_batches[2].x) and np.array_equal(later[1].y, all_batches[3].y)


def test_worker_processes_give_the_same_batches():
    train, _ = embedded_mnist()
    train = train.subset(np.arange(64))
    t = Transform(28, 28, pad=3, flip=False)
    inline = list(Loader(train, t, 16).train_batches(1, 0))
    with Loader(train, t, 16, workers=2) as loader:
        pooled = list(loader.train_batches(1, 0))
    assert len(pooled) == 4
    for a, b in zip(inline, pooled):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)


def test_sharded_loaders_together_load_the_global_batch():
    """Three processes at batch 4 load, shard after shard, one process's batches of 12: the same
    images in the same order with the same augmentation (the last, partial batch of 7 split 2, 2, 3)."""
    train, _ = embedded_mnist()
    train = train.subset(np.arange(43))
    t = Transform(28, 26, pad=3, flip=True)
    whole = list(Loader(train, t, 12).train_batches(7, 1))
    shards = [list(Loader(train, t, 4, shard=(r, 3)).train_batches(7, 1)) for r in range(3)]
    assert [len(b.y) for b in whole] == [12, 12, 12, 7]
    assert [len(b.y) for b in shards[0]] == [4, 4, 4, 2] and [len(b.y) for b in shards[2]] == [4, 4, 4, 3]
    for step, batch in enumerate(whole):
        assert np.array_equal(np.concatenate([s[step].x for s in shards]), batch.x)
        assert np.array_equal(np.concatenate([s[step].y for s in shards]), batch.y)
    with pytest.raises(ValueError, match="shard must be"):
        Loader(train, t, 4, shard=(3, 3))


class SlowDataset:
    """Two images, each taking 30 s to load (in a worker process)."""

    labels = np.zeros(2, np.int64)

    def __len__(self):
        return 2

    def load(self, i):
        import time
        time.sleep(30)
        return np.zeros((4, 4, 1), np.uint8)


def test_a_stuck_loader_worker_is_an_error_after_the_timeout():
    with Loader(SlowDataset(), Transform(4, 4, flip=False), 2, workers=1, timeout=0.5) as loader:
        with pytest.raises(DataError, match="no batch from the 1 loader worker"):
            next(iter(loader.train_batches(0, 0)))


def test_stratified_split():
    labels = np.repeat(np.arange(4), 10)
    tr, va = stratified_split(labels, 0.2)
    assert np.bincount(labels[va]).tolist() == [2, 2, 2, 2] and len(set(tr) & set(va)) == 0


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("empty_class", "has no images"),
    ("unknown", "not a dataset layout"),
])
def test_bad_data_directories(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "empty_class":
        make_image_folder(root)
        (root / "train" / "bird").mkdir()
    if layout == "unknown":
        (root / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=message):
        open_dataset(str(root))


def test_unreadable_image_is_skipped_and_counted(tmp_path):
    make_image_folder(tmp_path)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    train, _ = open_dataset(str(tmp_path))
    loader = Loader(train, Transform(36, 32), 8)
    batch = next(loader.eval_batches())
    assert batch.bad == 1 and "broken.jpg" in batch.errors[0] and len(batch.y) == 6


@pytest.mark.parametrize("sizes, expected", [(((32, 32),), 32), (((30, 40), (50, 20), (36, 36)), 36)])
def test_image_folder_size_is_the_largest_short_side(tmp_path, sizes, expected):
    make_image_folder(tmp_path, sizes=sizes)
    assert open_dataset(str(tmp_path))[0].image_size == expected


def test_image_folder_size_passes_over_unreadable_files(tmp_path):
    make_image_folder(tmp_path, sizes=((32, 32),))
    (tmp_path / "train" / "cat" / "0.jpg").write_bytes(b"not a jpeg")
    assert open_dataset(str(tmp_path))[0].image_size == 32


def test_each_layout_names_itself(tmp_path):
    make_image_folder(tmp_path / "folder")
    write_idx(str(tmp_path / "train-images-idx3-ubyte"), np.zeros((2, 8, 8), np.uint8))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.zeros(2, np.uint8))
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), np.zeros((2, 8, 8), np.uint8))
    write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.zeros(2, np.uint8))
    layouts = [open_dataset(str(tmp_path / "folder"))[0].layout, open_dataset(str(tmp_path))[0].layout,
               embedded_mnist()[0].layout, embedded_mnist()[0].subset([0, 1]).layout]
    assert layouts == ["ImageFolder", "IDX", "embedded MNIST", "embedded MNIST"]


def test_cifar_layout_names_itself(tmp_path):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, f)
    assert open_dataset(str(tmp_path))[0].layout == "CIFAR-10"


def test_channel_stats_of_unreadable_images_is_a_data_error_naming_a_file(tmp_path):
    make_image_folder(tmp_path)
    for f in (tmp_path / "train").rglob("*.*"):
        f.write_bytes(b"not an image")
    train, _ = open_dataset(str(tmp_path))
    with pytest.raises(DataError) as info:
        channel_stats(train, 36, 32)
    folder = str(tmp_path / "train")
    assert f"from {folder} " in str(info.value)
    assert re.search(re.escape(folder) + r"/(cat|dog)/\d\.(jpg|png)", str(info.value))


def test_channel_stats_are_the_mean_and_covariance_of_the_pixels(tmp_path):
    from nbcnn.data import ArrayDataset
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    stats = channel_stats(ArrayDataset(images, np.zeros(20), ["a"], "random"), 8, 8)
    pixels = images.reshape(-1, 3).T / 255.0
    eigval, eigvec = np.linalg.eigh(np.cov(pixels))
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(stats["eigval"], eigval, rtol=1e-5)
    np.testing.assert_allclose(np.abs(stats["eigvec"]), np.abs(eigvec), atol=1e-5)


def test_channel_stats_of_unreadable_images_names_the_first_bad_file_in_folder_order(tmp_path):
    make_image_folder(tmp_path)
    for f in (tmp_path / "train").rglob("*.*"):
        f.write_bytes(b"not an image")
    train, _ = open_dataset(str(tmp_path))
    first = tmp_path / "train" / "cat" / "0.jpg"  # the sample's first is dog/0.jpg
    with pytest.raises(DataError, match=re.escape(f"the first in folder order: {first}:")):
        channel_stats(train, 36, 32)


def test_a_subset_of_an_image_folder_measures_its_own_image_size(tmp_path):
    make_image_folder(tmp_path, sizes=((20, 20), (60, 60)), per_class=4)
    train, _ = open_dataset(str(tmp_path))
    assert train.image_size == 60
    small = [i for i, path in enumerate(train.paths) if path.endswith((("0.jpg", "2.jpg")))]
    assert train.subset(small).image_size == 20


def test_a_dataset_summary_tells_a_moved_copy_from_another_dataset(tmp_path):
    from nbcnn.data import dataset_summary, summary_difference
    make_image_folder(tmp_path / "a")
    make_image_folder(tmp_path / "b")
    a, b = dataset_summary(*open_dataset(str(tmp_path / "a"))), dataset_summary(*open_dataset(str(tmp_path / "b")))
    assert summary_difference(a, b) is None
    (tmp_path / "b" / "val" / "dog" / "0.jpg").rename(tmp_path / "b" / "val" / "cat" / "9.jpg")
    b = dataset_summary(*open_dataset(str(tmp_path / "b")))
    assert summary_difference(a, b) == "its class 'cat' holds 4 validation images, not 3"
