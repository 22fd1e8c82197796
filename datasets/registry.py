"""Every dataset adrepro knows (the table: ``catalog.py``): how it is made available (``prepare``) and how
it is split into train / val / test (``load_splits``). Downloads happen only in ``prepare``.

params.yaml keys read here (all optional except ``paths.data_root``):
  paths.data_root, paths.shared_data, paths.fashion_mnist        (existing)
  paths.mvtec_ad | mvtec_loco | cifar10 | cifar100 | elpv         a local directory (used in place) or
                                                                   archive (verified, extracted); skips the network;
                                                                   configured but missing is an error, never a download
  (a local copy or shared archive is a DVC dependency of `data@<name>` and is fingerprinted into its prepared.json)
  datasets.sources.<name>: {url, sha256} | [{file, url, sha256}]  mirror / pin override
  datasets.val_fraction: {mvtec_ad: 0.1, oneclass: 0.0, elpv: 0.1}
  datasets.allow_download: true
  datasets.custom.<name>: {layout: mvtec_ad | mvtec_loco, path}   a user's own folder, used by its name like any
                                                                   dataset above; always flagged non-official
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import http.client
import urllib.error
from pathlib import Path
from typing import Any

from adrepro.config import resolve_path
from adrepro.download import COMPLETE_MARKER, SOURCE_RECORD, ChecksumError, download, extract, sha256_file
from adrepro.results import write_json

from . import mvtec, oneclass, synth
from .base import DataError, Splits
from .catalog import DATASETS, Archive, DatasetSpec, non_official_reason, verify_fashion_content
from .common import ArrayDataset, FolderDataset, SplitRecords, atomic_build, require_dir

PREPARED_RECORD = "prepared.json"
SHARED_SUMS = "SHA256SUMS"


# ------------------------------------------------------------------ params helpers
def _spec(name: str, params: dict | None = None) -> DatasetSpec:
    """A built-in dataset, or one the user declares in params.yaml ``datasets.custom.<name>: {layout, path}``."""
    custom = ((params or {}).get("datasets") or {}).get("custom") or {}
    if name in custom and name not in DATASETS:
        c = custom[name]
        return DatasetSpec(name, c["layout"], "custom", f"user data set (datasets.custom.{name}) at {c['path']}",
                           c["layout"], extra={"path": str(c["path"])})
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; known: {sorted(DATASETS)} and datasets.custom: {sorted(custom)}")
    return DATASETS[name]


def _paths(params: dict) -> dict:
    paths = params.get("paths") or {}
    if not paths.get("data_root"):
        raise DataError("params.yaml: missing key 'paths.data_root' (where data is generated/extracted)")
    return paths


def _data_root(params: dict) -> Path:
    return resolve_path(_paths(params)["data_root"])


def _opts(params: dict) -> dict:
    return params.get("datasets") or {}


def _val_fraction(params: dict, kind: str, override: float | None = None) -> float:
    """Share of the normal training images held out as val: ``override`` (a method's own, e.g. paper B's 0),
    else ``datasets.val_fraction.<kind>``, else the protocol default."""
    if override is not None:
        if not 0.0 <= float(override) < 1.0:
            raise DataError(f"val_fraction must be in [0, 1), got {override!r} (params.yaml methods.<family>)")
        return float(override)
    default = {"mvtec_ad": mvtec.MVTEC_AD_VAL_FRACTION, "oneclass": 0.0, "elpv": 0.1}[kind]
    return float((_opts(params).get("val_fraction") or {}).get(kind, default))


def _archives(spec: DatasetSpec, params: dict) -> tuple[Archive, ...]:
    """The spec's archives with ``datasets.sources.<name>`` overrides (mirror URL / pin) applied."""
    over = (_opts(params).get("sources") or {}).get(spec.name)
    if not over:
        return spec.archives
    items = over if isinstance(over, list) else [over]
    out = list(spec.archives)
    for k, o in enumerate(items):
        i = next((j for j, a in enumerate(out) if a.file == o.get("file")), k)
        if i >= len(out):
            raise DataError(f"params.yaml: datasets.sources.{spec.name}[{k}] matches no file of {spec.name} "
                            f"(files: {[a.file for a in spec.archives]})")
        base = out[i]
        out[i] = Archive(o.get("file", base.file), o.get("url", base.url), o.get("sha256", base.sha256))
    return tuple(out)


def _local_override(spec: DatasetSpec, params: dict) -> Path | None:
    """``paths.<path_key>``: a local copy used instead of any download. Configured but missing is an
    error naming the key (never a silent fall-back to downloading)."""
    if not spec.path_key:
        return None
    value = _paths(params).get(spec.path_key)
    if not value:
        return None
    path = resolve_path(value)
    if not path.exists():
        default = "download the pinned official archive" if spec.archives and spec.archives[0].url else \
            "use the default source"
        raise DataError(f"{spec.name} not found at {path}: params.yaml paths.{spec.path_key} names a path that does "
                        f"not exist; fix it, or remove the key (or set it to null) to {default}")
    return path


def external_input(name: str, params: dict) -> str | None:
    """The folder or archive outside the project that dataset ``name`` is read from, as params.yaml
    writes it (the ``paths.<key>`` local copy, or the archive in ``paths.shared_data``); None for embedded,
    downloaded and package data. dvcgen makes it a dependency of `data@<name>` (DVC hashes it)."""
    spec = _spec(name, params)
    paths = params.get("paths") or {}
    if spec.source == "custom":
        value = spec.extra["path"]
    elif spec.source == "shared":
        value = f"{str(paths['shared_data']).rstrip('/')}/{spec.archives[0].file}" if paths.get("shared_data") else None
    else:
        value = str(paths[spec.path_key]) if spec.path_key and paths.get(spec.path_key) else None
    return str(Path(value).expanduser()) if value and value.startswith("~") else value


def fingerprint(path: Path) -> dict:
    """Identity of an external data folder or archive from its file list, sizes and mtimes (stat only,
    about a second for 60k files): any edit, addition or removal changes ``sha256``."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest, total = hashlib.sha256(), 0
    for f in files:
        st = f.stat()
        total += st.st_size
        rel = f.name if f == path else f.relative_to(path).as_posix()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(path), "files": len(files), "bytes": total, "sha256": digest.hexdigest()}


def _read_record(folder: Path) -> dict:
    p = folder / SOURCE_RECORD
    return json.loads(p.read_text()) if p.is_file() else {}


def _layout_root(folder: Path, marker: str = "train") -> Path:
    """The folder holding the category folders: ``folder`` itself or its single sub-folder."""
    kids = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any((k / marker).is_dir() for k in kids):
        return folder
    if len(kids) == 1:
        return _layout_root(kids[0], marker)
    raise DataError(f"{folder}: no <category>/{marker}/ folders found; expected an MVTec-layout dataset root")


# ------------------------------------------------------------------ locating / preparing
def _shared_archive(spec: DatasetSpec, params: dict) -> Path:
    shared = _paths(params).get("shared_data")
    arc = spec.archives[0]
    if not shared:
        raise DataError(f"{spec.name}: params.yaml paths.shared_data is not set; expected the folder holding {arc.file}")
    path = resolve_path(shared) / arc.file
    if not path.is_file():
        raise DataError(f"{spec.name}: {path} not found; expected the offline archive {arc.file} "
                        "(set paths.shared_data to the folder holding it)")
    return path


def _shared_pin(path: Path, pinned: str | None) -> str | None:
    """The pin in code, cross-checked against the SHA256SUMS file next to the archive when there is one."""
    sums = path.parent / SHARED_SUMS
    if sums.is_file():
        for line in sums.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("*") == path.name and pinned and parts[0] != pinned:
                raise ChecksumError(f"{sums}: lists {parts[0]} for {path.name} but adrepro pins {pinned}")
    return pinned


def _extract_verified(archive: Path, dest: Path, pin: str | None, url: str | None) -> dict:
    """Verify ``archive`` against ``pin`` (or record its hash) and extract it atomically into ``dest``."""
    if (dest / COMPLETE_MARKER).is_file():
        return _read_record(dest)
    actual = sha256_file(archive)
    if pin and actual != pin.lower():
        raise ChecksumError(f"{archive}: SHA-256 mismatch: expected {pin.lower()}, got {actual} "
                            "(truncated or tampered archive; nothing extracted)")
    if not pin:
        print(f"[prepare] {archive.name}: no pin known; computed sha256 {actual} (record it)", file=sys.stderr)
    record = {"archive": str(archive), "file": archive.name, "sha256": actual, "pinned": bool(pin), "url": url}
    try:
        extract(archive, dest, record=record)
    except (RuntimeError, OSError) as exc:
        raise DataError(f"{archive}: extraction failed ({exc}); nothing marked complete at {dest}") from exc
    return record


def _fetch(spec: DatasetSpec, params: dict, dest: Path) -> dict:
    """Download (resumable), verify and extract the official archives of ``spec`` into ``dest``."""
    archives = _archives(spec, params)
    if not _opts(params).get("allow_download", True):
        raise DataError(f"{spec.name}: not found at {dest} and datasets.allow_download is false; set "
                        f"paths.{spec.path_key} to a local copy")
    dl = _data_root(params) / "downloads"
    records = []
    for a in archives:
        if not a.url:
            raise DataError(f"{spec.name}: no download URL for {a.file}; set paths.{spec.path_key}")
        try:
            path = download(a.url, dl / a.file, a.sha256)
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
            raise DataError(f"{spec.name} not found at {dest}; downloading {a.url} failed ({exc}). Set "
                            f"paths.{spec.path_key} in params.yaml to a local copy (folder or archive) or run "
                            "with network") from exc
        if path.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".zip")):
            records.append(_extract_verified(path, dest, a.sha256, a.url))
        else:
            records.append({"file": a.file, "url": a.url, "sha256": sha256_file(path), "pinned": bool(a.sha256)})
    if not (dest / COMPLETE_MARKER).is_file():  # plain files (Fashion-MNIST): copy into dest atomically
        def build(tmp: Path) -> None:
            for a in archives:
                shutil.copy2(dl / a.file, tmp / a.file)
            (tmp / SOURCE_RECORD).write_text(json.dumps(records, indent=1))
        atomic_build(dest, build, spec.name + "\n")
    return {"archives": records}


def _root(spec: DatasetSpec, params: dict, allow_network: bool) -> tuple[Path, dict]:
    """Make ``spec``'s data available and return (data folder, source info). Network only if allowed."""
    data_root = _data_root(params)
    if spec.source == "custom":
        path = resolve_path(spec.extra["path"])
        require_dir(path, f"the folder of params.yaml datasets.custom.{spec.name}.path ({spec.kind} layout)")
        return path, {"source": f"custom:{path}"}
    if spec.source == "embedded":
        if spec.name in ("synth_loco", "synth_mvtec"):
            seed = int(_opts(params).get("synth_seed", 0))
            dest = synth.generate(spec.name, data_root / spec.name, seed=seed)
            return dest, {"source": f"embedded:{spec.name} (generator v{synth.GENERATOR_VERSION}, seed {seed})"}
        return data_root, {"source": f"embedded:{spec.name} (scikit-learn)"}
    if spec.source == "shared":
        dest = data_root / spec.name
        if not (dest / COMPLETE_MARKER).is_file():
            arc = _shared_archive(spec, params)
            _extract_verified(arc, dest, _shared_pin(arc, spec.archives[0].sha256), None)
        rec = _read_record(dest)
        return require_dir(dest / spec.subdir, f"{spec.subdir}/ inside {dest}"), {
            "source": f"shared:{rec.get('archive', spec.archives[0].file)}", "sha256": rec.get("sha256")}
    if spec.source == "package":  # ELPV
        local = _local_override(spec, params)
        if local:
            return require_dir(local, "an ELPV folder with labels.csv and images/"), {"source": f"local:{local}"}
        try:
            import elpv_dataset
        except ImportError as exc:
            raise DataError("ELPV: package 'elpv-dataset' not installed; expected `pip install elpv-dataset` "
                            "(or set paths.elpv to a folder with labels.csv and images/)") from exc
        folder = Path(elpv_dataset.__file__).parent / "data"
        return require_dir(folder, "elpv-dataset's data/ folder"), {
            "source": f"package:elpv-dataset {getattr(elpv_dataset, '__version__', '')}".strip(),
            "sha256": {"labels.csv": sha256_file(folder / "labels.csv")} if (folder / "labels.csv").is_file() else None}
    # official (and Debian Fashion-MNIST): a local copy if configured, else data_root, else download
    local = _local_override(spec, params)
    if local is not None and local.is_dir():
        return local, {"source": f"local:{local}"}
    dest = data_root / spec.name
    if local is not None and local.is_file():
        rec = _extract_verified(local, dest, spec.archives[0].sha256 if spec.archives[0].file == local.name else None,
                                None)
        return dest, {"source": f"local-archive:{local}", "sha256": rec.get("sha256")}
    if (dest / COMPLETE_MARKER).is_file():
        return dest, {"source": f"official:{spec.archives[0].url}", "archives": _read_record(dest)}
    if not allow_network:
        where = f"{local} (paths.{spec.path_key}) or {dest}" if local else str(dest)
        raise DataError(f"{spec.name} not found at {where}; run `prepare('{spec.name}', ...)` with network, or set "
                        f"paths.{spec.path_key} in params.yaml to a local copy")
    return dest, {"source": f"official:{spec.archives[0].url}", **_fetch(spec, params, dest)}


def _data_folder(spec: DatasetSpec, root: Path) -> Path:
    """Where the layout starts inside a prepared root."""
    if spec.kind.startswith("mvtec"):
        return _layout_root(root)
    if spec.subdir and (root / spec.subdir).is_dir():
        return root / spec.subdir
    return root


# ------------------------------------------------------------------ public API
def _records(spec: DatasetSpec, folder: Path, category: str, seed: int, params: dict,
             val_fraction: float | None = None) -> tuple[SplitRecords, Any]:
    """(split records, array source or None) for one category of a prepared dataset."""
    if spec.kind == "mvtec_ad":
        return mvtec.load_mvtec_ad(folder, category, seed, _val_fraction(params, "mvtec_ad", val_fraction)), None
    if spec.kind in ("mvtec_loco", "mvtec_loco_partial"):
        proto = "partial" if spec.kind == "mvtec_loco_partial" else "official"
        return mvtec.load_mvtec_loco(folder, category, proto), None
    if spec.kind == "elpv":
        vf = _val_fraction(params, "elpv", val_fraction)
        return oneclass.elpv_records(folder / "labels.csv", category, seed, vf), None
    reader = spec.extra["reader"]
    display = None
    if reader == "digits":
        data = oneclass.read_digits()
    elif reader == "digits_superclass":
        data = oneclass.group_labels(oneclass.read_digits(), oneclass.DIGITS_SUPERCLASSES)
    elif reader == "cifar10":
        data = oneclass.read_cifar10(folder)
    elif reader == "cifar100":
        data = oneclass.read_cifar100_coarse(folder)
        display = data.names
        data = oneclass.ClassData(data.train, data.train_labels, data.test, data.test_labels, spec.categories)
    elif reader == "fashion_mnist":
        data = oneclass.read_fashion_mnist(folder)
    else:
        data = oneclass.read_image_tree(folder, spec.categories)
    names = data.names
    vf = _val_fraction(params, "oneclass", val_fraction)
    recs = oneclass.one_class(data, category, names, seed, vf, display)
    recs.info["protocol"] = "oneclass"
    return recs, data


def prepare(name: str, params: dict, categories: list[str] | None = None) -> dict:
    """Make dataset ``name`` available on disk (generate, extract, or download + verify) and check that
    ``categories`` exist. Returns a JSON-able info dict; raises DataError naming path and expectation."""
    spec = _spec(name, params)
    root, src = _root(spec, params, allow_network=True)
    folder = _data_folder(spec, root)
    available = list(spec.categories) if spec.categories else mvtec.categories(folder)
    if spec.kind.startswith("mvtec") and spec.categories:
        available = [c for c in available if c in mvtec.categories(folder)]
    if name == "fashion_mnist" and src["source"].startswith("local:"):  # downloads are pinned per .gz instead
        src["content_sha256"] = verify_fashion_content(folder)
    missing = [c for c in (categories or []) if c not in available]
    if missing:
        raise DataError(f"{folder}: categories {missing} of dataset '{name}' not found; available: {available}")
    info = {"dataset": name, "root": str(folder), "protocol": spec.protocol, "categories": available,
            "description": spec.description, **src}
    ext = external_input(name, params)
    if ext:  # the stage output changes with the external data, so every stage it feeds reruns
        info["input_fingerprint"] = fingerprint(resolve_path(ext))
    write_json(prepared_dir(name, params) / PREPARED_RECORD, info)  # the DVC output data/<name>/ always exists
    return info


def _val_source(spec: DatasetSpec, recs: SplitRecords, params: dict, val_fraction: float | None) -> str | None:
    """Where the val images come from, exactly (e.g. EfficientAD's map quantiles): None without a val split."""
    if not recs.val:
        return None
    n = len(recs.val)
    if spec.kind == "mvtec_loco":
        return f"validation/good ({n} images)"
    if spec.kind == "mvtec_loco_partial":
        return f"validation/good ({n} of {recs.info['validation_good_total']} images; the others are test normals)"
    kind = spec.kind if spec.kind in ("mvtec_ad", "elpv") else "oneclass"
    where = "train/good" if spec.kind == "mvtec_ad" else "the normal training images"
    return f"hold-out of {where} ({_val_fraction(params, kind, val_fraction):.0%}, {n} images)"


def prepared_dir(name: str, params: dict) -> Path:
    """``<paths.data_root>/<name>``: everything ``prepare`` makes for ``name`` lives here (DVC output)."""
    return _data_root(params) / _spec(name, params).name


def load_splits(name: str, category: str, image_size: int, seed: int, params: dict,
                val_fraction: float | None = None) -> Splits:
    """Train (normal only), val (normal, for map normalisation; None where the protocol has none) and
    test (labels, masks where they exist, meta.anomaly_type) of one category. Never downloads: data
    that is embedded or in ``paths.shared_data`` is made available on the fly, official data must have
    been ``prepare``d. ``val_fraction`` (a method's cfg key) replaces ``datasets.val_fraction.<kind>``."""
    spec = _spec(name, params)
    root, src = _root(spec, params, allow_network=False)
    folder = _data_folder(spec, root)
    recs, data = _records(spec, folder, category, seed, params, val_fraction)

    def ds(records):
        if records is None:
            return None
        if data is None or isinstance(data.train, list):
            return FolderDataset(records, image_size)
        arr = data.train if records[0].meta["split"] != "test" else data.test
        return ArrayDataset(arr, records, image_size)

    info = {"dataset": name, "category": category, "protocol": recs.info.pop("protocol", spec.protocol),
            "official": bool(recs.info.pop("official", True)), "root": str(folder), "seed": seed,
            "image_size": image_size, "counts": recs.counts(), "notes": recs.info.pop("notes", ""), **src,
            **recs.info}
    if spec.source == "embedded":
        info["official"] = False
    if name == "cifar10_jpeg":
        info["official"] = False
        info["notes"] += "; JPEG q75 re-encoding of CIFAR-10 (pixels differ slightly from the official pickles)"
    info["val_source"] = _val_source(spec, recs, params, val_fraction)
    why = non_official_reason(spec, category, recs, info)
    info["official"] = why is None
    if why:
        info["non_official_reason"] = why
    return Splits(ds(recs.train), ds(recs.val), ds(recs.test), info)
