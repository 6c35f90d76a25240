"""Compression in a run: the chains applied by the sequential engine, exact bytes, resume."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from conftest import make_tiny_task, resumed, run_overrides

import fedloom
from fedloom import ConfigError, Federation, load_config
from fedloom.algorithms.base import Strategy
from fedloom.compression import Chain
from fedloom.compression.link import STATE_KEY, Compression
from fedloom.compression.packet import overhead
from fedloom.federation.loop import Callback, RoundState
from fedloom.simulation.engine import InProcessClients
from fedloom.strategies import FedAvg, Scaffold
from fedloom.wire import encode_bundle


def federation(
    up: tuple[str, ...] = (),
    down: tuple[str, ...] = (),
    rounds: int = 3,
    strategy: Strategy | None = None,
    callbacks: tuple[Callback, ...] = (),
) -> Federation:
    task = make_tiny_task()
    chains = Compression(up, down, seed=0) if up or down else None
    backend = InProcessClients(task, 0, compression=chains)
    return Federation(
        task,
        strategy or FedAvg(clients_per_round=3),
        backend,
        rounds=rounds,
        callbacks=callbacks,
    )


@functools.cache
def plain() -> Any:
    """The uncompressed run the others are compared with."""
    return federation().run()


@pytest.mark.parametrize(
    "up,down",
    [
        (("fp16",), ()),
        (("bf16",), ("fp16",)),
        (("q8",), ()),
        (("qsgd:4:64", "zstd"), ("bf16", "zstd")),
        (("topk:0.1", "zstd"), ()),
        (("randk:0.2", "fp16"), ()),
    ],
)
def test_each_lossy_codec_family_runs_and_changes_the_model(up, down) -> None:
    result = federation(up, down).run()
    assert torch.isfinite(result.params).all()
    assert not torch.equal(result.params, plain().params)
    assert (result.params - plain().params).abs().max() < 0.5  # near the uncompressed run
    assert all(h["bytes_up"] < plain().history[0]["bytes_up"] for h in result.history)


@pytest.mark.parametrize("up", [("zstd",), ("f32",), ("f32", "zstd:3")])
def test_lossless_chains_give_the_uncompressed_model_bit_for_bit(up) -> None:
    result = federation(up, up).run()
    assert torch.equal(result.params, plain().params)


class Encodes:
    """Records the size of every update the chains encode (Chain.encode, wrapped)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        real = Chain.encode

        def encode(chain: Chain, *args: Any) -> Any:
            enc = real(chain, *args)
            assert enc.nbytes == len(enc.to_bytes())
            self.sizes.append(enc.nbytes)
            return enc

        monkeypatch.setattr(Chain, "encode", encode)


def test_bytes_up_is_the_sum_of_the_encoded_uploads(monkeypatch) -> None:
    encodes = Encodes(monkeypatch)
    fed = federation(("topk:0.1", "q8", "zstd"), rounds=1, strategy=Scaffold(clients_per_round=3))
    record = fed.run().history[0]
    # per client: the update, then its control-variate change (the one extra), in a packet
    assert len(encodes.sizes) == 6
    assert record["bytes_up"] == sum(encodes.sizes) + 3 * overhead(["scaffold_dc"])
    # the downlink is not compressed: the wire format's size (model and SCAFFOLD's c)
    c = fed.plan.tensors
    assert record["bytes_down"] == 3 * len(
        encode_bundle(fed.params, fed.spec, c, {"round": 1, "version": 0})
    )


def test_bytes_down_is_the_encoded_global_model_per_client(monkeypatch) -> None:
    encodes = Encodes(monkeypatch)
    record = federation((), ("fp16", "zstd"), rounds=1).run().history[0]
    assert len(encodes.sizes) == 1  # once per round, the same bytes for every client
    assert record["bytes_down"] == 3 * (encodes.sizes[0] + overhead([]))
    assert record["bytes_up"] == plain().history[0]["bytes_up"]


class WireSizes(Callback):
    """What the network runtime would send: ``encode_bundle`` of each update and model."""

    def __init__(self) -> None:
        self.up: dict[int, int] = {}
        self.down: dict[int, int] = {}

    def on_state(self, fed: Federation, state: RoundState, round: int) -> None:
        if state is RoundState.DISTRIBUTE:
            meta = {"round": round, "version": round - 1}
            one = len(encode_bundle(fed.params, fed.spec, fed.plan.tensors, meta))
            self.down[round] = one * len(fed.plan.clients)

    def on_update(self, fed: Federation, update: Any, error: str | None) -> None:
        extras = update.extras.get("tensors") or {}
        size = len(encode_bundle(update.params, fed.spec, extras, {"round": update.round}))
        self.up[update.round] = self.up.get(update.round, 0) + size


@pytest.mark.parametrize("strategy", [FedAvg(clients_per_round=3), Scaffold(clients_per_round=3)])
def test_uncompressed_bytes_are_the_wire_formats_including_extras(strategy) -> None:
    sizes = WireSizes()
    history = federation(rounds=3, strategy=strategy, callbacks=(sizes,)).run().history
    assert [h["bytes_up"] for h in history] == [sizes.up[r] for r in (1, 2, 3)]
    assert [h["bytes_down"] for h in history] == [sizes.down[r] for r in (1, 2, 3)]
    if isinstance(strategy, Scaffold):  # the control variates travel both ways, counted
        model = len(encode_bundle(plain().params, federation().spec, {}, {"round": 1}))
        assert history[0]["bytes_up"] > 3 * 2 * model - 100


def test_error_feedback_state_resumes_bit_for_bit(tmp_path) -> None:
    _, _, state = resumed(
        lambda rounds: federation(("topk:0.05", "q8"), rounds=rounds), tmp_path, rounds=4, stop=2
    )
    clients = state["backend"]["clients"]
    residuals = [s[STATE_KEY] for s in clients.values() if STATE_KEY in s]
    assert residuals and all(float(r["topk.residual"].abs().sum()) > 0 for r in residuals)


def test_without_its_residual_a_resumed_run_differs() -> None:
    """The resume check above can fail: the residual is what carries the run on."""
    straight = federation(("topk:0.05",), rounds=4)
    straight.run()
    first = federation(("topk:0.05",), rounds=2)
    first.run()
    state = first.state_dict()
    for client in state["backend"]["clients"].values():
        client.pop(STATE_KEY, None)
    second = federation(("topk:0.05",), rounds=4)
    second.load_state_dict(state)
    second.run()
    assert not torch.equal(second.params, straight.params)


# -- the config -----------------------------------------------------------------------------
def test_a_config_run_compresses_and_records_the_bytes(tmp_path) -> None:
    plain = fedloom.run(None, run_overrides(tmp_path, "plain"))
    packed = fedloom.run(
        None,
        run_overrides(tmp_path, "packed", **{"compression.up": ["q8", "zstd"]}),
    )
    up = [h["bytes_up"] for h in packed.history]
    assert all(u < p["bytes_up"] / 3 for u, p in zip(up, plain.history))
    assert not torch.equal(packed.params, plain.params)


def test_config_names_the_bad_chain_item() -> None:
    with pytest.raises(ConfigError, match=r"compression\.up\[1\] = 'q99'"):
        load_config(None, ["compression.up=['zstd', 'q99']"])
    with pytest.raises(ConfigError, match=r"compression\.up: .*can not follow"):
        load_config(None, ["compression.up=['zstd', 'q8']"])
    with pytest.raises(ConfigError, match=r"compression\.down: 'topk:0\.1' is a sparsifier"):
        load_config(None, ["compression.down=['topk:0.1']"])


@pytest.mark.parametrize("engine", ["vectorized", "pool"])
def test_engines_without_compression_refuse_it_naming_the_keys(tmp_path, engine) -> None:
    overrides = run_overrides(
        tmp_path, engine, **{"compression.up": ["q8"], "simulation.engine": engine}
    )
    with pytest.raises(ConfigError, match=f"compression.up with simulation.engine = '{engine}'"):
        fedloom.Experiment.from_config(None, overrides)
