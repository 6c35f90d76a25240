"""Bring your own loop: a plain PyTorch training loop federated with ``fedloom.connect``.

One data holder of a run whose aggregator is ``fedloom server examples/own_loop.toml``::

    .venv/bin/fedloom server examples/own_loop.toml --address 127.0.0.1:50051 &
    for i in 0 1 2 3; do .venv/bin/python examples/own_loop.py --server 127.0.0.1:50051 \\
        --client-id $i & done

or the same loop against the in-process simulation, no processes::

    .venv/bin/python examples/own_loop.py --local examples/own_loop.toml

Each client takes its share of the embedded MNIST the way the config's ``partition = "iid"``
splits it (seeded from the run seed), so the run can be checked against ``fedloom run``: the
loop below does what the built-in engine does (same seeds, same order), and the final model
equals the simulation's bit for bit. A real data holder would load its own data instead.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import fedloom
from fedloom import LocalFederation
from fedloom.runtime import TLSConfig


def make_model() -> nn.Module:
    """The config's ``logreg`` model, written out: the aggregator's spec must match it."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def client_data(seed: int, num_clients: int) -> tuple[Any, list[torch.Tensor]]:
    """The embedded MNIST and each client's sample ids, split as ``partition = "iid"`` does."""
    data = fedloom.load_mnist5k()
    parts = fedloom.IID(num_clients=num_clients)(
        data.train_y.numpy(), fedloom.derive_seed(seed, "partition")
    )
    return data, [torch.as_tensor(p, dtype=torch.int64) for p in parts]


def train(
    fl: Any,
    data: Any,
    parts: list[torch.Tensor],
    *,
    lr: float = 0.05,
    batch_size: int = 20,
    epochs: int = 1,
) -> int:
    """The user's loop: the same code for ``fedloom.connect`` and a ``LocalFederation``
    (which yields every sampled client's jobs, hence the data is picked by job.client_id)."""
    model = make_model()
    jobs = 0
    for job in fl.jobs():
        idx = parts[job.client_id]
        job.load_into(model)  # the global model; a wrong architecture is a clear error
        torch.manual_seed(job.seed)  # what the engine seeds (dropout and the like)
        optimizer = fedloom.optim.SGD(model.parameters(), lr=lr)  # torch's SGD, faster start
        total, steps = 0.0, 0
        # the strategy's client part (FedProx's term, SCAFFOLD's corrections, ...) as hooks on
        # the optimizer, as the engine runs it; a no-op under FedAvg
        with job.client_part(model, optimizer):
            for _ in range(job.local_epochs(epochs)):
                order = idx[torch.randperm(len(idx), generator=job.generator)]
                x, y = data.train_x[order], data.train_y[order]
                for i in range(0, len(order), batch_size):
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x[i : i + batch_size]), y[i : i + batch_size])
                    loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch
                    optimizer.step()
                    total += loss.item()
                    steps += 1
        job.upload(model, num_samples=len(idx), metrics={"loss": total / max(steps, 1)})
        jobs += 1
    return jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="the aggregator's host:port")
    where.add_argument("--local", metavar="CONFIG", help="run the loop in-process on CONFIG")
    ap.add_argument("--client-id", type=int, default=0)
    ap.add_argument("--num-clients", type=int, default=4, help="data.num_clients of the run")
    ap.add_argument("--seed", type=int, default=0, help="the run seed (it seeds the split)")
    ap.add_argument("--token", default="")
    ap.add_argument("--task-id", default="fedloom")
    ap.add_argument("--tls-ca", help="CA certificate of the aggregator (TLS)")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--overwrite", action="store_true", help="--local: replace an earlier run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    hyper = dict(lr=args.lr, batch_size=args.batch_size, epochs=args.epochs)
    if args.local:
        fl = LocalFederation.from_config(args.local, overwrite=args.overwrite)
        data, parts = client_data(fl.seed, fl.federation.task.num_clients)
        train(fl, data, parts, **hyper)
        print(f"final metrics: {fl.result.final_metrics}")
        return 0
    data, parts = client_data(args.seed, args.num_clients)
    tls = TLSConfig(ca=args.tls_ca) if args.tls_ca else None
    with fedloom.connect(
        args.server,
        client_id=args.client_id,
        num_samples=len(parts[args.client_id]),
        token=args.token,
        task_id=args.task_id,
        tls=tls,
        model=make_model(),  # checked against the aggregator's spec at once
    ) as fl:
        if fl.seed != args.seed:
            raise SystemExit(f"run seed {fl.seed}, not --seed {args.seed}: the split differs")
        jobs = train(fl, data, parts, **hyper)
    print(f"client {args.client_id} done after {jobs} jobs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
