"""Bad input: each case raises DataError naming the path and what was expected; nothing half-made
is marked complete."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dataset_fixtures import idx_gz, loco_tree, mvtec_ad_tree, params_for, png  # noqa: E402

from adrepro.datasets.base import DataError  # noqa: E402
from adrepro.datasets.registry import load_splits, prepare  # noqa: E402
from adrepro.download import COMPLETE_MARKER  # noqa: E402


def mine(tmp_path: Path, **kw) -> tuple[Path, dict]:
    root = mvtec_ad_tree(tmp_path / "mine", "widget", **kw)
    return root, params_for(tmp_path / "d", mvtec_ad=root)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'nope'.*known"):
        load_splits("nope", "x", 16, 0, params_for(tmp_path))


def test_missing_root(tmp_path):
    p = params_for(tmp_path / "d", mvtec_loco=tmp_path / "absent")
    with pytest.raises(DataError, match=r"mvtec_loco not found at .*absent.*paths\.mvtec_loco"):
        load_splits("mvtec_loco", "box", 16, 0, p)


def test_root_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    p = params_for(tmp_path / "d", elpv=f)
    with pytest.raises(DataError, match=r"file\.txt: is a file; expected a directory"):
        load_splits("elpv", "all", 16, 0, p)


def test_unknown_category_lists_available(tmp_path):
    _, p = mine(tmp_path)
    with pytest.raises(DataError, match=r"category 'bottle' not found; available: \['widget'\]"):
        load_splits("mvtec_ad", "bottle", 16, 0, p)
    with pytest.raises(DataError, match=r"\['bottle'\].*available: \['widget'\]"):
        prepare("mvtec_ad", p, ["bottle"])


def test_empty_train_folder(tmp_path):
    root, p = mine(tmp_path)
    for f in (root / "widget/train/good").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"train/good: no images .* expected normal training images"):
        load_splits("mvtec_ad", "widget", 16, 0, p)


def test_missing_test_folder(tmp_path):
    root, p = mine(tmp_path)
    shutil.rmtree(root / "widget/test")
    with pytest.raises(DataError, match=r"widget/test: directory not found; expected"):
        load_splits("mvtec_ad", "widget", 16, 0, p)


def test_missing_mask(tmp_path):
    root, p = mine(tmp_path)
    (root / "widget/ground_truth/dent/001_mask.png").unlink()
    with pytest.raises(DataError, match=r"001_mask\.png: mask not found; expected one mask"):
        load_splits("mvtec_ad", "widget", 16, 0, p)


def test_mask_size_differs(tmp_path):
    root, p = mine(tmp_path)
    png(root / "widget/ground_truth/dent/000_mask.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"000_mask\.png: mask is 10x10 but image .*000\.png is 40x32"):
        load_splits("mvtec_ad", "widget", 16, 0, p)


def test_truncated_image(tmp_path):
    root, p = mine(tmp_path)
    f = root / "widget/test/good/001.png"
    f.write_bytes(f.read_bytes()[:200])
    s = load_splits("mvtec_ad", "widget", 16, 0, p)  # header still readable: fails on access
    i = next(k for k, r in enumerate(s.test.records) if r.source == f)
    with pytest.raises(DataError, match=r"test/good/001\.png: unreadable or truncated image"):
        s.test[i]


def test_unreadable_image(tmp_path):
    root, p = mine(tmp_path)
    (root / "widget/train/good/003.png").write_bytes(b"not an image")
    s = load_splits("mvtec_ad", "widget", 16, 0, p)
    with pytest.raises(DataError, match=r"003\.png: unreadable or truncated image"):
        for i in range(len(s.train)):
            s.train[i]
        for i in range(len(s.val)):
            s.val[i]


def test_loco_official_needs_test_good(tmp_path):
    loco_tree(tmp_path / "loco", "box", with_good=False, merged_masks=True)
    p = params_for(tmp_path / "d", mvtec_loco=tmp_path / "loco")
    with pytest.raises(DataError, match=r"missing \['good'\].*mvtec_loco_partial"):
        load_splits("mvtec_loco", "box", 16, 0, p)


def test_loco_missing_mask_folder(tmp_path):
    root = loco_tree(tmp_path / "loco", "box")
    shutil.rmtree(root / "box/ground_truth/structural_anomalies/001")
    p = params_for(tmp_path / "d", mvtec_loco=root)
    with pytest.raises(DataError, match=r"structural_anomalies/001: mask folder not found; expected"):
        load_splits("mvtec_loco", "box", 16, 0, p)


def test_shared_archive_absent(tmp_path):
    p = params_for(tmp_path / "d")
    p["paths"]["shared_data"] = str(tmp_path / "noshared")
    with pytest.raises(DataError, match=r"noshared/mvtec_ad_bottle_384\.tar not found; expected"):
        load_splits("mvtec_ad_bottle_384", "bottle", 16, 0, p)


def test_official_absent_without_network(tmp_path):
    p = params_for(tmp_path / "d")
    with pytest.raises(DataError, match=r"cifar100_superclass not found at .*cifar100_superclass.*paths\.cifar100"):
        load_splits("cifar100_superclass", "0", 16, 0, p)
    p["datasets"] = {"allow_download": False}
    with pytest.raises(DataError, match=r"allow_download is false"):
        prepare("cifar100_superclass", p, ["0"])


def test_truncated_local_archive_not_marked_complete(tmp_path):
    from dataset_fixtures import cifar10_archive

    data = cifar10_archive(tmp_path / "src")
    arc = tmp_path / "cifar-10-python.tar.gz"
    arc.write_bytes(data[: len(data) // 2])
    p = params_for(tmp_path / "d", cifar10=arc)
    with pytest.raises(Exception, match=r"cifar-10-python\.tar\.gz.*(mismatch|truncated)"):
        prepare("cifar10", p, ["cat"])
    assert not (tmp_path / "d/cifar10" / COMPLETE_MARKER).exists()


def test_corrupt_idx(tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    imgs = idx_gz(np.zeros((4, 28, 28), np.uint8))
    for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        (d / f"{stem}.gz").write_bytes(imgs[:-7])  # truncated gzip stream
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (d / f"{stem}.gz").write_bytes(idx_gz(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: unreadable or truncated idx"):
        load_splits("fashion_mnist", "Bag", 16, 0, params_for(tmp_path / "x", fashion_mnist=d))
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        load_splits("fashion_mnist", "Bag", 16, 0, params_for(tmp_path / "x", fashion_mnist=d))
