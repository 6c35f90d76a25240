"""SecAgg+ over the network runtime: sync rounds whose aggregator learns only the sum.

A real aggregator (gRPC on loopback) drives the round loop; clients run in threads (and, in
one test, as processes). Clients that leave at a stage are stand-in sessions
(:attr:`RuntimeClient.secagg_session`) that stop sending after the named stage.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from conftest import IN_FEATURES, NUM_CLASSES, tiny_dataset, tiny_parts
from torch import nn

from fedloom import ClassificationTask, FedAvg, Federation, ParamSpec
from fedloom.privacy.secagg import AdvertiseKeys, ClientMessage, MaskedInput, ServerMessage
from fedloom.runtime import AggregatorServer, RuntimeClient, secagg_wire
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.runtime.secagg_client import SecAggSession
from fedloom.runtime.secagg_round import SecAggSettings, quantisation_bound
from fedloom.runtime.secagg_wire import STAGE_OF, request_payload, request_payloads, server_message

from .conftest import (
    base_config,
    check_in,
    free_port,
    read_metrics,
    run_dir,
    saved_params,
    simulate,
    stub_for,
    with_changes,
    write_config,
)

EQUAL = (15,) * 6  # equal client sizes: FedAvg's weighted mean is the uniform mean


def task_of(hidden: int = 6, sizes: tuple[int, ...] = EQUAL) -> ClassificationTask:
    def model() -> nn.Module:
        return nn.Sequential(
            nn.Linear(IN_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES)
        )

    return ClassificationTask(model, tiny_dataset(), tiny_parts(sizes), lr=0.1, batch_size=4)


class Recorder:
    """What each client fed into the protocol (its delta) and what the aggregator received."""

    def __init__(self) -> None:
        self.deltas: dict[int, np.ndarray] = {}
        self.received: list[tuple[int, ClientMessage]] = []
        self.lock = threading.Lock()


def session_class(rec: Recorder, stop: dict[int, int] | None = None, first_only: bool = False):
    """A session that records its delta and, for the clients in ``stop``, sends nothing after
    the named stage (1 advertise ... 4 unmask); with ``first_only`` only in session 1."""
    stop = stop or {}

    class Recorded(SecAggSession):
        def run(self, delta: Any) -> bool:
            with rec.lock:
                rec.deltas[int(self.header["client_id"])] = np.array(delta)
            return super().run(delta)

        def exchange(self, message: ClientMessage) -> ServerMessage | None:
            last = stop.get(int(self.header["client_id"]))
            quits = last is not None and (not first_only or self.config.round == 1)
            if quits and STAGE_OF[type(message)] > last:
                self.outcome = f"stopped after stage {last} (test)"
                return None
            return super().exchange(message)

    return Recorded


def secure_run(
    servers: list,
    client_threads,
    task: ClassificationTask,
    settings: SecAggSettings,
    rounds: int = 1,
    session: type[SecAggSession] = SecAggSession,
    recorder: Recorder | None = None,
    short_round: str = "retry",
    **server_kwargs: Any,
) -> tuple[Federation, AggregatorServer, torch.Tensor]:
    """Run a FedAvg federation of ``task`` over a secure aggregator, clients in threads;
    returns (federation, aggregator, initial model)."""

    def make(spec: ParamSpec) -> AggregatorServer:
        server = AggregatorServer(
            spec,
            address="127.0.0.1:0",
            poll_interval=0.02,
            min_clients=task.num_clients,
            secagg=settings,
            **server_kwargs,
        )
        if recorder is not None:
            assert server.secagg is not None
            server.secagg.on_message = lambda cid, m: recorder.received.append((cid, m))
        servers.append(server)
        return server.start()

    fed = Federation(
        task, FedAvg(fraction=1.0), make, rounds=rounds, seed=0, short_round=short_round
    )
    initial = fed.params.clone()
    server = fed.backend
    for cid in range(task.num_clients):
        client = RuntimeClient(task, server.address, cid, retry_for=10)
        client.secagg_session = session  # type: ignore[misc]
        client_threads.start(client)
    fed.run()
    server.finish()
    client_threads.join(30)
    return fed, server, initial


def plain_fedavg(task: ClassificationTask, rounds: int = 1) -> torch.Tensor:
    fed = Federation(task, FedAvg(fraction=1.0), rounds=rounds, seed=0)
    fed.run()
    return fed.params


# -- correctness and privacy ------------------------------------------------------------------
def test_the_secure_model_equals_plaintext_fedavg_within_the_quantisation_step(
    servers, client_threads
):
    task = task_of()
    settings = SecAggSettings(clipping_range=1.0, stage_timeout=20)
    rec = Recorder()
    fed, server, initial = secure_run(
        servers, client_threads, task, settings, session=session_class(rec)
    )
    plain = plain_fedavg(task_of())
    assert len(rec.deltas) == 6
    assert max(float(np.abs(d).max()) for d in rec.deltas.values()) < 1.0  # within the clip
    err = float((fed.params.double() - plain.double()).abs().max())
    assert 0 < err <= quantisation_bound(settings) + 1e-6, err
    assert not torch.equal(fed.params, initial)
    assert server.secagg is not None and server.secagg.sessions == 1
    assert not server.tally.total, server.tally.total


def test_the_aggregator_never_receives_a_vector_correlated_with_one_client(servers, client_threads):
    """d = 24,579 parameters: independent vectors correlate with std 1/sqrt(d) = 0.0064, so
    |corr| < 0.05 is a 7-sigma margin; an unmasked delta would correlate > 0.99."""
    task = task_of(hidden=2048)
    settings = SecAggSettings(clipping_range=1.0, stage_timeout=30)
    rec = Recorder()
    fed, _server, initial = secure_run(
        servers, client_threads, task, settings, session=session_class(rec), recorder=rec
    )
    vectors = [m.vector for _, m in rec.received if isinstance(m, MaskedInput)]
    assert len(vectors) == 6 and len(rec.deltas) == 6
    for v in vectors:
        for delta in rec.deltas.values():
            assert abs(np.corrcoef(v.astype(np.float64), delta)[0, 1]) < 0.05
    # ... while the sum is right: the mean delta, to one quantisation step
    mean = np.mean(list(rec.deltas.values()), axis=0)
    got = (fed.params.double() - initial.double()).numpy()
    assert np.abs(got - mean).max() <= quantisation_bound(settings) + 1e-6
    quantised = np.round((np.clip(mean, -1, 1) + 1) / (2 / (settings.quantization_range - 1)))
    assert np.corrcoef(quantised, mean)[0, 1] > 0.99  # what an unmasked upload would leak


def test_a_long_masked_vector_travels_in_order_in_parts(servers, client_threads, monkeypatch):
    """Parts of 100 values (771 parameters: 8 parts): the model is right; a part sent out of
    order is refused and counted, and its client then sends them in order."""
    monkeypatch.setattr(secagg_wire, "PART_VALUES", 100)
    seen: dict[str, pb.SecAggReply] = {}
    rec = Recorder()

    class SkipsAPart(session_class(rec)):  # type: ignore[misc]
        def exchange(self, message: ClientMessage) -> ServerMessage | None:
            if isinstance(message, MaskedInput) and self.header["client_id"] == "2":
                head = dict(self.header, session=self.config.round, index=self.index, stage=3)
                second = request_payloads(message)[1]
                seen["skip"] = self.call(pb.SecAggRequest(**head, **second))
            return super().exchange(message)

    settings = SecAggSettings(stage_timeout=20)
    fed, server, _ = secure_run(
        servers, client_threads, task_of(hidden=64), settings, session=SkipsAPart
    )
    assert len(request_payloads(MaskedInput(1, 0, (), np.zeros(771, np.uint32)))) == 8
    assert max(float(np.abs(d).max()) for d in rec.deltas.values()) < 1.0
    plain = plain_fedavg(task_of(hidden=64))
    err = float((fed.params.double() - plain.double()).abs().max())
    assert 0 < err <= quantisation_bound(settings) + 1e-6, err
    assert seen["skip"].kind == pb.SecAggReply.REFUSED and "out_of_order" in seen["skip"].reason
    assert server.tally.total == {"secagg_out_of_order": 1}


# -- dropouts --------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [2, 3])
def test_clients_that_stop_at_a_stage_leave_the_survivors_sum(servers, client_threads, stage):
    """Two of six stop after sharing keys (stage 2) or after their masked input (3): the
    first are dropouts whose pairwise masks are reconstructed, the second still count."""
    task = task_of()
    settings = SecAggSettings(stage_timeout=2)
    rec = Recorder()
    quitters = {1: stage, 4: stage}
    fed, _server, initial = secure_run(
        servers, client_threads, task, settings, session=session_class(rec, quitters)
    )
    survivors = [c for c in range(6) if stage == 3 or c not in quitters]
    mean = np.mean([rec.deltas[c] for c in survivors], axis=0)
    got = (fed.params.double() - initial.double()).numpy()
    assert np.abs(got - mean).max() <= quantisation_bound(settings) + 1e-6
    assert fed.history[-1]["round"] == 1 and "skipped" not in fed.history[-1]


def test_too_many_dropouts_skip_the_round_with_a_clear_error_and_the_run_goes_on(
    servers, client_threads, caplog
):
    """Three of six leave after advertising (the threshold is 4): round 1 aborts, is
    skipped, and round 2 (everyone back) is aggregated."""
    task = task_of()
    settings = SecAggSettings(stage_timeout=2)
    rec = Recorder()
    quitters = {0: 1, 2: 1, 5: 1}
    fed, server, initial = secure_run(
        servers,
        client_threads,
        task,
        settings,
        rounds=2,
        session=session_class(rec, quitters, first_only=True),
        short_round="skip",
    )
    assert "secure aggregation round 1 aborted at share_keys" in caplog.text
    first, second = fed.history[0], fed.history[-1]
    assert first.get("skipped") and "aborted" in str(first.get("skipped")), first
    assert second["round"] == 2 and "skipped" not in second
    assert not torch.equal(fed.params, initial)
    assert server.secagg is not None and server.secagg.sessions == 2
    assert not client_threads.errors


def test_an_altered_seed_share_with_exactly_t_shares_is_counted_and_aborts_the_round(
    servers, client_threads, caplog
):
    """num_shares = threshold = 3: each self-mask seed has exactly t shares. Client 2 flips
    a bit of one seed share it sends in round 1: the rebuilt seed misses the commitment its
    owner advertised, so instead of unmasking a wrong sum the round aborts (skipped, counted
    as ``secagg_inconsistent``); round 2, all honest, is aggregated."""
    from fedloom.privacy.secagg import UnmaskShares

    class Altering(SecAggSession):
        def exchange(self, message: ClientMessage) -> ServerMessage | None:
            if isinstance(message, UnmaskShares) and self.index == 2 and self.config.round == 1:
                (owner, share), *rest = message.seed_shares
                flipped = (int.from_bytes(share, "big") ^ 1).to_bytes(len(share), "big")
                seeds = ((owner, flipped), *rest)
                message = UnmaskShares(message.round, message.sender, seeds, message.key_shares)
            return super().exchange(message)

    settings = SecAggSettings(num_shares=3, reconstruction_threshold=3, stage_timeout=5)
    fed, server, initial = secure_run(
        servers, client_threads, task_of(), settings, rounds=2, session=Altering,
        short_round="skip",
    )  # fmt: skip
    first, second = fed.history
    assert "inconsistent with what it advertised" in str(first.get("skipped")), first
    assert server.tally.total["secagg_inconsistent"] == 1, server.tally.total
    assert second["round"] == 2 and "skipped" not in second
    assert not torch.equal(fed.params, initial)


# -- hostile messages ------------------------------------------------------------------------
def test_malformed_and_replayed_stage_messages_are_refused_and_counted(servers, client_threads):
    """Client 3 sends, before its real share-keys message, a replay of its advertise, a
    message of an old session, one whose payload does not match its stage and keys of the
    wrong size; after it, the same share-keys message again (client 0 shares its keys 3 s
    late, so the stage is still open). Each is refused and counted; the round still
    aggregates all six."""
    seen: dict[str, str] = {}

    class Hostile(SecAggSession):
        def exchange(self, message: ClientMessage) -> ServerMessage | None:
            me, stage = int(self.header["client_id"]), STAGE_OF[type(message)]
            if me == 0 and stage == 2:
                time.sleep(3)
            if me != 3 or stage != 2:
                return super().exchange(message)
            head = dict(self.header, session=self.config.round, index=self.index)
            advertise = AdvertiseKeys(
                self.config.round, self.index, b"k" * 32, b"m" * 32, b"c" * 32
            )
            real = pb.SecAggRequest(**head, stage=2, **request_payload(message))
            tries = {
                "replay": pb.SecAggRequest(**head, stage=1, **request_payload(advertise)),
                "stale": pb.SecAggRequest(
                    **dict(head, session=self.config.round - 1),
                    stage=2,
                    **request_payload(message),
                ),
                "mismatch": pb.SecAggRequest(**head, stage=2, **request_payload(advertise)),
                "short_keys": pb.SecAggRequest(
                    **head, stage=1, advertise=pb.SecAggKeys(client=self.index)
                ),
            }
            for name, request in tries.items():
                reply = self.call(request)
                assert reply.kind == pb.SecAggReply.REFUSED, name
                seen[name] = reply.reason
            reply = self.call(real)
            again = self.call(real)
            assert again.kind == pb.SecAggReply.REFUSED
            seen["duplicate"] = again.reason
            while reply.kind == pb.SecAggReply.WAIT:
                reply = self.call(pb.SecAggRequest(**head, stage=2))
            return server_message(reply, 2, self.config, self.index)

    task = task_of()
    rec = Recorder()
    settings = SecAggSettings(stage_timeout=10)
    fed, server, _initial = secure_run(
        servers, client_threads, task, settings, session=Hostile, recorder=rec
    )
    assert "out_of_order" in seen["replay"]
    assert "stale_round" in seen["stale"]
    assert "malformed" in seen["mismatch"] and "malformed" in seen["short_keys"]
    assert "duplicate" in seen["duplicate"]
    total = server.tally.total
    assert total["secagg_out_of_order"] == 1 and total["secagg_stale_round"] == 1
    assert total["secagg_malformed"] == 2 and total["secagg_duplicate"] == 1
    assert sum(isinstance(m, MaskedInput) for _, m in rec.received) == 6
    assert fed.history[-1]["round"] == 1 and "skipped" not in fed.history[-1]


def test_a_plain_aggregator_refuses_secagg_calls(servers):
    spec = ParamSpec.from_module(nn.Linear(2, 1))
    plain = AggregatorServer(spec, address="127.0.0.1:0").start()
    servers.append(plain)
    with stub_for(plain.address) as stub:
        check_in(stub, 0)
        request = pb.SecAggRequest(task_id="fedloom", client_id="0", session=1, stage=1)
        with pytest.raises(grpc.RpcError) as e:
            stub.SecAgg(request, timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert plain.tally.total["secagg_off"] == 1


# -- processes -------------------------------------------------------------------------------
def test_secure_rounds_over_processes_match_the_simulation_within_a_step(tmp_path, procs):
    """``fedloom server`` with ``[runtime.secagg]`` and 4 ``fedloom client`` processes
    (MNIST shards of equal size, 3 clients a round): one round's model is the simulation's
    FedAvg model to one quantisation step; the record names the survivors."""
    address = f"127.0.0.1:{free_port()}"
    secagg = {"clipping_range": 1.0, "stage_timeout": 30}
    cfg = base_config(tmp_path / "net", "secure", address=address, min_clients=4, secagg=secagg)
    cfg = with_changes(cfg, rounds=1)
    config = write_config(tmp_path / "secure.json", cfg)
    server = procs.fedloom("aggregator", "server", str(config), "--address", address)
    clients = {
        i: procs.fedloom(
            f"client {i}", "client", str(config), "--server", address, "--client-id", str(i)
        )
        for i in range(4)
    }
    sim, spec = simulate(cfg, tmp_path / "sim")
    assert server.wait(180) == 0, procs.logs()
    for c in clients.values():
        assert c.wait(60) == 0, procs.logs()
    net = saved_params(run_dir(cfg), spec)
    step = quantisation_bound(SecAggSettings(clipping_range=1.0))
    err = float((net.double() - sim.params.double()).abs().max())
    assert 0 < err <= step + 1e-6, err
    (record,) = read_metrics(run_dir(cfg))
    assert record["clients"] == 1 and record["samples"] == sim.history[0]["samples"]
    assert "securely aggregated 3 of 3 clients" in server.output()


# -- review regressions -----------------------------------------------------------------------
def test_a_round_of_one_client_hands_out_no_work_so_nothing_goes_in_the_clear(
    servers, client_threads
):
    """One sampled client cannot be aggregated securely: it is not told to train (it would
    upload its update in the clear), and the round is skipped as short."""
    rec = Recorder()
    fed, server, initial = secure_run(
        servers, client_threads, task_of(sizes=(15,)), SecAggSettings(stage_timeout=5),
        rounds=2, recorder=rec, short_round="skip", round_timeout=5,
    )  # fmt: skip
    assert len(fed.history) == 2
    assert all("needs at least 2 clients" in r["skipped"] for r in fed.history)
    assert server.rejections == [] and rec.received == []
    assert torch.equal(fed.params, initial)


def test_a_client_refuses_parameters_that_would_let_the_aggregator_unmask_it():
    """The client checks what the aggregator asks: a threshold of half the shares or less
    (both a seed's and a key's shares could be collected) or a stage timeout that is not a
    finite number of seconds is refused as malformed."""
    good = dict(
        num_clients=6, vector_length=10, num_shares=5, reconstruction_threshold=3,
        clipping_range=1.0, quantization_range=256, modulus=1 << 32, session=1,
        graph_seed=7, index=0, stage_timeout_s=5.0,
    )  # fmt: skip
    secagg_wire.params_from_proto(pb.SecAggParams(**good), 10)
    for bad in (
        {"reconstruction_threshold": 2},  # 2 * 2 <= 5
        {"reconstruction_threshold": 1, "num_shares": 1},
        {"stage_timeout_s": float("nan")},
        {"stage_timeout_s": float("inf")},
    ):
        with pytest.raises(secagg_wire.SecAggRefused, match="malformed"):
            secagg_wire.params_from_proto(pb.SecAggParams(**{**good, **bad}), 10)


def test_an_own_loop_is_refused_by_a_secure_aggregator_before_it_uploads(
    servers, client_threads
):
    import fedloom
    from fedloom.errors import JobError

    task = task_of()
    server = AggregatorServer(
        ParamSpec.from_module(task.build_model()), address="127.0.0.1:0", poll_interval=0.02,
        min_clients=2, secagg=SecAggSettings(stage_timeout=5), round_timeout=5,
    ).start()  # fmt: skip
    servers.append(server)
    fed = Federation(task, FedAvg(fraction=1.0), server, rounds=1, seed=0, short_round="skip")
    run = threading.Thread(target=fed.run, daemon=True)
    run.start()
    client_threads.start(RuntimeClient(task, server.address, 1, retry_for=10))
    with fedloom.connect(server.address, client_id=0, num_samples=15) as fl:
        jobs = fl.jobs()
        with pytest.raises(JobError, match="secure aggregation"):
            next(jobs)
    run.join(30)
    assert not any("client 0" in r or c == 0 for _, c, r in server.rejections)
