"""Data sets: IDX, CIFAR pickles, image folders, the embedded subset, splits and loaders."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from xbarprune.data import (
    balanced_subset,
    list_datasets,
    load_splits,
    make_loader,
    read_idx,
    safe_pickle_load,
    stratified_split,
    write_idx,
)
from xbarprune.errors import ConfigError, DataError

SHARED = Path("/work/shared/data")
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    arr = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"a-idx3-ubyte{suffix}", arr)
    back = read_idx(path, ndim=3)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, arr)


def test_idx_header_bytes(tmp_path):
    path = write_idx(tmp_path / "l-idx1-ubyte", np.array([3, 1, 4], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_idx_truncated_and_corrupt(tmp_path):
    good = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((4, 5, 5), np.uint8))
    raw = good.read_bytes()
    trunc = tmp_path / "trunc-idx3-ubyte"
    trunc.write_bytes(raw[:-7])
    with pytest.raises(DataError, match="trunc-idx3-ubyte.*truncated"):
        read_idx(trunc)
    extra = tmp_path / "extra-idx3-ubyte"
    extra.write_bytes(raw + b"\0")
    with pytest.raises(DataError, match="trailing"):
        read_idx(extra)
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    with pytest.raises(DataError, match="dimensions"):
        read_idx(good, ndim=1)
    gz = tmp_path / "x-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(raw)[:-12])
    with pytest.raises(DataError, match=r"x-idx3-ubyte\.gz"):
        read_idx(gz)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "missing-idx1-ubyte")


def _write_mnist(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels  # tag each image with its label
        write_idx(folder / f"{split}-images-idx3-ubyte{sfx}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{sfx}", labels)


@pytest.mark.parametrize(
    ("sub", "root_is_parent"),
    [("mnist", True), ("MNIST/raw", True), ("mnist", False)],
)
def test_mnist_layouts(tmp_path, sub, root_is_parent):
    _write_mnist(tmp_path / sub, gz=sub != "mnist" or root_is_parent)
    root = tmp_path if root_is_parent else tmp_path / sub
    s = load_splits("mnist", root, val_size=10, seed=1)
    assert s.sizes() == {"train": 50, "val": 10, "test": 20}
    x, y = s.train.tensors
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert s.num_classes == 10 and s.in_channels == 1 and s.image_size == 28
    assert s.mean == (0.1307,) and s.std == (0.3081,)
    assert "LeCun" in s.source and "CC BY-SA 3.0" in s.source
    # pixel (0, 0) carries the label: check normalisation and that labels follow images
    raw00 = x[:, 0, 0, 0] * 0.3081 + 0.1307
    torch.testing.assert_close(raw00 * 255, y.float(), atol=1e-3, rtol=0)
    # stratified validation: one per class
    assert torch.bincount(s.val.tensors[1], minlength=10).tolist() == [1] * 10
    # train / val / test rows index the official splits and do not overlap
    assert set(s.indices["train"]).isdisjoint(s.indices["val"])
    assert len(set(s.indices["train"]) | set(s.indices["val"])) == 60


def test_fashion_mnist_torchvision_layout(tmp_path):
    _write_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    s = load_splits("fashion-mnist", tmp_path, pad_to=32, channels=3, test_subset=10)
    x, _ = s.test.tensors
    assert x.shape == (10, 3, 32, 32) and s.image_size == 32 and s.in_channels == 3
    assert s.mean == (0.2860,) * 3 and s.classes[0] == "T-shirt/top"
    # zero padding in pixel space: the border is a black pixel after normalisation
    torch.testing.assert_close(x[:, :, 0, :], torch.full_like(x[:, :, 0, :], -0.2860 / 0.3530))
    torch.testing.assert_close(x[:, 0], x[:, 2])  # replicated channels


def test_mnist_missing_files_message(tmp_path):
    with pytest.raises(DataError) as exc:
        load_splits("mnist", tmp_path)
    msg = str(exc.value)
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", str(tmp_path)):
        assert name in msg
    assert "download=True" in msg


def test_mnist_count_mismatch(tmp_path):
    _write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="t10k-labels"):
        load_splits("mnist", tmp_path)


def test_mnist_bad_labels(tmp_path):
    _write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(20, 11, np.uint8))
    with pytest.raises(DataError, match="labels range"):
        load_splits("mnist", tmp_path)


def test_download_needs_torchvision(tmp_path):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="torchvision"):
            load_splits("mnist", tmp_path, download=True)
    else:  # pragma: no cover - torchvision is not installed here
        pytest.skip("torchvision installed; would try the network")


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST files absent")
def test_real_mnist_files():
    s = load_splits("mnist", SHARED, train_subset=100)
    assert len(s.test) == 10_000 and len(s.train) == 100
    assert torch.bincount(s.test.tensors[1]).tolist() == MNIST_TEST_COUNTS
    assert torch.bincount(s.train.tensors[1]).tolist() == [10] * 10
    x = s.test.tensors[0]
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="shared files absent")
def test_real_fashion_mnist_files():
    s = load_splits("fashion-mnist", SHARED / "fashion-mnist", test_subset=1000)
    assert len(s.train) == 60_000 and len(s.test) == 1000
    x = s.train.tensors[0]
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01


# ---------------------------------------------------------------------------------------------
# CIFAR pickles


def _cifar_batch(n: int, label_key: bytes, num_classes: int, offset: int) -> dict:
    rng = np.random.default_rng(offset)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int((i + offset) % num_classes) for i in range(n)]
    data[:, 0] = labels  # red channel, pixel (0, 0) = label
    d = {b"batch_label": b"synthetic", b"data": data, label_key: labels}
    d[b"filenames"] = [f"img{i}.png".encode() for i in range(n)]
    return d


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=2)  # like the original Python 2 files


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", _cifar_batch(10, b"labels", 10, i * 10))
    _dump(folder / "test_batch", _cifar_batch(10, b"labels", 10, 0))
    names = [n.encode() for n in ("plane", "car", "bird", "cat", "deer")] + [
        n.encode() for n in ("dog", "frog", "horse", "ship", "truck")
    ]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 10})
    for root in (tmp_path, folder):
        s = load_splits("cifar10", root, val_size=0.2, seed=0)
        assert s.sizes() == {"train": 40, "val": 10, "test": 10}
        x, y = s.train.tensors
        assert x.shape == (40, 3, 32, 32) and s.in_channels == 3 and s.image_size == 32
        assert s.mean == (0.4914, 0.4822, 0.4465) and s.classes[1] == "car"
        red00 = x[:, 0, 0, 0] * 0.2470 + 0.4914
        torch.testing.assert_close(red00 * 255, y.float(), atol=1e-3, rtol=0)
        assert "Krizhevsky" in s.source


def test_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train = _cifar_batch(200, b"fine_labels", 100, 0)
    train[b"coarse_labels"] = [lab // 5 for lab in train[b"fine_labels"]]
    _dump(folder / "train", train)
    _dump(folder / "test", _cifar_batch(100, b"fine_labels", 100, 0))
    s = load_splits("cifar100", tmp_path, train_subset=100, pad_to=36)
    assert s.num_classes == 100 and s.image_size == 36
    assert torch.bincount(s.train.tensors[1], minlength=100).tolist() == [1] * 100
    assert s.train.tensors[0].shape == (100, 3, 36, 36)


def test_cifar_missing_and_bad_files(tmp_path):
    with pytest.raises(DataError) as exc:
        load_splits("cifar10", tmp_path)
    assert "data_batch_1" in str(exc.value) and "test_batch" in str(exc.value)
    assert str(tmp_path) in str(exc.value)
    folder = tmp_path / "cifar-100-python"
    _dump(folder / "train", {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]})
    _dump(folder / "test", _cifar_batch(2, b"fine_labels", 100, 0))
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        load_splits("cifar100", tmp_path)
    (folder / "train").write_bytes((folder / "test").read_bytes()[:50])
    with pytest.raises(DataError, match="truncated"):
        load_splits("cifar100", tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.path.join, ("should", "not", "run"))


def test_safe_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "evil"
    path.write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(DataError, match="refusing"):
        safe_pickle_load(path)
    ok = tmp_path / "ok"
    for protocol in (2, 4, 5):
        ok.write_bytes(pickle.dumps({"a": np.arange(5, dtype=np.uint8), "b": {1, 2}}, protocol))
        obj = safe_pickle_load(ok)
        np.testing.assert_array_equal(obj["a"], np.arange(5))


# ---------------------------------------------------------------------------------------------
# image folders


def _png(path: Path, value: int, size=(8, 8), mode="L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode=mode).save(path)


def test_imagefolder_train_test(tmp_path):
    pytest.importorskip("PIL")
    for split, n in (("train", 4), ("test", 2)):
        for ci, cls in enumerate(("cat", "dog", "emu")):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", 40 * ci + i)
    s = load_splits("imagefolder", tmp_path, val_size=3)
    assert s.classes == ("cat", "dog", "emu") and s.num_classes == 3
    assert s.sizes() == {"train": 9, "val": 3, "test": 6}
    assert s.in_channels == 1 and s.image_size == 8
    x = torch.cat([s.train.tensors[0], s.val.tensors[0]])
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 0.05  # own statistics
    rgb = load_splits("imagefolder", tmp_path, channels=3, image_size=16)
    assert rgb.train.tensors[0].shape == (12, 3, 16, 16)
    _png(tmp_path / "test" / "yak" / "0.png", 1)
    with pytest.raises(DataError, match="yak"):
        load_splits("imagefolder", tmp_path)
    (tmp_path / "test" / "yak" / "0.png").unlink()
    (tmp_path / "train" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cat.0\.png"):
        load_splits("imagefolder", tmp_path)


def test_imagefolder_single_folder_and_errors(tmp_path):
    pytest.importorskip("PIL")
    for ci, cls in enumerate(("a", "b")):
        for i in range(10):
            _png(tmp_path / "pool" / cls / f"{i}.png", 100 * ci + i, mode="RGB")
    s = load_splits("imagefolder", tmp_path / "pool", test_fraction=0.2, seed=3)
    assert s.sizes()["test"] == 4 and s.in_channels == 3
    assert torch.bincount(s.test.tensors[1]).tolist() == [2, 2]
    s2 = load_splits("imagefolder", tmp_path / "pool", test_fraction=0.2, seed=4)
    assert np.array_equal(s.indices["test"], s2.indices["test"])  # test split ignores seed
    _png(tmp_path / "pool" / "a" / "big.png", 0, size=(9, 9), mode="RGB")
    with pytest.raises(DataError, match="image_size"):
        load_splits("imagefolder", tmp_path / "pool")
    with pytest.raises(DataError, match="no images"):
        load_splits("imagefolder", tmp_path / "pool" / "a")
    with pytest.raises(ConfigError, match="data_root"):
        load_splits("imagefolder")


# ---------------------------------------------------------------------------------------------
# embedded subset, splits, loaders


@pytest.fixture(scope="module")
def embedded():
    return load_splits("mnist-embedded", val_size=0.1, seed=0)


def test_embedded_shapes_and_balance(embedded):
    s = embedded
    assert s.name == "mnist-embedded" and s.num_classes == 10
    assert s.sizes() == {"train": 10_800, "val": 1_200, "test": 3_000}
    assert s.train.tensors[0].shape == (10_800, 1, 28, 28)
    summary = s.summary()
    assert summary["class_counts"]["train"] == [1080] * 10
    assert summary["class_counts"]["val"] == [120] * 10
    assert summary["class_counts"]["test"] == [300] * 10
    assert "CC BY-SA 3.0" in s.source and "LeCun" in s.source
    x = s.test.tensors[0]
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert s.indices["test"].max() < 10_000 and s.indices["train"].max() < 60_000


def test_embedded_is_deterministic_in_seed(embedded):
    again = load_splits("mnist-embedded", val_size=0.1, seed=0)
    other = load_splits("mnist-embedded", val_size=0.1, seed=1)
    assert np.array_equal(embedded.indices["val"], again.indices["val"])
    assert not np.array_equal(embedded.indices["val"], other.indices["val"])
    assert np.array_equal(embedded.indices["test"], other.indices["test"])


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="shared MNIST files absent")
def test_embedded_matches_official_rows():
    from importlib.resources import files

    with np.load(files("xbarprune.data") / "_embedded/mnist_subset.npz") as z:
        emb = {k: z[k] for k in z.files}
    official = read_idx(SHARED / "mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SHARED / "mnist" / "t10k-labels-idx1-ubyte.gz")
    idx = emb["test_index"].astype(np.int64)
    np.testing.assert_array_equal(emb["test_images"], official[idx])
    np.testing.assert_array_equal(emb["test_labels"], labels[idx])


def test_subsets_and_options(embedded):
    s = load_splits("mnist-embedded", train_subset=101, test_subset=0.1, seed=2)
    assert len(s.train) == 101 and len(s.test) == 300
    counts = torch.bincount(s.train.tensors[1], minlength=10)
    assert counts.max() - counts.min() <= 1
    with pytest.raises(ConfigError, match="unknown data set"):
        load_splits("imagenet")
    with pytest.raises(ConfigError, match="pad_to"):
        load_splits("mnist-embedded", pad_to=20)
    with pytest.raises(ConfigError, match="val_size"):
        load_splits("mnist-embedded", val_size=-3)
    with pytest.raises(ConfigError, match="train_subset"):
        load_splits("mnist-embedded", train_subset=10**6)
    assert "mnist-embedded" in list_datasets() and "cifar100" in list_datasets()


def test_balanced_subset_and_stratified_split():
    labels = np.array([0] * 50 + [1] * 3 + [2] * 20)
    idx = balanced_subset(labels, 30)
    assert np.bincount(labels[idx]).tolist() == [14, 3, 13]
    assert np.array_equal(idx, np.sort(idx))
    assert np.array_equal(idx[:14], np.arange(14))  # no rng: the first of each class
    rest, held = stratified_split(labels, 10, np.random.default_rng(0))
    assert len(held) == 10 and len(rest) == 63
    assert np.bincount(labels[held], minlength=3).tolist() == [7, 0, 3]
    assert set(rest).isdisjoint(held)


def test_make_loader_reproducible(embedded):
    a = [y for _, y in make_loader(embedded.val, 100, shuffle=True, seed=7)]
    b = [y for _, y in make_loader(embedded.val, 100, shuffle=True, seed=7)]
    c = [y for _, y in make_loader(embedded.val, 100, shuffle=True, seed=8)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))
    loader = make_loader(embedded.val, 100, shuffle=True, seed=7)
    first, second = [next(iter(loader))[1] for _ in range(2)]
    assert not torch.equal(first, second)  # the stream continues across epochs
    with pytest.raises(ConfigError):
        make_loader(embedded.val, 0)
