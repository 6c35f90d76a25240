"""The FedLab-style ``ClientTrainer`` against a real aggregator process and in a
``LocalFederation`` (same numbers), and ``fedloom.connect`` over TLS with tokens (a wrong CA
refused with a clear error)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest
import torch

import fedloom
from examples.own_loop import client_data, train
from examples.own_loop_trainer import MnistTrainer
from fedloom import LocalFederation
from fedloom.runtime import TLSConfig, UnreachableError

from .conftest import (
    base_config,
    free_port,
    read_metrics,
    run_dir,
    saved_params,
    simulate,
    wait_until,
    with_changes,
    write_config,
)


def in_threads(clients: dict[int, Callable[[], int]], timeout: float = 120) -> dict[int, int]:
    """Run each client's callable in a daemon thread; their results, or the first error."""
    done: dict[int, int] = {}
    errors: list[BaseException] = []

    def target(cid: int, fn: Callable[[], int]) -> None:
        try:
            done[cid] = fn()
        except BaseException as e:  # noqa: BLE001 - raised below
            errors.append(e)

    threads = [threading.Thread(target=target, args=item, daemon=True) for item in clients.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"
    return done


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def scaffold_config(out_dir, name: str, **runtime):
    cfg = base_config(out_dir, name, **runtime)
    return with_changes(
        cfg,
        **{"data.partition": "iid", "strategy": {"name": "scaffold", "clients_per_round": 3}},
    )


def test_trainer_against_an_aggregator_process_equals_the_local_federation(tmp_path, procs):
    """SCAFFOLD (control variates travel with the model; each client keeps c_i between its
    jobs): four trainers (threads) against `fedloom server`, the same trainer class serving a
    LocalFederation, and the simulation all end with the same model, bit for bit."""
    address = f"127.0.0.1:{free_port()}"
    cfg = scaffold_config(tmp_path / "net", "trainer", address=address, min_clients=4)
    config = write_config(tmp_path / "trainer.json", cfg)
    server = procs.fedloom("aggregator", "server", str(config), "--address", address)

    def client(cid: int) -> Callable[[], int]:
        return lambda: MnistTrainer(0, 4).run(address, client_id=cid, task_id="rt-test")

    done = in_threads({cid: client(cid) for cid in range(4)})
    assert server.wait(60) == 0, procs.logs()
    assert sum(done.values()) == 9  # 3 rounds x 3 clients

    fl = LocalFederation.from_config(with_changes(cfg, **{"output.dir": str(tmp_path / "loc")}))
    result = MnistTrainer(fl.seed, 4).run_local(fl)
    sim, spec = simulate(cfg, tmp_path / "sim")
    assert torch.equal(result.params, sim.params)
    assert torch.equal(saved_params(run_dir(cfg), spec), sim.params)
    assert [r["accuracy"] for r in read_metrics(run_dir(cfg))] == [
        r["accuracy"] for r in sim.history
    ]


def test_connect_over_tls_with_tokens_and_a_wrong_ca_refused(tmp_path, procs, certs):
    """An aggregator process serving TLS with a token per client: a client trusting another
    CA gets one error naming the address and the failed handshake; four own-loop clients with
    the right CA and their tokens train the simulation's model."""
    address = f"127.0.0.1:{free_port()}"
    tokens = {str(c): f"token-{c}" for c in range(4)}
    cfg = base_config(
        tmp_path / "net",
        "tls",
        address=address,
        min_clients=4,
        tls_cert=certs.server_cert,
        tls_key=certs.server_key,
        tokens=tokens,
    )
    cfg = with_changes(cfg, rounds=2, **{"data.partition": "iid"})
    config = write_config(tmp_path / "tls.json", cfg)
    server = procs.fedloom("aggregator", "server", str(config), "--address", address)
    data, parts = client_data(0, 4)
    wait_until(lambda: listening(address), 60, "the aggregator's port")

    handshake = rf"TLS handshake with {address} failed: .* tls.ca .*CERTIFICATE_VERIFY_FAILED"
    with pytest.raises(UnreachableError, match=handshake):
        fedloom.connect(
            address,
            client_id=0,
            num_samples=len(parts[0]),
            token=tokens["0"],
            task_id="rt-test",
            tls=TLSConfig(ca=certs.client_cert),  # not the CA that signed the server's
            retry_for=600,  # a refused certificate is final: no retry waits it out
        )

    def client(cid: int) -> Callable[[], int]:
        def go() -> int:
            with fedloom.connect(
                address,
                client_id=cid,
                num_samples=len(parts[cid]),
                token=tokens[str(cid)],
                task_id="rt-test",
                tls=TLSConfig(ca=certs.ca),
            ) as fl:
                return train(fl, data, parts)

        return go

    done = in_threads({cid: client(cid) for cid in range(4)})
    assert server.wait(60) == 0, procs.logs()
    assert sum(done.values()) == 6
    sim, spec = simulate(cfg, tmp_path / "sim")
    assert torch.equal(saved_params(run_dir(cfg), spec), sim.params)
