"""Secure aggregation's cost: a SecAgg+ round against plain FedAvg aggregation of the same updates.

For each (clients n, parameters d), n updates are aggregated twice in one process, through
the strategy API a federation uses: once by uniform FedAvg (the sum of the plaintext
updates), once by ``Staged(FedAvg, [SecureAggregation()])``, which runs the whole SecAgg+
protocol among the n clients (key agreement, Shamir shares, masking with AES-CTR, unmasking;
every party in this process, one after the other). Reported: both times, their ratio, and
the protocol's bytes per client (up and down, from the message sizes) against the plain
upload (4 d bytes). At n = 100 the distributed-DP variant (Skellam noise added by each
client before masking) is timed too. The simulation runs the n clients' work serially: the
time is the sum of all parties' compute, not a deployment's wall time (there the clients
work in parallel: ``secagg_seconds_per_client`` is the amortised share of one party).

This times the aggregation alone (no training); whole rounds with real local training, in
simulation and over loopback processes, are ``benchmarks/privacy_secagg_net.py``.

Writes ``benchmarks/results/privacy_secagg.json`` (``privacy_secagg_quick.json`` with
``--quick``); ends with ``name: value`` lines.

    .venv/bin/python benchmarks/privacy_secagg.py            # n = 100, 500 at d = 100k; 100 at 1M
    .venv/bin/python benchmarks/privacy_secagg.py --quick    # smaller d, ~20 s
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from common import print_headlines, write_results

from fedloom import FedAvg
from fedloom.privacy import Stage, Staged
from fedloom.privacy.distributed import DistributedDP
from fedloom.privacy.secagg import SecureAggregation
from fedloom.update import ClientUpdate

FULL = [(100, 100_000), (500, 100_000), (100, 1_000_000)]
QUICK = [(100, 20_000), (500, 5_000)]


def make_updates(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(d, generator=gen)
    return g, [g + 0.01 * torch.randn(d, generator=gen) for _ in range(n)]


def aggregate(stage: Stage | None, g: torch.Tensor, params: list[torch.Tensor]) -> float:
    """Seconds one round's aggregation of ``params`` takes (updates made beforehand)."""
    n = len(params)
    inner = FedAvg(clients_per_round=n, weighted=False)
    strategy = inner if stage is None else Staged(inner, [stage])
    if isinstance(strategy, Staged):
        strategy.start(0)
    strategy.configure(1, list(range(n)), np.random.default_rng(0))
    updates = [ClientUpdate(i, p.clone(), 1) for i, p in enumerate(params)]
    model = g.clone()
    started = time.perf_counter()
    strategy.aggregate(1, model, iter(updates))
    return time.perf_counter() - started


def measure(n: int, d: int, ddp: bool) -> dict[str, Any]:
    g, params = make_updates(n, d)
    plain = min(aggregate(None, g, params) for _ in range(3))  # cheap: the best of three
    stage = SecureAggregation(clipping_range=0.1)
    secure = aggregate(stage, g, params)
    rec = stage.round_record()
    row: dict[str, Any] = {
        "clients": n,
        "parameters": d,
        "plain_seconds": plain,
        "secagg_seconds": secure,
        "ratio": secure / plain,
        "secagg_seconds_per_client": secure / n,
        "num_shares": rec["secagg_num_shares"],
        "threshold": rec["secagg_threshold"],
        "bytes_up_per_client": rec["secagg_bytes_up_per_client"],
        "bytes_down_per_client": rec["secagg_bytes_down_per_client"],
        "plain_bytes_up_per_client": 4 * d,
    }
    if ddp:
        dstage = DistributedDP(1.0, clip_norm=1.0, clipping_range=0.1)
        row["ddp_seconds"] = aggregate(dstage, g, params)
        row["ddp_ratio"] = row["ddp_seconds"] / plain
    print(
        f"n={n:4d} d={d:8d}: plain {plain * 1e3:8.1f} ms, secagg {secure:7.2f} s "
        f"(x{secure / plain:.0f}), up {row['bytes_up_per_client'] / 1e6:.2f} MB/client"
        + (f", distributed DP {row['ddp_seconds']:.2f} s" if ddp else ""),
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller vectors, ~20 s")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    rows = [measure(n, d, ddp=(i == 0)) for i, (n, d) in enumerate(sizes)]
    name = "privacy_secagg_quick" if args.quick else "privacy_secagg"
    write_results(name, {"quick": args.quick, "rows": rows})
    headlines: dict[str, Any] = {}
    for r in rows:
        tag = f"n{r['clients']}_d{r['parameters']}"
        headlines[f"secagg_seconds_{tag}"] = r["secagg_seconds"]
        headlines[f"plain_seconds_{tag}"] = r["plain_seconds"]
        headlines[f"secagg_ratio_{tag}"] = r["ratio"]
        headlines[f"secagg_seconds_per_client_{tag}"] = r["secagg_seconds_per_client"]
        headlines[f"secagg_bytes_up_per_client_{tag}"] = int(r["bytes_up_per_client"])
        headlines[f"secagg_expansion_{tag}"] = r["bytes_up_per_client"] / (4 * r["parameters"])
    if "ddp_seconds" in rows[0]:
        headlines["ddp_ratio_" + f"n{rows[0]['clients']}_d{rows[0]['parameters']}"] = rows[0][
            "ddp_ratio"
        ]
    print_headlines(headlines)


if __name__ == "__main__":
    main()
