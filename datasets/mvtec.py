"""MVTec AD and MVTec LOCO AD folder layouts (read from the folders, no whitelist of categories or defects).

MVTec AD:   <root>/<cat>/train/good, test/<type>, ground_truth/<defect>/NNN_mask.png
MVTec LOCO: <root>/<cat>/train/good, validation/good, test/{good,logical_anomalies,structural_anomalies},
            ground_truth/<type>/NNN/000.png ... (one folder of masks per image, merged by union);
            the shared partial copy has merged masks ground_truth/<type>/NNN.png instead (also accepted).
"""

from __future__ import annotations

from pathlib import Path

from .base import DataError
from .common import SPLIT_SEED, Record, SplitRecords, holdout, image_size_of, list_images, require_dir, subdirs

LOCO_TYPES = ("logical_anomalies", "structural_anomalies")
# LOCO "partial" protocol: this fraction of validation/good becomes test normals (seed SPLIT_SEED).
LOCO_PARTIAL_TEST_FRACTION = 0.5
# MVTec AD has no validation split: EfficientAD's quantiles use this seeded hold-out of train/good.
MVTEC_AD_VAL_FRACTION = 0.1


def categories(root: Path, marker: str = "train") -> list[str]:
    """Category folders under ``root`` (those that contain ``train/``)."""
    root = require_dir(root, "a dataset root with one folder per category")
    return [c for c in subdirs(root) if (root / c / marker).is_dir()]


def category_dir(root: Path, category: str, what: str) -> Path:
    cats = categories(root)
    if category not in cats:
        raise DataError(f"{root}: category '{category}' not found; available: {cats or 'none'} "
                        f"(expected {root}/<category>/train/good, {what})")
    return Path(root) / category


def _items(files: list[Path], split: str, atype: str, category: str, label: int) -> list[Record]:
    return [Record(p, label, {"split": split, "anomaly_type": atype, "category": category, "path": str(p)},
                   masks=[] if split == "test" else None) for p in files]


def _check_masks(rec: Record) -> None:
    """Mask files must exist and have the image's size (headers only; full decode happens on access)."""
    size = image_size_of(rec.source)
    for m in rec.masks or []:
        msize = image_size_of(m)
        if msize != size:
            raise DataError(f"{m}: mask is {msize[0]}x{msize[1]} but image {rec.source} is {size[0]}x{size[1]}; "
                            "expected the same size")


def _take(records: list[Record], idx, split: str) -> list[Record]:
    out = []
    for i in idx:
        r = records[int(i)]
        out.append(Record(r.source, r.label, {**r.meta, "split": split}, r.masks))
    return out


def load_mvtec_ad(root: Path, category: str, seed: int, val_fraction: float = MVTEC_AD_VAL_FRACTION) -> SplitRecords:
    cdir = category_dir(root, category, "test/<defect>, ground_truth/<defect>/NNN_mask.png")
    train = _items(list_images(cdir / "train" / "good", "normal training images in train/good"), "train", "good", category, 0)
    types = subdirs(require_dir(cdir / "test", "test/<good|defect> folders"))
    if not types:
        raise DataError(f"{cdir / 'test'}: no sub-folders; expected test/good and test/<defect> folders")
    test: list[Record] = []
    for t in types:
        files = list_images(cdir / "test" / t, f"test images of type '{t}'")
        recs = _items(files, "test", t, category, 0 if t == "good" else 1)
        if t != "good":
            gt = cdir / "ground_truth" / t
            require_dir(gt, f"ground-truth masks for defect '{t}' (NNN_mask.png)")
            for r in recs:
                cands = [gt / f"{r.source.stem}_mask.png", gt / f"{r.source.stem}.png"]
                found = [c for c in cands if c.is_file()]
                if not found:
                    raise DataError(f"{cands[0]}: mask not found; expected one mask per anomalous image {r.source}")
                r.masks = found[:1]
                _check_masks(r)
        test += recs
    keep, held = holdout(len(train), val_fraction, seed)
    val = _take(train, held, "val") if len(held) else None
    return SplitRecords(_take(train, keep, "train"), val, test,
                        {"protocol": "mvtec_ad", "official": True, "train_good_total": len(train),
                         "notes": f"val = seeded {val_fraction:.0%} hold-out of train/good (seed {seed}); "
                                  "MVTec AD has no validation split"})


def _loco_masks(gt: Path, stem: str, image: Path) -> list[Path]:
    folder, merged = gt / stem, gt / f"{stem}.png"
    if folder.is_dir():
        return list_images(folder, f"mask files NNN.png for anomalous image {image}")
    if merged.is_file():
        return [merged]
    raise DataError(f"{folder}: mask folder not found; expected {folder}/000.png ... (or merged {merged}) for {image}")


def load_mvtec_loco(root: Path, category: str, protocol: str = "official") -> SplitRecords:
    """``official``: LOCO's own splits. ``partial``: for copies without test/good: a seeded
    LOCO_PARTIAL_TEST_FRACTION of validation/good (seed SPLIT_SEED) become test normals, the rest stays val."""
    if protocol not in ("official", "partial"):
        raise DataError(f"unknown MVTec LOCO protocol '{protocol}'; expected 'official' or 'partial'")
    cdir = category_dir(root, category, "validation/good, test/<type>, ground_truth/<type>/NNN/000.png")
    train = _items(list_images(cdir / "train" / "good", "normal training images in train/good"), "train", "good", category, 0)
    val = _items(list_images(cdir / "validation" / "good", "normal validation images in validation/good"),
                 "val", "good", category, 0)
    types = subdirs(require_dir(cdir / "test", "test/{good,logical_anomalies,structural_anomalies}"))
    if protocol == "official":
        missing = [t for t in ("good", *LOCO_TYPES) if t not in types]
        if missing:
            raise DataError(f"{cdir / 'test'}: missing {missing}; the official LOCO protocol expects test/good, "
                            "test/logical_anomalies and test/structural_anomalies (use dataset 'mvtec_loco_partial' "
                            "for an incomplete copy)")
    test: list[Record] = []
    for t in types:
        recs = _items(list_images(cdir / "test" / t, f"test images of type '{t}'"), "test", t, category,
                      0 if t == "good" else 1)
        if t != "good":
            gt = require_dir(cdir / "ground_truth" / t, f"ground-truth mask folders for '{t}'")
            for r in recs:
                r.masks = _loco_masks(gt, r.source.stem, r.source)
                _check_masks(r)
        test += recs
    info = {"protocol": "mvtec_loco", "official": True, "validation_good_total": len(val), "notes": ""}
    if protocol == "partial":
        keep, held = holdout(len(val), LOCO_PARTIAL_TEST_FRACTION, SPLIT_SEED)
        test = _take(val, held, "test") + test
        for r in test:
            if r.label == 0:
                r.masks = []
        val = _take(val, keep, "val")
        info.update(protocol="mvtec_loco_partial", official=False,
                    notes=f"NON-OFFICIAL split: {len(held)} of {len(keep) + len(held)} validation/good images "
                          f"(seeded, seed {SPLIT_SEED}, fraction {LOCO_PARTIAL_TEST_FRACTION}) are the test normals; "
                          f"test types present: {types}. Not comparable with official LOCO AUROC.")
    return SplitRecords(train, val, test, info)
