"""Readers for the classification sets of paper B's one-class protocol, and the protocol itself.

One-class protocol (paper B sec. 4.1): one class (or superclass) is normal; train on its training
images; test on the whole test set, every other class anomalous. Readers return uint8 arrays
(decoded once, cached per process) or file lists, never touching the network.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import DataError
from .common import SPLIT_SEED, Record, SplitRecords, holdout, list_images, require_dir

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")
# digits_superclass (smoke only): five superclasses of two consecutive digits: "0"={0,1}, "1"={2,3}, ... "4"={8,9}.
DIGITS_SUPERCLASSES = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
# sklearn digits has no official split: this stratified fraction (seed SPLIT_SEED) is the test set.
DIGITS_TEST_FRACTION = 1 / 3
# ELPV has no official split: this stratified fraction of the p=0 cells (seed SPLIT_SEED) are test normals.
ELPV_TEST_NORMAL_FRACTION = 0.25


@dataclass
class ClassData:
    """Train/test images (uint8 arrays, or file paths) with integer labels and the label names."""

    train: np.ndarray | list[Path]
    train_labels: np.ndarray
    test: np.ndarray | list[Path]
    test_labels: np.ndarray
    names: tuple[str, ...]


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected the official CIFAR python pickle")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated CIFAR pickle ({exc})") from exc
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_images(d: dict, path: Path) -> np.ndarray:
    data = np.asarray(d["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' has shape {data.shape}; expected [N, 3072] (3x32x32 CIFAR rows)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


@lru_cache(maxsize=2)
def read_cifar10(folder: Path) -> ClassData:
    """Official ``cifar-10-batches-py``: data_batch_1..5, test_batch, batches.meta."""
    folder = require_dir(folder, "the official cifar-10-batches-py folder")
    parts = [_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
    test = _unpickle(folder / "test_batch")
    names = tuple(n.decode() for n in _unpickle(folder / "batches.meta")["label_names"])
    return ClassData(np.concatenate([_cifar_images(p, folder) for p in parts]),
                     np.concatenate([np.asarray(p["labels"]) for p in parts]),
                     _cifar_images(test, folder / "test_batch"), np.asarray(test["labels"]), names)


@lru_cache(maxsize=2)
def read_cifar100_coarse(folder: Path) -> ClassData:
    """Official ``cifar-100-python``: train, test, meta; the 20 coarse labels are the superclasses."""
    folder = require_dir(folder, "the official cifar-100-python folder")
    tr, te = _unpickle(folder / "train"), _unpickle(folder / "test")
    names = tuple(n.decode() for n in _unpickle(folder / "meta")["coarse_label_names"])
    return ClassData(_cifar_images(tr, folder / "train"), np.asarray(tr["coarse_labels"]),
                     _cifar_images(te, folder / "test"), np.asarray(te["coarse_labels"]), names)


def read_image_tree(root: Path, classes: tuple[str, ...] | None = None) -> ClassData:
    """``<root>/{train,test}/<class>/*.jpg`` (the CIFAR-10 JPEG tree); class order = sorted or given."""
    root = require_dir(root, "a folder with train/<class>/ and test/<class>/ image folders")
    found = sorted(p.name for p in require_dir(root / "train", "train/<class>/ folders").iterdir() if p.is_dir())
    names = tuple(classes) if classes and set(classes) == set(found) else tuple(found)
    out = {}
    for split in ("train", "test"):
        files, labels = [], []
        for k, c in enumerate(names):
            fs = list_images(root / split / c, f"images of class '{c}'")
            files += fs
            labels += [k] * len(fs)
        out[split] = (files, np.asarray(labels))
    return ClassData(out["train"][0], out["train"][1], out["test"][0], out["test"][1], names)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable or truncated idx file ({exc})") from exc
    if len(raw) < 8:
        raise DataError(f"{path}: too short for an idx header; expected an MNIST-style idx file")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path}: bad idx magic; expected unsigned-byte idx data (0x0000 0x08)")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: {body.size} bytes of data for shape {shape}; truncated idx file")
    return body.reshape(shape)


def find_fashion_mnist(root: Path) -> dict[str, Path]:
    """Locate the four idx files (.gz or raw) in ``root``, ``root/raw`` or ``root/FashionMNIST/raw``
    (Debian's dataset-fashion-mnist and torchvision layouts)."""
    root = require_dir(root, "a folder with the Fashion-MNIST idx files")
    out = {}
    for name in FASHION_MNIST_FILES:
        for d in (root, root / "raw", root / "FashionMNIST" / "raw"):
            hit = next((d / f for f in (name + ".gz", name) if (d / f).is_file()), None)
            if hit:
                out[name] = hit
                break
        else:
            raise DataError(f"{root}: {name}[.gz] not found (looked in ., raw/, FashionMNIST/raw/); expected the "
                            "Fashion-MNIST idx files (apt-get install dataset-fashion-mnist, or torchvision layout)")
    return out


@lru_cache(maxsize=2)
def read_fashion_mnist(root: Path) -> ClassData:
    f = find_fashion_mnist(root)
    d = {k: _read_idx(p) for k, p in f.items()}
    return ClassData(d["train-images-idx3-ubyte"], d["train-labels-idx1-ubyte"].astype(np.int64),
                     d["t10k-images-idx3-ubyte"], d["t10k-labels-idx1-ubyte"].astype(np.int64), FASHION_MNIST_CLASSES)


@lru_cache(maxsize=1)
def read_digits() -> ClassData:
    """scikit-learn's 8x8 digits (0..16 -> 0..255), stratified fixed split (seed SPLIT_SEED).

    Read straight from the CSV inside the scikit-learn wheel (what ``load_digits`` reads) so a stage
    does not pay for importing scikit-learn."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if csv is None or not csv.is_file():
        raise DataError(f"scikit-learn's digits not found ({csv}); expected `pip install scikit-learn`")
    raw = np.loadtxt(csv, delimiter=",")
    images = np.round(raw[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    labels = raw[:, -1].astype(np.int64)
    test_mask = np.zeros(len(labels), dtype=bool)
    rng = np.random.default_rng(SPLIT_SEED)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        test_mask[rng.choice(idx, int(round(len(idx) * DIGITS_TEST_FRACTION)), replace=False)] = True
    return ClassData(images[~test_mask], labels[~test_mask], images[test_mask], labels[test_mask],
                     tuple(str(i) for i in range(10)))


def group_labels(data: ClassData, groups: tuple[tuple[int, ...], ...]) -> ClassData:
    lut = np.full(max(max(g) for g in groups) + 1, -1)
    for k, g in enumerate(groups):
        lut[list(g)] = k
    return ClassData(data.train, lut[data.train_labels], data.test, lut[data.test_labels],
                     tuple(str(k) for k in range(len(groups))))


def one_class(data: ClassData, normal: str, category_names: tuple[str, ...], seed: int,
              val_fraction: float = 0.0, display: tuple[str, ...] | None = None) -> SplitRecords:
    """Paper B's protocol. ``category_names[k]`` names label k (what runs call the category);
    ``display[k]`` (optional) is a readable name kept in meta["class_name"]."""
    if normal not in category_names:
        raise DataError(f"normal class '{normal}' not found; available: {list(category_names)}")
    k = category_names.index(normal)
    display = display or category_names

    def recs(labels: np.ndarray, idx: np.ndarray, split: str, files) -> list[Record]:
        out = []
        for i in idx:
            c = int(labels[i])
            src = files[i] if isinstance(files, list) else int(i)
            out.append(Record(src, int(c != k), {
                "split": split, "anomaly_type": "good" if c == k else category_names[c], "category": normal,
                "class": category_names[c], "class_name": display[c], "path": str(src) if isinstance(src, Path)
                else f"{split}[{int(i)}]"}))
        return out

    normal_idx = np.flatnonzero(data.train_labels == k)
    if len(normal_idx) == 0:
        raise DataError(f"class '{normal}' has no training images")
    keep, held = holdout(len(normal_idx), val_fraction, seed)
    train = recs(data.train_labels, normal_idx[keep], "train", data.train)
    val = recs(data.train_labels, normal_idx[held], "val", data.train) if len(held) else None
    test = recs(data.test_labels, np.arange(len(data.test_labels)), "test", data.test)
    per_class = {category_names[c]: int((data.train_labels == c).sum()) for c in range(len(category_names))}
    return SplitRecords(train, val, test, {"official": True, "train_per_class": per_class,
                                           "notes": "one-class: train = normal class's training images; test = "
                                                    "whole test set, other classes anomalous"})


def elpv_records(labels_csv: Path, category: str, seed: int, val_fraction: float = 0.0) -> SplitRecords:
    """ELPV: functional p=0 normal, p=1 anomalous ('defective'), uncertain p in (0,1) excluded and counted.
    ``category``: 'all', 'mono' or 'poly'. Test = seeded ELPV_TEST_NORMAL_FRACTION of normals + all p=1."""
    if not labels_csv.is_file():
        raise DataError(f"{labels_csv}: not found; expected ELPV's labels.csv (pip install elpv-dataset)")
    cats = ("all", "mono", "poly")
    if category not in cats:
        raise DataError(f"ELPV category '{category}' not found; available: {list(cats)}")
    rows = []
    for line in labels_csv.read_text().splitlines():
        parts = line.split()
        if len(parts) != 3:
            raise DataError(f"{labels_csv}: bad line {line!r}; expected 'path probability type'")
        rows.append((labels_csv.parent / parts[0], float(parts[1]), parts[2]))
    rows = [r for r in rows if category == "all" or r[2] == category]
    normal = [r for r in rows if r[1] == 0.0]
    bad = [r for r in rows if r[1] == 1.0]
    uncertain = len(rows) - len(normal) - len(bad)

    def rec(r, split, label):
        return Record(r[0], label, {"split": split, "anomaly_type": "defective" if label else "good",
                                    "category": category, "cell_type": r[2], "probability": r[1], "path": str(r[0])},
                      masks=None)

    rest, test_idx = holdout(len(normal), ELPV_TEST_NORMAL_FRACTION, SPLIT_SEED)
    keep, held = holdout(len(rest), val_fraction, seed)
    train = [rec(normal[rest[i]], "train", 0) for i in keep]
    val = [rec(normal[rest[i]], "val", 0) for i in held] or None
    test = [rec(normal[i], "test", 0) for i in test_idx] + [rec(r, "test", 1) for r in bad]
    return SplitRecords(train, val, test, {
        "protocol": "elpv", "official": False, "excluded_uncertain": uncertain,
        "notes": f"no official split: {len(test_idx)} of {len(normal)} p=0 cells (seed {SPLIT_SEED}) are test normals; "
                 f"p=1 cells anomalous; {uncertain} uncertain cells (p=1/3, 2/3) excluded"})
