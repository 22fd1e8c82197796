"""Hash-pinned, resumable downloads and all-or-nothing extraction (datasets and teacher weights)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

CHUNK = 1 << 20
COMPLETE_MARKER = ".adrepro-complete"
SOURCE_RECORD = ".adrepro-source.json"  # what an extraction came from (archive, sha256, url), written before the marker


class ChecksumError(RuntimeError):
    """A file's SHA-256 differs from its pin; the message names the file and both hashes."""


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path | str, sha256: str | None) -> str:
    """Return the file's SHA-256; raise ChecksumError if a pin is given and differs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    actual = sha256_file(path)
    if sha256 and actual.lower() != sha256.lower():
        raise ChecksumError(f"{path}: SHA-256 mismatch: expected {sha256.lower()}, got {actual} "
                            "(truncated or tampered file; delete it and retry)")
    return actual


def download(url: str, dest: Path | str, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (resuming a ``.part`` file with an HTTP Range request) and verify it.

    The final name appears only after verification succeeded, so an interrupted or corrupt download
    never looks complete. Without a pin, the computed hash is printed so the caller can record it.
    """
    dest = Path(dest)
    if dest.is_file():
        verify(dest, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:  # 416 after a Range request: the .part already holds the whole file
            raise
        total = have
    else:
        with resp:
            total = _receive(resp, part, have, dest.name)
    if total is not None and part.stat().st_size != total:
        raise ChecksumError(f"{part}: truncated download: {part.stat().st_size} of {total} bytes")
    try:
        actual = verify(part, sha256)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    if not sha256:
        print(f"[download] {dest.name}: no pin known; computed sha256 {actual} (record it)", file=sys.stderr)
    os.replace(part, dest)
    return dest


def _receive(resp, part: Path, have: int, desc: str) -> int | None:
    """Append (206) or write (200) the response body to ``part``; return the expected total size."""
    if have and resp.status != 206:  # server ignored the range: start over
        have = 0
    total = resp.headers.get("Content-Length")
    total = int(total) + have if total is not None else None
    with open(part, "ab" if have else "wb") as f, tqdm(
        total=total, initial=have, unit="B", unit_scale=True, desc=desc, file=sys.stderr, mininterval=1.0
    ) as bar:
        for chunk in iter(lambda: resp.read(CHUNK), b""):
            f.write(chunk)
            bar.update(len(chunk))
    return total


def extract(archive: Path | str, dest: Path | str, record: dict | None = None) -> Path:
    """Extract a .tar/.tar.gz/.tgz/.tar.xz/.zip into ``dest`` atomically (temp dir + rename + marker file).

    A truncated or corrupt archive raises and leaves ``dest`` untouched. ``record`` (JSON-able, e.g. the
    archive's URL and SHA-256) is written to ``dest/SOURCE_RECORD`` before the marker."""
    archive, dest = Path(archive), Path(dest)
    if (dest / COMPLETE_MARKER).is_file():
        return dest

    def build(tmp: Path) -> None:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad:
                    raise RuntimeError(f"{archive}: corrupt member {bad}")
                zf.extractall(tmp)
        else:
            try:
                with tarfile.open(archive) as tf:
                    tf.extractall(tmp, filter="data")
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise RuntimeError(f"{archive}: truncated or corrupt archive ({exc})") from exc
        if record is not None:
            (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))

    return atomic_build(dest, build, archive.name + "\n")


def atomic_build(dest: Path, build: Callable[[Path], None], stamp: str) -> Path:
    """Run ``build(tmp)`` in a temp dir next to ``dest``, add the complete-marker (content ``stamp``), then
    rename to ``dest``. An existing ``dest`` with the same stamp is reused; a failure leaves no ``dest`` that
    looks complete. Raises NotADirectoryError when ``dest`` is a file."""
    dest = Path(dest)
    marker = dest / COMPLETE_MARKER
    if marker.is_file() and marker.read_text() == stamp:
        return dest
    if dest.is_file():
        raise NotADirectoryError(f"{dest}: is a file; expected a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text(stamp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
