"""CIFAR-10 from generated binary batch files (and a generated archive served over local HTTP),
and the image-folder dataset from generated PNGs."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedloom.data.cifar import MEAN, STD, TEST_FILE, TRAIN_FILES, load_cifar10, read_cifar_bin
from fedloom.data.imagefolder import load_image_folder
from fedloom.errors import DatasetError
from fedloom.registry import DATASETS


def cifar_records(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """``n`` random CIFAR-10 records: (images (n, 3, 32, 32), labels, the file's bytes)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    raw = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes()
    return images, labels, raw


def write_cifar(folder: Path, n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate((*TRAIN_FILES, TEST_FILE)):
        images, labels, raw = cifar_records(n + i, seed=i)
        (folder / name).write_bytes(raw)
        out[name] = (images, labels)
    return out


def test_a_binary_batch_is_records_of_a_label_byte_and_planar_pixels(tmp_path: Path) -> None:
    images, labels, raw = cifar_records(4, seed=0)
    (tmp_path / "b.bin").write_bytes(raw)
    got_images, got_labels = read_cifar_bin(tmp_path / "b.bin")
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    # the first pixel bytes after the label are the red plane's first row
    assert got_images[0, 0, 0, :4].tolist() == list(raw[1:5])


def test_load_cifar10_reads_every_file_and_normalises_per_channel(tmp_path: Path) -> None:
    files = write_cifar(tmp_path / "cifar-10-batches-bin")
    ds = load_cifar10(tmp_path)  # the archive's own sub-folder is found
    assert ds.train_x.shape == (3 + 4 + 5 + 6 + 7, 3, 32, 32) and ds.test_x.shape == (8, 3, 32, 32)
    assert ds.train_x.dtype == torch.float32 and ds.num_classes == 10
    want_y = np.concatenate([files[n][1] for n in TRAIN_FILES]).astype(np.int64)
    assert torch.equal(ds.train_y, torch.from_numpy(want_y))
    img = files[TEST_FILE][0][2].astype(np.float32) / 255.0
    mean, std = (np.array(v, np.float32)[:, None, None] for v in (MEAN, STD))
    want = (img - mean) / std
    assert torch.allclose(ds.test_x[2], torch.from_numpy(want), atol=1e-6)
    assert DATASETS.get("cifar") is load_cifar10 and DATASETS.get("cifar10") is load_cifar10


def test_bad_cifar_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="download=True"):
        load_cifar10(tmp_path)
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(b"\x01" * 3000)
    with pytest.raises(DatasetError, match=r"data_batch_3\.bin: 3000 bytes is not a whole"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_3.bin").write_bytes(b"\x0b" + bytes(3072))
    with pytest.raises(DatasetError, match="label 11 outside 0-9"):
        load_cifar10(tmp_path)


def cifar_archive(files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {**files, **(extra or {})}.items():
            info = tarfile.TarInfo(name if "/" in name else f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def www(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def test_download_fetches_the_binary_archive_checks_its_md5_and_reads_it(www, tmp_path) -> None:
    root, base, requests = www
    raws = {n: cifar_records(2, seed=i)[2] for i, n in enumerate((*TRAIN_FILES, TEST_FILE))}
    # a hostile member name beside the real ones is never written anywhere
    archive = cifar_archive(raws, extra={"../../evil.bin": b"x"})
    (root / "good").mkdir()
    (root / "good" / "cifar-10-binary.tar.gz").write_bytes(archive)
    md5 = hashlib.md5(archive).hexdigest()
    data = tmp_path / "data"
    ds = load_cifar10(data, download=True, mirrors=[f"{base}/missing/", f"{base}/good/"],
                      archive_md5=md5)  # fmt: skip
    assert "/missing/cifar-10-binary.tar.gz" in requests and len(ds) == 10 and len(ds.test_y) == 2
    assert (data / "cifar-10-binary.tar.gz").is_file()
    assert sorted(p.name for p in (data / "cifar-10-batches-bin").iterdir()) == sorted(raws)
    assert not (tmp_path / "evil.bin").exists() and not (data / "evil.bin").exists()
    again = load_cifar10(data)  # from the extracted files, no download
    assert torch.equal(again.train_x, ds.train_x) and len(requests) == 2


def test_download_with_a_wrong_md5_keeps_nothing(www, tmp_path) -> None:
    root, base, _ = www
    (root / "cifar-10-binary.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DatasetError, match="md5 mismatch"):
        load_cifar10(tmp_path / "d", download=True, mirrors=[base])  # the real archive's md5
    assert list((tmp_path / "d").iterdir()) == []


def test_an_archive_without_the_batches_is_named(www, tmp_path) -> None:
    root, base, _ = www
    archive = cifar_archive({"data_batch_1.bin": cifar_records(1, 0)[2]})
    (root / "cifar-10-binary.tar.gz").write_bytes(archive)
    md5 = hashlib.md5(archive).hexdigest()
    with pytest.raises(DatasetError, match=r"data_batch_2\.bin"):
        load_cifar10(tmp_path, download=True, mirrors=[base], archive_md5=md5)


# ---------------------------------------------------------------- image folder


def write_images(folder: Path, counts: dict[str, int], size: int = 12) -> None:
    for k, (name, n) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = (40 * k + i, 200 - 40 * k, 7 * i)
            Image.new("RGB", (size + i, size), colour).save(folder / name / f"{name}.{i}.png")


def test_image_folder_reads_train_and_test_class_folders(tmp_path: Path) -> None:
    write_images(tmp_path / "train", {"cat": 3, "dog": 4})
    write_images(tmp_path / "test", {"cat": 1, "dog": 2})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path, size=8)
    assert ds.train_x.shape == (7, 3, 8, 8) and ds.test_x.shape == (3, 3, 8, 8)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1, 1] and ds.test_y.tolist() == [0, 1, 1]
    assert ds.num_classes == 2 and ds.meta["classes"] == ["cat", "dog"]
    # a flat colour image is one value per channel, scaled to [-1, 1]
    first = ds.train_x[0]
    assert torch.allclose(first[0], torch.full((8, 8), 0 / 127.5 - 1), atol=1e-6)
    assert torch.allclose(first[1], torch.full((8, 8), 200 / 127.5 - 1), atol=1e-6)
    gray = load_image_folder(tmp_path, size=5, grayscale=True)
    assert gray.train_x.shape == (7, 1, 5, 5)
    assert DATASETS.get("dog-and-cat") is load_image_folder


def test_image_folder_without_a_split_holds_out_a_seeded_share_per_class(tmp_path) -> None:
    write_images(tmp_path, {"cat": 5, "dog": 10})
    a = load_image_folder(tmp_path, size=4, test_fraction=0.2, seed=3)
    b = load_image_folder(tmp_path, size=4, test_fraction=0.2, seed=3)
    assert a.test_y.tolist() == [0, 1, 1] and len(a) == 12
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    c = load_image_folder(tmp_path, size=4, test_fraction=0.2, seed=4)
    assert not torch.equal(c.test_x, a.test_x)  # another seed, another split


def test_image_folder_errors_name_the_folder_or_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"data\.root"):
        load_image_folder(None)
    write_images(tmp_path, {"cat": 2})
    with pytest.raises(DatasetError, match="at least 2 class folders"):
        load_image_folder(tmp_path)
    write_images(tmp_path, {"dog": 2})
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"broken\.png: not a readable image"):
        load_image_folder(tmp_path)
