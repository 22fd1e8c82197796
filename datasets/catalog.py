"""The datasets adrepro knows (source, archives and their pins) and what their official releases look like
(file counts, decompressed Fashion-MNIST hashes), with the checks that flag data as non-official."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adrepro.download import ChecksumError

from . import oneclass, synth
from .common import SplitRecords


@dataclass(frozen=True)
class Archive:
    file: str
    url: str | None
    sha256: str | None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str  # mvtec_ad | mvtec_loco | mvtec_loco_partial | oneclass | elpv
    source: str  # embedded | shared | official | debian | package
    description: str
    protocol: str
    archives: tuple[Archive, ...] = ()
    categories: tuple[str, ...] | None = None  # None: read from the folders
    path_key: str | None = None  # paths.<key> for a user's local copy
    subdir: str = ""  # folder inside the extraction that holds the data
    homepage: str = ""
    licence: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


_MVTEC_AD_URL = ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
                 "mvtec_anomaly_detection.tar.xz")
_LOCO_URL = ("https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/430647091-1646842701/"
             "mvtec_loco_anomaly_detection.tar.xz")
_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# SHA-256 of the *decompressed* idx files (Debian's .gz headers differ from upstream; the content does not)
FASHION_MNIST_CONTENT_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
_CC = "CC BY-NC-SA 4.0"

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("synth_loco", "mvtec_loco", "embedded", "generated LOCO-layout tray scenes (smoke)", "mvtec_loco",
                categories=(synth.LOCO_CATEGORY,)),
    DatasetSpec("synth_mvtec", "mvtec_ad", "embedded", "generated MVTec-AD-layout tile texture (smoke)", "mvtec_ad",
                categories=(synth.MVTEC_CATEGORY,)),
    DatasetSpec("digits", "oneclass", "embedded", "scikit-learn 8x8 digits, one digit normal (smoke)", "oneclass",
                categories=tuple(str(i) for i in range(10)), extra={"reader": "digits"}),
    DatasetSpec("digits_superclass", "oneclass", "embedded",
                "scikit-learn digits grouped in 5 superclasses of 2 consecutive digits (smoke stand-in for CIFAR-100)",
                "oneclass", categories=tuple(str(i) for i in range(5)), extra={"reader": "digits_superclass"}),
    DatasetSpec("mvtec_ad", "mvtec_ad", "official", "MVTec AD, 15 categories", "mvtec_ad",
                (Archive("mvtec_anomaly_detection.tar.xz", _MVTEC_AD_URL,
                         "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"),),
                path_key="mvtec_ad", homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad", licence=_CC),
    DatasetSpec("mvtec_loco", "mvtec_loco", "official", "MVTec LOCO AD, 5 categories", "mvtec_loco",
                (Archive("mvtec_loco_anomaly_detection.tar.xz", _LOCO_URL,
                         "9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687"),),
                path_key="mvtec_loco", homepage="https://www.mvtec.com/company/research/datasets/mvtec-loco",
                licence=_CC),
    DatasetSpec("mvtec_loco_partial", "mvtec_loco_partial", "shared",
                "MVTec LOCO juice_bottle, partial public copy (no test/good, no structural), 256x512",
                "mvtec_loco_partial",
                (Archive("mvtec_loco_juice_bottle_partial_256x512.tar", None,
                         "28b80d868dd0bba5f803ed599c3c1583f76e863132916ab7b35b5fcf3571b29f"),),
                subdir="mvtec_loco_partial", licence=_CC),
    DatasetSpec("mvtec_ad_bottle_384", "mvtec_ad", "shared", "MVTec AD bottle, complete, downscaled to 384x384",
                "mvtec_ad",
                (Archive("mvtec_ad_bottle_384.tar", None,
                         "9b71cbf136e881f7f1f4dc6316d3721f909c31348f52a61438fdc11822b6f844"),),
                subdir="mvtec_ad", licence=_CC),
    DatasetSpec("cifar10", "oneclass", "official", "CIFAR-10 (official python pickles)", "oneclass",
                (Archive("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
                categories=oneclass.CIFAR10_CLASSES, path_key="cifar10", subdir="cifar-10-batches-py",
                homepage="https://www.cs.toronto.edu/~kriz/cifar.html", extra={"reader": "cifar10"}),
    DatasetSpec("cifar10_jpeg", "oneclass", "shared", "CIFAR-10 re-encoded as JPEG q75 by a public mirror",
                "oneclass",
                (Archive("cifar10-jpeg.tar.gz", None,
                         "efac85c8ed52f4ead1e1f1b670d8dcf435d551fccebdd8b6365e0a01a504f3a4"),),
                categories=oneclass.CIFAR10_CLASSES, subdir="cifar10-jpeg", extra={"reader": "tree"}),
    DatasetSpec("cifar100_superclass", "oneclass", "official", "CIFAR-100, 20 coarse superclasses", "oneclass",
                (Archive("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                         "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
                categories=tuple(str(i) for i in range(20)), path_key="cifar100", subdir="cifar-100-python",
                homepage="https://www.cs.toronto.edu/~kriz/cifar.html", extra={"reader": "cifar100"}),
    DatasetSpec("fashion_mnist", "oneclass", "debian", "Fashion-MNIST (idx files)", "oneclass",
                (Archive("train-images-idx3-ubyte.gz", _FMNIST_URL + "train-images-idx3-ubyte.gz",
                         "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
                 Archive("train-labels-idx1-ubyte.gz", _FMNIST_URL + "train-labels-idx1-ubyte.gz",
                         "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
                 Archive("t10k-images-idx3-ubyte.gz", _FMNIST_URL + "t10k-images-idx3-ubyte.gz",
                         "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
                 Archive("t10k-labels-idx1-ubyte.gz", _FMNIST_URL + "t10k-labels-idx1-ubyte.gz",
                         "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")),
                categories=oneclass.FASHION_MNIST_CLASSES, path_key="fashion_mnist",
                homepage="https://github.com/zalandoresearch/fashion-mnist", licence="MIT",
                extra={"reader": "fashion_mnist"}),
    DatasetSpec("elpv", "elpv", "package", "ELPV solar cells (elpv-dataset package), p=0 normal / p=1 defective",
                "elpv", categories=("all", "mono", "poly"), path_key="elpv",
                homepage="https://github.com/zae-bayern/elpv-dataset", licence=_CC),
)}


# file counts of the official releases per category: (train/good, test) for MVTec AD, (train/good,
# validation/good, test) for MVTec LOCO AD. A local folder of mvtec_ad / mvtec_loco that differs is non-official.
OFFICIAL_COUNTS: dict[str, dict[str, tuple[int, ...]]] = {
    "mvtec_ad": {"bottle": (209, 83), "cable": (224, 150), "capsule": (219, 132), "carpet": (280, 117),
                 "grid": (264, 78), "hazelnut": (391, 110), "leather": (245, 124), "metal_nut": (220, 115),
                 "pill": (267, 167), "screw": (320, 160), "tile": (230, 117), "toothbrush": (60, 42),
                 "transistor": (213, 100), "wood": (247, 79), "zipper": (240, 151)},
    "mvtec_loco": {"breakfast_box": (351, 62, 275), "juice_bottle": (335, 54, 330), "pushpins": (372, 69, 310),
                   "screw_bag": (360, 60, 341), "splicing_connectors": (354, 59, 312)},
}
OFFICIAL_COUNTS["mvtec_ad_bottle_384"] = {"bottle": OFFICIAL_COUNTS["mvtec_ad"]["bottle"]}


def verify_fashion_content(folder: Path) -> dict[str, str]:
    """SHA-256 of each decompressed idx file against the pins (works for Debian's and upstream's .gz)."""
    out = {}
    for stem, path in oneclass.find_fashion_mnist(folder).items():
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            actual = hashlib.sha256(f.read()).hexdigest()
        if actual != FASHION_MNIST_CONTENT_SHA256[stem]:
            raise ChecksumError(f"{path}: SHA-256 of the decompressed content mismatch: expected "
                                f"{FASHION_MNIST_CONTENT_SHA256[stem]}, got {actual}")
        out[stem] = actual
    return out


def non_official_reason(spec: DatasetSpec, category: str, recs: SplitRecords, info: dict) -> str | None:
    """Why the data of one category is not the official release (None: it is): a user's folder, generated
    data, a non-official split or re-encoding, or MVTec file counts that differ from ``OFFICIAL_COUNTS``."""
    if spec.source == "custom":
        return f"user data set (params.yaml datasets.custom.{spec.name}), not an official release"
    if spec.source == "embedded":
        return "generated data (datasets/synth.py or scikit-learn's digits), not an official release"
    if not info["official"]:
        return info.get("notes") or "non-official protocol or copy"
    if spec.name not in OFFICIAL_COUNTS:
        return None
    want = OFFICIAL_COUNTS[spec.name].get(category)
    if want is None:
        return f"category '{category}' is not part of the official {spec.name} release"
    have = (recs.info["train_good_total"], len(recs.test)) if spec.kind == "mvtec_ad" else \
        (len(recs.train), recs.info["validation_good_total"], len(recs.test))
    if tuple(have) != want:
        names = ("train/good", "test") if spec.kind == "mvtec_ad" else ("train/good", "validation/good", "test")
        diff = ", ".join(f"{n} {h} (official {w})" for n, h, w in zip(names, have, want) if h != w)
        return f"file counts differ from the official {spec.name} release ({category}): {diff}"
    return None
