"""Verified, resumed and rejected downloads through ``prepare`` against a loopback server (127.0.0.1)
serving small archives in the official layouts. Never touches the internet."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dataset_fixtures import Server, cifar10_archive, idx_gz, mvtec_ad_tree, params_for, sha256, tar_bytes  # noqa: E402

from adrepro.datasets.base import DataError  # noqa: E402
from adrepro.datasets.registry import load_splits, prepare  # noqa: E402
from adrepro.download import COMPLETE_MARKER, ChecksumError  # noqa: E402

CIFAR = "cifar-10-python.tar.gz"


@pytest.fixture
def server():
    s = Server()
    with s.running():
        yield s


@pytest.fixture(scope="module")
def cifar_bytes(tmp_path_factory) -> bytes:
    return cifar10_archive(tmp_path_factory.mktemp("cifar"))


def cifar_params(root: Path, server: Server, pin: str | None) -> dict:
    p = params_for(root)
    p["datasets"] = {"sources": {"cifar10": {"url": server.url + CIFAR, "sha256": pin}}}
    return p


def test_verified_download_then_load(tmp_path, server, cifar_bytes):
    server.files[CIFAR] = cifar_bytes
    p = cifar_params(tmp_path, server, sha256(cifar_bytes))
    info = prepare("cifar10", p, ["cat"])
    assert info["archives"][0]["sha256"] == sha256(cifar_bytes) and info["archives"][0]["pinned"]
    assert (tmp_path / "cifar10" / COMPLETE_MARKER).is_file()
    s = load_splits("cifar10", "cat", 32, 0, p)
    assert len(s.train) == 15 and len(s.test) == 20  # 3 per class x 5 batches; 2 per class in test
    assert s.info["counts"]["test"]["good"] == 2
    server.requests.clear()
    prepare("cifar10", p, ["cat"])  # already there: no network
    assert server.requests == []


def test_resumed_download(tmp_path, server, cifar_bytes):
    server.files[CIFAR] = cifar_bytes
    half = len(cifar_bytes) // 2
    part = tmp_path / "downloads" / (CIFAR + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(cifar_bytes[:half])
    prepare("cifar10", cifar_params(tmp_path, server, sha256(cifar_bytes)), ["cat"])
    assert server.requests == [(CIFAR, f"bytes={half}-")]
    assert (tmp_path / "downloads" / CIFAR).read_bytes() == cifar_bytes and not part.exists()


def test_tampered_archive_rejected(tmp_path, server, cifar_bytes):
    bad = bytearray(cifar_bytes)
    bad[len(bad) // 3] ^= 0xFF
    server.files[CIFAR] = bytes(bad)
    good, got = sha256(cifar_bytes), sha256(bytes(bad))
    with pytest.raises(ChecksumError) as exc:
        prepare("cifar10", cifar_params(tmp_path, server, good), ["cat"])
    msg = str(exc.value)
    assert CIFAR in msg and good in msg and got in msg
    assert not (tmp_path / "downloads" / CIFAR).exists() and not (tmp_path / "cifar10").exists()


def test_truncated_transfer_not_complete(tmp_path, server, cifar_bytes):
    server.files[CIFAR] = cifar_bytes
    server.truncate.add(CIFAR)
    with pytest.raises((DataError, ChecksumError), match="cifar"):
        prepare("cifar10", cifar_params(tmp_path, server, sha256(cifar_bytes)), ["cat"])
    assert not (tmp_path / "downloads" / CIFAR).exists()
    assert not (tmp_path / "cifar10" / COMPLETE_MARKER).exists()
    server.truncate.clear()  # a retry resumes from the .part and completes
    prepare("cifar10", cifar_params(tmp_path, server, sha256(cifar_bytes)), ["cat"])
    assert (tmp_path / "cifar10" / COMPLETE_MARKER).is_file()


def test_unpinned_download_records_hash(tmp_path, server, cifar_bytes, capsys):
    server.files[CIFAR] = cifar_bytes
    info = prepare("cifar10", cifar_params(tmp_path, server, None), ["cat"])
    assert info["archives"][0]["sha256"] == sha256(cifar_bytes) and not info["archives"][0]["pinned"]
    assert sha256(cifar_bytes) in capsys.readouterr().err


def test_mvtec_ad_tar_xz_official_layout(tmp_path, server):
    src = mvtec_ad_tree(tmp_path / "src", "bottle")
    data = tar_bytes(src / "bottle", "bottle", mode="w:xz")
    server.files["mvtec_anomaly_detection.tar.xz"] = data
    p = params_for(tmp_path / "d")
    p["datasets"] = {"sources": {"mvtec_ad": {"url": server.url + "mvtec_anomaly_detection.tar.xz",
                                              "sha256": sha256(data)}}}
    info = prepare("mvtec_ad", p, ["bottle"])
    assert info["categories"] == ["bottle"]
    s = load_splits("mvtec_ad", "bottle", 16, 0, p)
    assert s.info["counts"]["test_masks"] == 5


def test_fashion_mnist_download_four_files(tmp_path, server):
    files = {}
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        files[f"{split}-images-idx3-ubyte.gz"] = idx_gz(rng.integers(0, 256, (n, 28, 28)))
        files[f"{split}-labels-idx1-ubyte.gz"] = idx_gz(np.arange(n) % 10)
    server.files.update(files)
    p = params_for(tmp_path / "d", fashion_mnist=None)  # not configured: download (a missing path is an error)
    p["datasets"] = {"sources": {"fashion_mnist": [{"file": f, "url": server.url + f, "sha256": sha256(b)}
                                                   for f, b in files.items()]}}
    prepare("fashion_mnist", p, ["Bag"])
    s = load_splits("fashion_mnist", "Bag", 28, 0, p)
    assert len(s.train) == 2 and len(s.test) == 10
