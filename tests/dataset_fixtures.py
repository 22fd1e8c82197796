"""Small datasets in the official layouts and a loopback HTTP server (127.0.0.1 only) for the dataset tests."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def params_for(data_root: Path, **paths) -> dict:
    return {"paths": {"data_root": str(data_root), "shared_data": None, **{k: str(v) if v else v for k, v in paths.items()}},
            "datasets": {}}


def png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _img(rng, size, grey: bool) -> np.ndarray:
    shape = (size[1], size[0]) if grey else (size[1], size[0], 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def mvtec_ad_tree(root: Path, category: str = "widget", grey: bool = False, size=(40, 32),
                  counts=None) -> Path:
    """<root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>/NNN_mask.png}."""
    counts = counts or {"train": 10, "good": 3, "dent": 2, "scratch_mark": 3}
    rng = np.random.default_rng(0)
    c = root / category
    for i in range(counts["train"]):
        png(c / "train/good" / f"{i:03d}.png", _img(rng, size, grey))
    for t, n in counts.items():
        if t == "train":
            continue
        for i in range(n):
            png(c / "test" / t / f"{i:03d}.png", _img(rng, size, grey))
            if t != "good":
                m = np.zeros((size[1], size[0]), np.uint8)
                m[2:6, 3:9] = 255
                png(c / "ground_truth" / t / f"{i:03d}_mask.png", m)
    return root


def loco_tree(root: Path, category: str = "box", size=(48, 32), with_good: bool = True,
              merged_masks: bool = False) -> Path:
    """LOCO layout; anomalous images have mask folders NNN/000.png, 001.png (or merged NNN.png)."""
    rng = np.random.default_rng(1)
    c = root / category
    for folder, n in (("train/good", 8), ("validation/good", 6)):
        for i in range(n):
            png(c / folder / f"{i:03d}.png", _img(rng, size, False))
    types = {"logical_anomalies": 3, "structural_anomalies": 2}
    if with_good:
        types = {"good": 4, **types}
    for t, n in types.items():
        for i in range(n):
            png(c / "test" / t / f"{i:03d}.png", _img(rng, size, False))
            if t == "good":
                continue
            m0 = np.zeros((size[1], size[0]), np.uint8)
            m1 = np.zeros_like(m0)
            m0[0:4, 0:4] = 255
            m1[10:12, 20:30] = 254
            if merged_masks:
                png(c / "ground_truth" / t / f"{i:03d}.png", np.maximum(m0, m1))
            else:
                png(c / "ground_truth" / t / f"{i:03d}" / "000.png", m0)
                png(c / "ground_truth" / t / f"{i:03d}" / "001.png", m1)
    return root


def tar_bytes(folder: Path, arcname: str, mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        tf.add(folder, arcname=arcname)
    return buf.getvalue()


def cifar10_archive(tmp: Path, per_class_train: int = 3, per_class_test: int = 2) -> bytes:
    """cifar-10-python.tar.gz in the official layout (pickled dicts with byte keys)."""
    rng = np.random.default_rng(2)
    d = tmp / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]

    def batch(n_per_class: int, label: bytes) -> dict:
        labels = [c for c in range(10) for _ in range(n_per_class)]
        return {b"batch_label": label, b"labels": labels,
                b"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
                b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}

    for i in range(1, 6):
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_class_train, b"training batch")))
    (d / "test_batch").write_bytes(pickle.dumps(batch(per_class_test, b"testing batch")))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_cases_per_batch": 10}))
    return tar_bytes(d, "cifar-10-batches-py")


def idx_gz(arr: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 with HTTP Range support; ``truncate`` names are cut
    to half their body while announcing the full length. ``requests`` logs (path, Range header)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                outer.requests.append((name, rng))
                data = outer.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in outer.truncate:
                    body = body[: len(body) // 2]
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    @contextmanager
    def running(self):
        t = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
