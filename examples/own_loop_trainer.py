"""Bring your own loop, FedLab style: a ``ClientTrainer`` subclass, served over the network or
in-process.

The loop of ``examples/own_loop.py`` as a class: ``train(model, job)`` trains one job and
returns ``(num_samples, metrics)``; ``run`` serves an aggregator as one data holder,
``run_local`` serves a ``LocalFederation`` (every client in this process)::

    .venv/bin/python examples/own_loop_trainer.py --local examples/own_loop.toml
    .venv/bin/fedloom server examples/own_loop.toml --address 127.0.0.1:50051 &
    for i in 0 1 2 3; do .venv/bin/python examples/own_loop_trainer.py \\
        --server 127.0.0.1:50051 --client-id $i & done

Both give the simulation's model bit for bit (``fedloom run examples/own_loop.toml``), with
any strategy whose client part runs on the optimizer (FedAvg, FedProx, SCAFFOLD, FedDyn, ...):
``train`` applies it with ``job.client_part``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

import fedloom
from examples.own_loop import client_data, make_model
from fedloom import LocalFederation
from fedloom.runtime import TLSConfig
from fedloom.runtime.ownloop import Connection, Job
from fedloom.runtime.trainer import ClientTrainer


class MnistTrainer(ClientTrainer):
    """Each client's share of the embedded MNIST (split as ``partition = "iid"`` with the run
    seed), trained with plain SGD as the built-in engine trains it."""

    def __init__(
        self, seed: int, num_clients: int, *, lr: float = 0.05, batch_size: int = 20
    ) -> None:
        super().__init__()
        self.data, self.parts = client_data(seed, num_clients)
        self.seed, self.lr, self.batch_size = seed, lr, batch_size

    def connected(self, connection: Connection) -> None:
        if connection.seed != self.seed:
            raise SystemExit(f"run seed {connection.seed}, not --seed {self.seed}: another split")

    def build_model(self) -> nn.Module:
        return make_model()

    def num_samples(self, client_id: int) -> int:
        return len(self.parts[client_id])

    def train(self, model: nn.Module, job: Job) -> tuple[int, Mapping[str, float]]:
        idx = self.parts[job.client_id]
        torch.manual_seed(job.seed)  # what the engine seeds (dropout and the like)
        optimizer = fedloom.optim.SGD(model.parameters(), lr=self.lr)
        total, steps = 0.0, 0
        with job.client_part(model, optimizer):  # the strategy's client part, if any
            for _ in range(job.local_epochs(1)):
                order = idx[torch.randperm(len(idx), generator=job.generator)]
                x, y = self.data.train_x[order], self.data.train_y[order]
                for i in range(0, len(order), self.batch_size):
                    optimizer.zero_grad(set_to_none=True)
                    batch = slice(i, i + self.batch_size)
                    loss = F.cross_entropy(model(x[batch]), y[batch])
                    loss.backward()  # type: ignore[no-untyped-call]  # untyped in torch
                    optimizer.step()
                    total += loss.item()
                    steps += 1
        return len(idx), {"loss": total / max(steps, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="the aggregator's host:port")
    where.add_argument("--local", metavar="CONFIG", help="serve a LocalFederation of CONFIG")
    ap.add_argument("--client-id", type=int, default=0)
    ap.add_argument("--num-clients", type=int, default=4, help="data.num_clients of the run")
    ap.add_argument("--seed", type=int, default=0, help="the run seed (it seeds the split)")
    ap.add_argument("--token", default="")
    ap.add_argument("--task-id", default="fedloom")
    ap.add_argument("--tls-ca", help="CA certificate of the aggregator (TLS)")
    ap.add_argument("--overwrite", action="store_true", help="--local: replace an earlier run")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.local:
        fl = LocalFederation.from_config(args.local, overwrite=args.overwrite)
        trainer = MnistTrainer(fl.seed, fl.federation.task.num_clients)
        result = trainer.run_local(fl)
        print(f"final metrics: {result.final_metrics}")
        return 0
    trainer = MnistTrainer(args.seed, args.num_clients)
    tls = TLSConfig(ca=args.tls_ca) if args.tls_ca else None
    jobs = trainer.run(
        args.server, client_id=args.client_id, token=args.token, task_id=args.task_id, tls=tls
    )
    print(f"client {args.client_id} done after {jobs} jobs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
