"""ClientStates: mapping semantics, spilling past the budget, exact read-back, LRU order, safe
loading, the spill directory's lifetime, and SCAFFOLD runs (and resumes) with a tiny budget
that are bit-identical to runs keeping every state in memory."""

from __future__ import annotations

import datetime
import gc
import multiprocessing
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import make_tiny_task, run_overrides

from fedloom import (
    ConfigError,
    DistributedClients,
    FedAvg,
    Federation,
    InProcessClients,
    load_checkpoint,
    save_checkpoint,
)
from fedloom.algorithms.scaffold import Scaffold
from fedloom.experiment import Experiment
from fedloom.simulation.states import MB, ClientStateError, ClientStates, state_bytes

FLOATS = 100  # a state of FLOATS float32 holds 400 tensor bytes


def st(value: float, n: int = FLOATS) -> dict:
    return {"t": torch.full((n,), float(value))}


def budget_for(states: float, bytes_each: int = 4 * FLOATS) -> float:
    """A memory_mb that holds ``states`` states of ``bytes_each`` bytes."""
    return states * bytes_each / MB


def spill_files(states: ClientStates) -> set[str]:
    return {p.name for p in states.path.iterdir()} if states.path is not None else set()


def in_memory(states: ClientStates) -> set[int]:
    """The clients whose state is held in memory: known, and not spilled to a file."""
    return set(states) - {int(f[len("client-") : -len(".pt")]) for f in spill_files(states)}


def test_mapping_semantics_without_a_budget() -> None:
    s = ClientStates()
    assert len(s) == 0 and 3 not in s and s.get(3, {}) == {}
    s[3], s[1], s[2] = st(3), st(1), {"rounds": [1, 2], "obj": object()}
    s[3] = st(33)  # re-assigning keeps the first-insertion position, as a dict does
    assert list(s) == [3, 1, 2] and len(s) == 3 and 1 in s and 7 not in s
    assert float(s[3]["t"][0]) == 33 and s[2]["rounds"] == [1, 2]
    with pytest.raises(KeyError):
        s[7]
    del s[1]
    assert list(s) == [3, 2]
    with pytest.raises(KeyError):
        del s[1]
    assert s.pop(2)["rounds"] == [1, 2] and list(s) == [3]
    s.update({4: st(4)})
    assert dict(s.items()).keys() == {3, 4} and bool(s)
    assert s.bytes_in_memory == 2 * 4 * FLOATS
    s.clear()
    assert len(s) == 0 and not s and s.bytes_in_memory == 0
    assert s.path is None and s.spilled == 0  # no budget: nothing is ever written


def test_state_bytes_counts_nested_tensors() -> None:
    state = {
        "a": torch.zeros(10),  # 40
        "b": [torch.zeros(3, dtype=torch.float64), {"c": torch.zeros(2, dtype=torch.int8)}],
        "n": 3,
        "s": "text",
    }
    assert state_bytes(state) == 40 + 24 + 2


def test_spills_past_the_budget() -> None:
    with ClientStates(memory_mb=budget_for(3.5)) as s:
        for cid in range(10):
            s[cid] = st(cid)
            assert s.bytes_in_memory <= s.budget
        assert len(s) == 10 and list(s) == list(range(10))
        assert s.stats()["in_memory"] == 3 and s.stats()["on_disk"] == 7
        assert s.spilled == 7 and s.loaded == 0
        assert spill_files(s) == {f"client-{cid}.pt" for cid in range(7)}
        assert s.bytes_on_disk == 7 * 4 * FLOATS
        assert s.peak_bytes_in_memory <= s.budget + 4 * FLOATS  # the newest, before a spill
        assert s.path is not None and s.path.name.startswith("fedloom-states-")


def test_one_state_larger_than_the_budget_stays_in_memory() -> None:
    with ClientStates(memory_mb=budget_for(0.5)) as s:
        s[0], s[1] = st(0), st(1)
        assert s.bytes_in_memory == 4 * FLOATS  # the most recently used one, over budget
        assert spill_files(s) == {"client-0.pt"}
        assert s.bytes_in_memory <= s.budget + max(state_bytes(st(c)) for c in (0, 1))


def test_read_back_is_exact_and_moves_back_into_memory() -> None:
    g = torch.Generator().manual_seed(0)
    made = {
        cid: {
            "x": torch.randn(50, generator=g),
            "nested": {"i": torch.arange(cid, cid + 7), "h": torch.randn(4, generator=g).half()},
            "list": [torch.rand(3, generator=g) > 0.5, 2.5, "name", None, (1, 2)],
            "bf": torch.randn(5, generator=g).to(torch.bfloat16),
            "n": cid,
        }
        for cid in range(6)
    }
    expected = {cid: {**v, "list": list(v["list"])} for cid, v in made.items()}
    with ClientStates(memory_mb=budget_for(1.5, state_bytes(made[0]))) as s:
        for cid, state in made.items():
            s[cid] = state
        assert s.spilled == 5
        got = s[0]  # spilled first: read back, its file gone, client 4 spilled in its place
        assert s.loaded == 1 and "client-0.pt" not in spill_files(s)
        assert "client-4.pt" in spill_files(s) and s.spilled == 6
        for cid in [0, *range(1, 6)]:
            state = s[cid]
            want = expected[cid]
            assert torch.equal(state["x"], want["x"]) and state["n"] == want["n"]
            assert torch.equal(state["nested"]["i"], want["nested"]["i"])
            assert state["nested"]["h"].dtype == torch.float16
            assert torch.equal(state["nested"]["h"], want["nested"]["h"])
            assert torch.equal(state["bf"], want["bf"]) and state["bf"].dtype == torch.bfloat16
            assert torch.equal(state["list"][0], want["list"][0])
            assert state["list"][1:] == [2.5, "name", None, (1, 2)]
        assert got is not made[0]  # a fresh object from disk


def test_changes_in_place_survive_a_spill() -> None:
    with ClientStates(memory_mb=budget_for(1.5)) as s:
        s[0] = st(0)
        s[0]["t"].add_(5)  # as SCAFFOLD's ci.add_(dc) does to the state it was handed
        s[0]["extra"] = 7
        s[1], s[2] = st(1), st(2)
        assert "client-0.pt" in spill_files(s)  # 0 was spilled, then read back below
        assert float(s[0]["t"][0]) == 5 and s[0]["extra"] == 7


def test_least_recently_used_are_spilled_first() -> None:
    with ClientStates(memory_mb=budget_for(3)) as s:
        s[0], s[1], s[2] = st(0), st(1), st(2)
        s[0]  # read: 0 is now the most recently used
        s[3] = st(3)
        assert spill_files(s) == {"client-1.pt"}
        s[2] = st(22)  # stored again: most recently used
        s[4] = st(4)
        assert spill_files(s) == {"client-1.pt", "client-0.pt"}
        assert in_memory(s) == {3, 2, 4}
        s.get(1)  # read back: 1 in, the least recently used (3) out
        assert spill_files(s) == {"client-0.pt", "client-3.pt"}
        assert in_memory(s) == {2, 4, 1}  # and 3, not 2, went: 2 was stored after 3
        assert 0 in s and 3 in s and s.loaded == 1  # `in` never reads the disk


def test_sgd_momentum_state_dict_round_trips() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    saved = opt.state_dict()
    with ClientStates(memory_mb=1e-6) as s:  # every state but the newest spills
        s[0] = {"optimizer": saved}
        s[1] = {"pad": torch.zeros(1)}
        assert s.spilled == 1
        back = s[0]["optimizer"]
    assert back["param_groups"] == saved["param_groups"]
    assert back["state"].keys() == saved["state"].keys()
    for k, v in saved["state"].items():
        assert torch.equal(back["state"][k]["momentum_buffer"], v["momentum_buffer"])
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    fresh.load_state_dict(back)
    assert fresh.state_dict()["param_groups"] == saved["param_groups"]


@pytest.mark.parametrize("bad", [object(), np.float64(1.0), {"x": range(3)}])
def test_unloadable_objects_are_refused_naming_the_client(bad) -> None:
    with ClientStates(memory_mb=1.0) as s:
        with pytest.raises(ClientStateError, match=r"client 7's state .* torch.load"):
            s[7] = {"t": torch.zeros(2), "bad": bad}
        assert 7 not in s
    ClientStates()[7] = {"bad": bad}  # no budget, nothing spilled: accepted as before


def test_unloadable_object_put_in_later_is_refused_at_spill() -> None:
    with ClientStates(memory_mb=budget_for(1.5)) as s:
        s[5] = st(5)
        s[5]["later"] = object()  # in place, after the check on storing
        with pytest.raises(ClientStateError, match="client 5's state"):
            s[6] = st(6)
        assert 5 in in_memory(s) and spill_files(s) == set()  # kept, not lost


def test_unreadable_spill_file_names_the_client() -> None:
    with ClientStates(memory_mb=budget_for(1.5)) as s:
        s[3], s[4] = st(3), st(4)
        path = s.path / "client-3.pt"
        torch.save({"t": datetime.date(2020, 1, 1)}, path)  # weights_only refuses it
        with pytest.raises(ClientStateError, match=r"client 3's spilled state .*weights_only"):
            s[3]


def test_spill_dir_is_removed_on_close_and_on_garbage_collection(tmp_path: Path) -> None:
    s = ClientStates(memory_mb=budget_for(1))
    s[0], s[1] = st(0), st(1)
    made = s.path
    assert made is not None and made.is_dir()
    s.close()
    assert not made.exists() and len(s) == 0 and s.path is None
    s[0], s[1] = st(0), st(1)  # still usable: a new directory
    again = s.path
    assert again is not None and again != made and again.is_dir()
    del s
    gc.collect()
    assert not again.exists()

    with ClientStates(memory_mb=budget_for(1), spill_dir=tmp_path / "spill") as s:
        s[0], s[1] = st(0), st(1)
        assert s.path is not None and s.path.parent == tmp_path / "spill"
        assert (s.path / "client-0.pt").is_file()
    assert (tmp_path / "spill").is_dir() and not any((tmp_path / "spill").iterdir())


def test_a_forked_child_leaves_the_parents_spill_dir_alone() -> None:
    with ClientStates(memory_mb=budget_for(1)) as s:
        s[0], s[1] = st(0), st(1)
        # private: a pool worker's exit runs this inherited finalizer; no public call does
        child = multiprocessing.get_context("fork").Process(target=s._finalizer)
        child.start()  # as a process-pool worker that exits and runs the inherited finalizer
        child.join()
        assert child.exitcode == 0 and (s.path / "client-0.pt").is_file()


def test_budget_must_be_positive() -> None:
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="memory_mb"):
            ClientStates(memory_mb=bad)


# -- SCAFFOLD: the run with spills is bit-identical ----------------------------------------
def scaffold_run(rounds: int, state_memory_mb: float | None) -> Federation:
    task = make_tiny_task()
    return Federation(
        task,
        Scaffold(server_lr=0.8, clients_per_round=3),
        InProcessClients(task, seed=2, state_memory_mb=state_memory_mb),
        rounds=rounds,
        seed=2,
    )


TINY = 2.5 * 75 * 4 / MB  # the tiny MLP has 75 parameters: two and a half c_i fit


def test_scaffold_with_spills_is_bit_identical() -> None:
    full = scaffold_run(6, None)
    full.run()
    spilled = scaffold_run(6, TINY)
    spilled.run()
    states = spilled.backend.states
    assert states.spilled > 0 and states.loaded > 0 and states.stats()["on_disk"] > 0
    assert torch.equal(spilled.params, full.params)
    assert torch.equal(spilled.strategy.c, full.strategy.c)
    assert set(states) == set(full.backend.states)
    for cid in full.backend.states:
        assert torch.equal(states[cid]["scaffold_ci"], full.backend.states[cid]["scaffold_ci"])
    assert full.backend.states.path is None  # no budget: no disk
    path = states.path
    states.close()
    assert path is not None and not path.exists()


def test_kept_optimizer_state_with_spills_is_bit_identical() -> None:
    def run(budget: float | None) -> Federation:
        task = make_tiny_task(momentum=0.9)
        task.keep_optimizer_state = True  # SGD momentum buffers in each client's state
        backend = InProcessClients(task, seed=1, state_memory_mb=budget)
        fed = Federation(task, FedAvg(clients_per_round=4), backend, rounds=5, seed=1)
        fed.run()
        return fed

    full, spilled = run(None), run(TINY)
    assert spilled.backend.states.loaded > 0
    assert torch.equal(spilled.params, full.params)
    spilled.backend.states.close()


def test_scaffold_resume_with_spills_is_bit_identical(tmp_path: Path) -> None:
    full = scaffold_run(5, None).run()
    first = scaffold_run(2, TINY)
    first.run()
    on_disk = first.backend.states.stats()["on_disk"]
    assert on_disk > 0
    checkpoint = first.state_dict()
    assert first.backend.states.stats()["on_disk"] == on_disk  # to_dict did not reload them
    assert len(checkpoint["backend"]["clients"]) == len(first.backend.states)
    state = load_checkpoint(save_checkpoint(tmp_path / "ck.pt", checkpoint))
    second = scaffold_run(5, TINY)
    second.load_state_dict(state)
    assert second.backend.states.stats()["on_disk"] > 0  # spilled as they went back in
    assert torch.equal(second.run().params, full.params)


def test_config_key_builds_a_budgeted_backend(tmp_path: Path) -> None:
    overrides = run_overrides(
        tmp_path, **{"train.state_memory_mb": 0.5, "strategy.name": "scaffold"}
    )
    exp = Experiment.from_config(None, overrides)
    backend = exp.federation.backend
    assert isinstance(backend, InProcessClients) and backend.states.memory_mb == 0.5
    plain = Experiment.from_config(None, run_overrides(tmp_path, name="plain"))
    assert plain.federation.backend.states.memory_mb is None
    with pytest.raises(ConfigError, match="state_memory_mb"):
        Experiment.from_config(None, run_overrides(tmp_path, **{"train.state_memory_mb": 0}))


def test_distributed_backend_passes_the_budget_on(monkeypatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WORLD_SIZE", "1")
    task = make_tiny_task()
    backend = DistributedClients(task, 2, state_memory_mb=TINY)
    try:
        fed = Federation(
            task, Scaffold(server_lr=0.8, clients_per_round=3), backend, rounds=6, seed=2
        )
        params = fed.run().params
    finally:
        dist.destroy_process_group()
    assert backend.engine.states.memory_mb == TINY and backend.engine.states.spilled > 0
    assert torch.equal(params, scaffold_run(6, None).run().params)
    backend.engine.states.close()
