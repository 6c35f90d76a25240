"""Property tests for the partitioners and the split report."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.data.partition import (
    IID,
    Dirichlet,
    Natural,
    Partitioner,
    PowerLaw,
    Shards,
    format_report,
    partition_report,
    plot_partition,
)
from fedloom.registry import PARTITIONERS

MNIST_LIKE = np.repeat(np.arange(10), 6000)  # 60000 labels, 10 classes of 6000


def _labels(n: int = 1000, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Shuffled labels with uneven class sizes, so priors and ties are non-trivial."""
    rng = np.random.default_rng(seed)
    prior = np.linspace(1, 3, num_classes)
    return rng.choice(num_classes, size=n, p=prior / prior.sum())


def _natural(n: int, k: int, seed: int = 0) -> Natural:
    perm = np.random.default_rng(seed).permutation(n)
    return Natural(np.array_split(perm, k))


FACTORIES = {
    "iid": lambda k: IID(k),
    "shards": lambda k: Shards(k, shards_per_client=2),
    "dirichlet": lambda k: Dirichlet(k, alpha=0.5),
    "powerlaw": lambda k: PowerLaw(k, exponent=1.5, min_samples=3),
}


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    flat = np.concatenate(parts)
    assert len(flat) == n, "no duplicates: total size equals N"
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1 and len(p) > 0
        assert (np.diff(p) > 0).all(), "parts come back sorted and unique"


# --- properties shared by every partitioner -------------------------------------------


@pytest.mark.parametrize("name", [*FACTORIES, "natural"])
@pytest.mark.parametrize("n,k", [(1000, 10), (997, 7), (50, 50)])
def test_exact_cover_and_num_clients(name: str, n: int, k: int) -> None:
    labels = _labels(n)
    part = _natural(n, k) if name == "natural" else FACTORIES[name](k)
    if k == n:  # one sample per client: the extreme that must still work
        part = {"shards": Shards(k, 1), "powerlaw": PowerLaw(k, min_samples=1)}.get(name, part)
    parts = part(labels, 0)
    assert len(parts) == k == part.num_clients
    _assert_exact_cover(parts, n)


@pytest.mark.parametrize("name", [*FACTORIES, "natural"])
def test_determinism(name: str) -> None:
    labels = _labels(2000)
    part = _natural(2000, 20) if name == "natural" else FACTORIES[name](20)
    a, b = part(labels, 123), part(labels, np.random.default_rng(123))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = part(labels, 124)
    differs = any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert differs == (name != "natural"), "the seed matters except for a fixed split"


@pytest.mark.parametrize("name", FACTORIES)
def test_too_many_clients(name: str) -> None:
    with pytest.raises(ValueError, match="clients"):
        FACTORIES[name](11)(_labels(10), 0)


@pytest.mark.parametrize(
    "make, param",
    [
        (lambda: IID(0), "num_clients"),
        (lambda: IID(2.5), "num_clients"),
        (lambda: Shards(0), "num_clients"),
        (lambda: Shards(10, shards_per_client=0), "shards_per_client"),
        (lambda: Shards(10, shards_per_client=1.5), "shards_per_client"),
        (lambda: Dirichlet(10, alpha=0), "alpha"),
        (lambda: Dirichlet(10, alpha=-1.0), "alpha"),
        (lambda: Dirichlet(10, alpha=float("nan")), "alpha"),
        (lambda: Dirichlet(10, alpha=float("inf")), "alpha"),
        (lambda: PowerLaw(10, exponent=0), "exponent"),
        (lambda: PowerLaw(10, min_samples=0), "min_samples"),
        (lambda: Natural([]), "parts"),
        (lambda: Natural([np.array([0, 1]), np.array([], dtype=np.int64)]), "empty"),
        (lambda: Natural([np.array([0.0, 1.0])]), "integer"),
    ],
)
def test_parameter_validation(make, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        make()


def test_data_dependent_validation() -> None:
    with pytest.raises(ValueError, match="shards_per_client"):
        Shards(10, shards_per_client=20)(_labels(100), 0)
    with pytest.raises(ValueError, match="min_samples"):
        PowerLaw(10, min_samples=11)(_labels(100), 0)
    with pytest.raises(ValueError, match="one-dimensional"):
        IID(2)(np.zeros((4, 2)), 0)


def test_registered_by_name() -> None:
    for name, cls in [
        ("iid", IID),
        ("shards", Shards),
        ("dirichlet", Dirichlet),
        ("powerlaw", PowerLaw),
        ("natural", Natural),
    ]:
        assert PARTITIONERS.get(name) is cls and cls.name == name
        assert issubclass(cls, Partitioner)


# --- IID -------------------------------------------------------------------------------


def test_iid_near_equal_sizes() -> None:
    sizes = [len(p) for p in IID(7)(_labels(1000), 0)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1000


# --- Shards ----------------------------------------------------------------------------


def test_shards_fedavg_mnist_setup() -> None:
    labels = np.random.default_rng(1).permutation(MNIST_LIKE)
    parts = Shards(100, shards_per_client=2)(labels, 0)
    _assert_exact_cover(parts, len(labels))
    for p in parts:
        assert len(p) == 600
        values, counts = np.unique(labels[p], return_counts=True)
        # 6000 per class / 300 per shard: every shard is single-label, so each client holds
        # at most 2 labels, each a whole number of shards.
        assert len(values) <= 2 and (counts % 300 == 0).all()


def test_shards_are_contiguous_label_sorted_blocks() -> None:
    # With all-distinct labels the sort is fully determined, so each shard is a run of 50
    # consecutive label values: every client holds exactly 2 whole runs.
    n, k = 1000, 10
    labels = np.random.default_rng(2).permutation(n)
    parts = Shards(k, shards_per_client=2)(labels, 3)
    blocks = []
    for p in parts:
        run_ids, run_sizes = np.unique(labels[p] // 50, return_counts=True)
        assert len(run_ids) == 2 and (run_sizes == 50).all()
        blocks.extend(run_ids.tolist())
    assert sorted(blocks) == list(range(20))


def test_shards_uneven_counts_still_cover() -> None:
    labels = _labels(1003)
    parts = Shards(13, shards_per_client=3)(labels, 0)
    _assert_exact_cover(parts, 1003)
    assert max(map(len, parts)) - min(map(len, parts)) <= 3


# --- Dirichlet -------------------------------------------------------------------------


def test_dirichlet_tiny_alpha_many_clients_terminates() -> None:
    parts = Dirichlet(1000, alpha=0.01)(MNIST_LIKE, 0)
    _assert_exact_cover(parts, 60000)
    assert {len(p) for p in parts} == {60}
    report = partition_report(parts, MNIST_LIKE, 10)
    assert report["summary"]["mean_classes_per_client"] < 2


def test_dirichlet_alpha_controls_label_skew() -> None:
    labels = MNIST_LIKE
    low = partition_report(Dirichlet(100, alpha=0.01)(labels, 0), labels, 10)["summary"]
    high = partition_report(Dirichlet(100, alpha=100)(labels, 0), labels, 10)["summary"]
    assert low["mean_classes_per_client"] < 2
    assert high["mean_classes_per_client"] > 8
    assert low["mean_label_tv"] > 0.7 > 0.2 > high["mean_label_tv"]


def test_dirichlet_equal_sizes_with_remainder() -> None:
    parts = Dirichlet(7, alpha=1.0)(_labels(1000), 0)
    assert [len(p) for p in parts] == [143] * 6 + [142]


def test_dirichlet_arbitrary_label_values() -> None:
    labels = np.array([-5, 7, 7, 100] * 50)
    parts = Dirichlet(4, alpha=0.1)(labels, 0)
    _assert_exact_cover(parts, 200)


def test_dirichlet_survives_degenerate_proportions(monkeypatch: pytest.MonkeyPatch) -> None:
    # Old numpy returns NaN rows from dirichlet() at tiny alpha; the one-hot fallback
    # must still give an exact split.
    class NaNDirichlet:
        def __init__(self, rng: np.random.Generator):
            self._rng = rng

        def dirichlet(self, alpha, size):
            out = self._rng.dirichlet(alpha, size)
            out[::2] = np.nan
            return out

        def __getattr__(self, name):
            return getattr(self._rng, name)

    labels = _labels(600)
    part = Dirichlet(30, alpha=1e-3)
    parts = part.split(labels, NaNDirichlet(np.random.default_rng(0)))
    _assert_exact_cover([np.sort(p) for p in parts], 600)


# --- PowerLaw --------------------------------------------------------------------------


def test_powerlaw_sizes() -> None:
    part = PowerLaw(50, exponent=1.5, min_samples=20)
    parts = part(_labels(10000), 0)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == 10000 and sizes.min() >= 20
    assert len(set(sizes.tolist())) > 1
    assert sizes.max() > 2 * np.median(sizes), "heavy tail: the largest client dominates"


def test_powerlaw_min_samples_tight() -> None:
    parts = PowerLaw(10, min_samples=10)(_labels(100), 0)
    assert [len(p) for p in parts] == [10] * 10


# --- Natural ---------------------------------------------------------------------------


def test_natural_rejects_bad_cover() -> None:
    labels = _labels(10)
    with pytest.raises(ValueError, match="exactly once"):
        Natural([np.arange(5), np.arange(4, 9)])(labels, 0)
    with pytest.raises(ValueError, match="ids"):
        Natural([np.arange(5), np.arange(5, 9)])(labels, 0)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        Natural([np.arange(5), np.arange(6, 11)])(labels, 0)


def test_natural_accepts_tensors_and_lists() -> None:
    torch = pytest.importorskip("torch")
    part = Natural([torch.tensor([3, 0]), [1, 2], np.array([4])])
    assert part.num_clients == 3 and "Natural(num_clients=3" in repr(part)
    parts = part(_labels(5), 0)
    assert [p.tolist() for p in parts] == [[0, 3], [1, 2], [4]]


# --- report ----------------------------------------------------------------------------


def test_report_counts_and_text() -> None:
    labels = _labels(1000)
    parts = Dirichlet(30, alpha=0.3)(labels, 0)
    report = partition_report(parts, labels, 10)
    counts, sizes = report["counts"], report["sizes"]
    assert counts.shape == (30, 10) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts.sum(axis=1), sizes)
    np.testing.assert_array_equal(counts.sum(axis=0), np.bincount(labels, minlength=10))
    s = report["summary"]
    assert s["exact_cover"] and s["num_assigned"] == 1000
    assert s["min_size"] <= s["median_size"] <= s["max_size"]
    text = format_report(report, max_rows=5)
    assert "1000" in text and "total" in text and "25 more clients" in text
    total_line = next(line for line in text.splitlines() if line.strip().startswith("total"))
    for v in np.bincount(labels, minlength=10):
        assert str(v) in total_line


def test_report_iid_has_low_skew_and_many_classes_use_top_column() -> None:
    labels = _labels(5000, num_classes=40)
    report = partition_report(IID(10)(labels, 0), labels, 40)
    assert report["summary"]["mean_label_tv"] < 0.2 and report["summary"]["size_cv"] < 0.01
    text = format_report(report)
    assert "top classes" in text and "5000" in text


def test_report_flags_bad_cover_and_bad_labels() -> None:
    labels = _labels(10)
    report = partition_report([np.arange(5), np.arange(4, 9)], labels, 10)
    assert not report["summary"]["exact_cover"]
    assert "NOT an exact cover" in format_report(report)
    with pytest.raises(ValueError, match="labels"):
        partition_report([np.arange(10)], labels, 3)


def test_plot_partition_writes_png(tmp_path) -> None:
    labels = _labels(2000)
    report = partition_report(Shards(80)(labels, 0), labels, 10)
    out = plot_partition(report, tmp_path / "sub" / "split.png", max_clients=30)
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
