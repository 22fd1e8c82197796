"""Dataset protocols: counts per split of every offline source present (skipped with a reason when
absent), one-class protocol counts, generator determinism and layouts, item contract."""

from __future__ import annotations

import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dataset_fixtures import loco_tree, mvtec_ad_tree, params_for  # noqa: E402

from adrepro import REPO_ROOT  # noqa: E402
from adrepro.datasets import synth  # noqa: E402
from adrepro.datasets.base import DataError, collate  # noqa: E402
from adrepro.datasets.registry import DATASETS, load_splits, prepare  # noqa: E402

SHARED = (REPO_ROOT / "../shared/data").resolve()
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def shared_params(tmp_path_factory):
    p = params_for(tmp_path_factory.mktemp("data"))
    p["paths"]["shared_data"] = str(SHARED)
    return p


def need(path: Path, what: str):
    if not path.exists():
        pytest.skip(f"{what} not present at {path}")


def test_registry_names():
    for name in ("synth_loco", "synth_mvtec", "digits", "digits_superclass", "mvtec_ad", "mvtec_loco",
                 "mvtec_loco_partial", "mvtec_ad_bottle_384", "cifar10", "cifar10_jpeg", "cifar100_superclass",
                 "fashion_mnist", "elpv"):
        assert name in DATASETS
    for spec in DATASETS.values():
        if spec.source == "official":
            assert all(a.url and a.url.startswith("http") and len(a.sha256) == 64 for a in spec.archives)


# ---------------------------------------------------------------- offline real sources
def test_mvtec_ad_bottle_counts(shared_params):
    need(SHARED / "mvtec_ad_bottle_384.tar", "MVTec AD bottle archive")
    info = prepare("mvtec_ad_bottle_384", shared_params, ["bottle"])
    assert info["sha256"] == DATASETS["mvtec_ad_bottle_384"].archives[0].sha256
    s = load_splits("mvtec_ad_bottle_384", "bottle", 32, 0, shared_params)
    c = s.info["counts"]
    assert c["train"] + c["val"] == 209 and c["val"] == 21  # seeded 10 % hold-out
    assert c["test_total"] == 83 and c["test_masks"] == 63
    assert c["test"] == {"good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21}
    assert s.info["official"] is True
    paths_train = {m["path"] for *_, m in (s.train[i] for i in range(len(s.train)))}
    assert not paths_train & {s.val[i][3]["path"] for i in range(len(s.val))}
    img, label, mask, meta = s.test[len(s.test) - 1]
    assert img.shape == (3, 32, 32) and mask.shape == (32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}


def test_loco_juice_bottle_partial_counts(shared_params):
    need(SHARED / "mvtec_loco_juice_bottle_partial_256x512.tar", "MVTec LOCO juice_bottle partial archive")
    s = load_splits("mvtec_loco_partial", "juice_bottle", 32, 0, shared_params)
    c = s.info["counts"]
    assert c["train"] == 335
    assert c["val"] + c["test"]["good"] == 54 and c["test"]["good"] == 27
    assert c["test"]["logical_anomalies"] == 142 and c["test_masks"] == 142
    assert s.info["official"] is False and "NON-OFFICIAL" in s.info["notes"]
    # the test normals are not in val, and the split is fixed (independent of the run seed)
    s1 = load_splits("mvtec_loco_partial", "juice_bottle", 32, 1, shared_params)
    goods = {r.meta["path"] for r in s.test.records if r.label == 0}
    assert goods == {r.meta["path"] for r in s1.test.records if r.label == 0}
    assert not goods & {r.meta["path"] for r in s.val.records}


def test_cifar10_jpeg_counts_from_listing():
    arc = SHARED / "cifar10-jpeg.tar.gz"
    need(arc, "CIFAR-10 JPEG archive")
    with tarfile.open(arc) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile() and m.name.endswith(".jpg")]
    per = Counter(tuple(n.split("/")[1:3]) for n in names)
    assert sum(v for (split, _), v in per.items() if split == "train") == 50000
    assert sum(v for (split, _), v in per.items() if split == "test") == 10000
    assert {c for _, c in per} == set(DATASETS["cifar10_jpeg"].categories)
    assert all(v == (5000 if s == "train" else 1000) for (s, _), v in per.items())


def test_fashion_mnist_counts(tmp_path):
    need(FMNIST, "Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    p = params_for(tmp_path, fashion_mnist=FMNIST)
    info = prepare("fashion_mnist", p, ["T-shirt/top"])
    assert len(info["content_sha256"]) == 4
    s = load_splits("fashion_mnist", "Trouser", 28, 0, p)
    assert set(s.info["train_per_class"].values()) == {6000}  # paper B says 5,000 (docs/deviations.md)
    assert sum(s.info["train_per_class"].values()) == 60000
    assert len(s.train) == 6000 and len(s.test) == 10000 and s.val is None
    c = s.info["counts"]["test"]
    assert c.pop("good") == 1000 and set(c.values()) == {1000} and "Trouser" not in c
    img, label, _, meta = s.test[0]
    assert img.shape == (3, 28, 28) and torch.equal(img[0], img[1])  # grey repeated


def test_elpv_counts(tmp_path):
    pytest.importorskip("elpv_dataset", reason="pip install elpv-dataset")
    s = load_splits("elpv", "all", 32, 0, params_for(tmp_path))
    c = s.info["counts"]
    assert s.info["excluded_uncertain"] == 295 + 106
    assert c["test"] == {"defective": 715, "good": 377}
    assert c["train"] + c["val"] + 377 == 1508


# ---------------------------------------------------------------- embedded
def test_digits_one_class_counts(tmp_path):
    from sklearn.datasets import load_digits

    per_class = np.bincount(load_digits().target)  # 178 182 177 183 181 182 181 179 174 180
    test_per_class = np.round(per_class / 3).astype(int)
    p = params_for(tmp_path)
    s = load_splits("digits", "0", 16, 0, p)
    assert len(s.train) == per_class[0] - test_per_class[0] == 119
    assert len(s.test) == test_per_class.sum() == 599
    assert s.info["counts"]["test"]["good"] == test_per_class[0]
    assert sum(s.test.labels()) == 599 - test_per_class[0]
    assert {m for m in s.test.anomaly_types()} == {"good", *map(str, range(1, 10))}
    sup = load_splits("digits_superclass", "1", 16, 0, p)  # superclass "1" = digits {2, 3}
    assert len(sup.train) == per_class[2] + per_class[3] - test_per_class[2] - test_per_class[3]
    assert sup.info["counts"]["test"]["good"] == test_per_class[2] + test_per_class[3]
    with pytest.raises(DataError, match="available"):
        load_splits("digits_superclass", "7", 16, 0, p)


def test_oneclass_val_fraction(tmp_path):
    p = params_for(tmp_path)
    p["datasets"] = {"val_fraction": {"oneclass": 0.1}}
    s = load_splits("digits", "0", 16, 3, p)
    assert len(s.val) == 12 and len(s.train) == 107


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("name", ["synth_loco", "synth_mvtec"])
def test_generators_deterministic(tmp_path, name):
    a = _tree_bytes(synth.generate(name, tmp_path / "a", seed=0))
    b = _tree_bytes(synth.generate(name, tmp_path / "b", seed=0))
    assert a == b and len(a) > 100
    c = _tree_bytes(synth.generate(name, tmp_path / "c", seed=1))
    assert c.keys() == a.keys() and c != a


def test_synth_loco_layout_and_masks(tmp_path):
    root = synth.generate("synth_loco", tmp_path / "loco") / "breakfast_tray"
    n = synth.SIZES
    assert len(list((root / "train/good").glob("*.png"))) == n["train"]
    assert len(list((root / "validation/good").glob("*.png"))) == n["val"]
    for t in ("good", "logical_anomalies", "structural_anomalies"):
        assert len(list((root / "test" / t).glob("*.png"))) == n["good" if t == "good" else "per_type"]
    for t in ("logical_anomalies", "structural_anomalies"):
        for img in (root / "test" / t).glob("*.png"):
            masks = sorted((root / "ground_truth" / t / img.stem).glob("*.png"))
            assert masks and masks[0].name == "000.png"
    s = load_splits("synth_loco", "breakfast_tray", 64, 0, params_for(tmp_path / "d"))
    images, labels, masks, metas = collate([s.test[i] for i in range(len(s.test))])
    assert images.shape == (60, 3, 64, 64) and masks.shape == (60, 64, 64)
    anomalous = labels == 1
    assert (masks[anomalous].flatten(1).sum(1) > 0).all()  # every anomaly visible at 64x64
    assert (masks[~anomalous] == 0).all()


def test_synth_mvtec_layout(tmp_path):
    root = synth.generate("synth_mvtec", tmp_path / "mv") / "tiles"
    for d in synth.MVTEC_DEFECTS:
        imgs = sorted(p.stem for p in (root / "test" / d).glob("*.png"))
        assert [f"{s}_mask" for s in imgs] == sorted(p.stem for p in (root / "ground_truth" / d).glob("*.png"))
    s = load_splits("synth_mvtec", "tiles", 64, 0, params_for(tmp_path / "d"))
    assert s.info["counts"]["test"] == {"good": 20, "crack": 20, "stain": 20}


# ---------------------------------------------------------------- any MVTec-layout folder
def test_user_mvtec_folder_grey(tmp_path):
    mvtec_ad_tree(tmp_path / "mine", "widget", grey=True)
    p = params_for(tmp_path / "d", mvtec_ad=tmp_path / "mine")
    info = prepare("mvtec_ad", p, ["widget"])
    assert info["categories"] == ["widget"] and info["source"].startswith("local:")
    s = load_splits("mvtec_ad", "widget", 16, 0, p)
    assert s.info["counts"]["test"] == {"good": 3, "dent": 2, "scratch_mark": 3}
    assert len(s.train) == 9 and len(s.val) == 1
    img, label, mask, meta = s.test[0]  # types in folder order: dent, good, scratch_mark
    assert img.shape == (3, 16, 16) and torch.equal(img[0], img[2]) and label == 1
    assert meta["anomaly_type"] == "dent" and mask.sum() > 0


def test_loco_official_layout_merges_mask_folders(tmp_path):
    loco_tree(tmp_path / "loco", "box")
    p = params_for(tmp_path / "d", mvtec_loco=tmp_path / "loco")
    s = load_splits("mvtec_loco", "box", 48, 0, p)
    assert s.info["official"] is False and len(s.val) == 6  # a copy whose counts are not the release's
    assert s.info["non_official_reason"] == "category 'box' is not part of the official mvtec_loco release"
    assert s.info["counts"]["test"] == {"good": 4, "logical_anomalies": 3, "structural_anomalies": 2}
    _, label, mask, meta = s.test[4]
    assert label == 1 and meta["anomaly_type"] == "logical_anomalies"
    # union of 000.png (4x4 at 0,0) and 001.png (2x10) on the 48x32 image, resized to 48x48 (nearest)
    assert mask.shape == (48, 48) and mask[0, 0] == 1 and mask[-1, -1] == 0 and mask[16, 25] == 1
