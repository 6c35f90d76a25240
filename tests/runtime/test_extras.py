"""Strategies that send tensors with the model and clients that send tensors back (SCAFFOLD's
control variates, IFCA's cluster models) work over the network as in the simulation."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
from conftest import make_tiny_task

from fedloom import FedAvg, Federation, ParamSpec
from fedloom.algorithms.client import ClientAlgorithm, LocalRun, register_client_algorithm
from fedloom.errors import WireError
from fedloom.runtime import AggregatorServer, RuntimeClient
from fedloom.update import ClientUpdate
from fedloom.wire import MAX_EXTRAS, decode_bundle, encode, encode_bundle


@register_client_algorithm
class Nudge(ClientAlgorithm):
    """Adds the server's ``nudge`` buffer to the gradients; returns twice its trained model."""

    name = "test_nudge"

    def begin(self, run: LocalRun) -> None:
        nudge = run.tensors["nudge"]
        views = [nudge[run.spec.slice(n)].view_as(p) for n, p in self._named(run)]
        run.correct_gradients(lambda grads, params: torch._foreach_add_(grads, views))

    def _named(self, run: LocalRun):
        names = {id(p): n for n, p in run.model.named_parameters()}
        return [(names[id(p)], p) for p in run.params]

    def end(self, run: LocalRun) -> None:
        run.out["double"] = run.flat * 2
        run.metrics["nudged"] = 1.0


class NudgeAvg(FedAvg):
    def __init__(self) -> None:
        super().__init__(fraction=1.0)
        self.client = Nudge()
        self.seen: list[tuple[int, bool]] = []

    def configure(self, round, available, rng):
        plan = super().configure(round, available, rng)
        plan.tensors["nudge"] = torch.full((self._numel,), 0.01 * round)
        return plan

    def aggregate(self, round, global_params, updates: Iterable[ClientUpdate]):
        def checked():
            for u in updates:
                double = u.extras["tensors"]["double"]
                self.seen.append((u.client_id, torch.equal(double, u.params * 2)))
                yield u

        return super().aggregate(round, global_params, checked())


def test_tensors_travel_both_ways_and_match_the_simulation(servers, client_threads):
    task = make_tiny_task()
    numel = ParamSpec.from_module(task.build_model()).numel
    sim_strategy = NudgeAvg()
    sim_strategy._numel = numel
    sim = Federation(task, sim_strategy, rounds=2, seed=0).run()

    def make(spec: ParamSpec) -> AggregatorServer:
        server = AggregatorServer(spec, address="127.0.0.1:0", poll_interval=0.02, min_clients=6)
        servers.append(server)
        return server.start()

    net_strategy = NudgeAvg()
    net_strategy._numel = numel
    fed = Federation(task, net_strategy, make, rounds=2, seed=0)
    for cid in range(6):
        client_threads.start(RuntimeClient(task, fed.backend.address, cid))
    net = fed.run()
    fed.backend.finish()
    client_threads.join()
    assert not client_threads.errors
    assert torch.equal(net.params, sim.params)
    assert net_strategy.seen == sim_strategy.seen and len(sim_strategy.seen) == 12
    assert all(ok for _, ok in net_strategy.seen)
    plain = Federation(task, FedAvg(fraction=1.0), rounds=2, seed=0).run()
    assert not torch.equal(plain.params, sim.params)  # the nudge did change training


def test_bundles_are_checked_like_models():
    spec = ParamSpec.from_module(torch.nn.Linear(3, 2))
    flat = torch.arange(8.0)
    data = encode_bundle(flat, spec, {"c": flat * 2}, {"round": 1})
    got, extras, meta = decode_bundle(data, spec)
    assert torch.equal(got, flat) and torch.equal(extras["c"], flat * 2) and meta == {"round": "1"}
    assert encode_bundle(flat, spec, {}) == encode(flat, spec)  # no extras: the plain format
    assert decode_bundle(encode(flat, spec), spec)[1] == {}
    nan = flat.clone()
    nan[3] = float("nan")
    with pytest.raises(WireError, match="NaN"):
        decode_bundle(encode_bundle(flat, spec, {"c": nan}), spec)
    with pytest.raises(WireError, match="names"):
        encode_bundle(flat, spec, {"bad name!": flat})
    many = {f"e{i}": flat for i in range(MAX_EXTRAS + 1)}
    with pytest.raises(WireError, match="at most"):
        encode_bundle(flat, spec, many)
    short = ParamSpec.from_module(torch.nn.Linear(2, 2))
    with pytest.raises(WireError):  # an extra laid out for another model
        decode_bundle(encode_bundle(torch.zeros(6), short, {"c": torch.zeros(6)}), spec)


@pytest.mark.parametrize(
    "strategy",
    [
        {"name": "fedper"},  # the client's task must get the personal head from the config
        {"name": "ifca", "options": {"clusters": 2}},  # k cluster models travel with the plan
        {"name": "scaffold"},
    ],
)
def test_config_strategies_over_the_network_equal_the_simulation(
    tmp_path, servers, client_threads, strategy
):
    from fedloom import Experiment
    from fedloom.deploy.roles import aggregator, run_client

    from .conftest import base_config, run_dir, saved_params, simulate, with_changes

    cfg = with_changes(base_config(tmp_path / "net", strategy["name"], min_clients=4), rounds=2)
    cfg["strategy"] |= strategy
    if strategy["name"] == "fedper":  # logreg is one layer: nothing to share
        cfg["model"] = {"name": "mlp"}
    sim, spec = simulate(cfg, tmp_path / "sim")
    exp = Experiment.from_config(cfg, backend=aggregator("127.0.0.1:0"))
    server = exp.federation.backend
    servers.append(server)

    class Runner:
        def __init__(self, cid: int) -> None:
            self.client_id = cid

        def run(self) -> int:
            return run_client(cfg, server=server.address, client_id=self.client_id)

    for cid in range(4):
        client_threads.start(Runner(cid))
    exp.run()
    server.finish()
    client_threads.join(60)
    assert not client_threads.errors, client_threads.errors
    assert torch.equal(saved_params(run_dir(cfg), spec), sim.params)
