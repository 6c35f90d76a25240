"""The round loop end to end: determinism, states, failures, bad updates, stop rules,
per-client state, checkpoints and resume, and the run directory."""

from __future__ import annotations

import json
import logging
import math
import sys
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import CLIENT_SIZES, make_tiny_task, run_overrides, tiny_dataset, tiny_mlp

import fedloom
from fedloom import (
    Callback,
    ClassificationTask,
    ClientError,
    ClientUpdate,
    Experiment,
    FedAvg,
    Federation,
    RoundPlan,
    RoundState,
    load_checkpoint,
    save_checkpoint,
)
from fedloom.backend import BackendBase
from fedloom.observe import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent / "algorithms"))
from quadratic import QuadraticTask

NUM_CLIENTS = len(CLIENT_SIZES)


def federation(task=None, strategy=None, **kwargs: Any) -> Federation:
    kwargs.setdefault("rounds", 3)
    kwargs.setdefault("seed", 0)
    return Federation(task or make_tiny_task(), strategy or FedAvg(clients_per_round=3), **kwargs)


def without_seconds(records: list[dict]) -> list[dict]:
    timing = {"seconds", "client_seconds"}
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


class Recorder(Callback):
    """Remembers every hook call, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.updates: list[tuple[int, int, str | None]] = []
        self.errors: list[BaseException] = []
        self.plans: list[list[int]] = []

    def on_start(self, fed) -> None:
        self.events.append(("start",))

    def on_state(self, fed, state, round) -> None:
        self.events.append((state, round))
        if state is RoundState.DISTRIBUTE:
            self.plans.append(list(fed.plan.clients))

    def on_update(self, fed, update, error) -> None:
        self.updates.append((update.round, update.client_id, error))

    def on_round_end(self, fed, record) -> None:
        self.events.append(("round_end", record["round"]))

    def on_finish(self, fed, result) -> None:
        self.events.append(("finish", result.stop_reason))

    def on_error(self, fed, exc) -> None:
        self.errors.append(exc)


# -- determinism and the state machine ---------------------------------------------------
def test_same_seed_same_result_different_seed_different_result() -> None:
    a = federation(seed=1).run()
    b = federation(seed=1).run()
    c = federation(seed=2).run()
    assert torch.equal(a.params, b.params)
    assert without_seconds(a.history) == without_seconds(b.history)
    assert not torch.equal(a.params, c.params)
    assert a.rounds == 3 and a.stop_reason == "max_rounds" and len(a.history) == 3


def test_round_states_in_order() -> None:
    rec = Recorder()
    result = federation(rounds=2, callbacks=[rec]).run()
    per_round = [
        RoundState.START_ROUND,
        RoundState.DISTRIBUTE,
        RoundState.TRAIN,
        RoundState.UPLOAD,
        RoundState.AGGREGATE,
        RoundState.CLOSE_ROUND,
    ]
    expected: list[tuple] = [("start",)]
    for rnd in (1, 2):
        expected += [(s, rnd) for s in per_round] + [("round_end", rnd)]
    expected += [(RoundState.FINISH, 2), ("finish", "max_rounds")]
    assert rec.events == expected
    assert [(r, c) for r, c, _ in rec.updates] == [
        (rnd, c) for rnd, plan in zip((1, 2), rec.plans) for c in plan
    ]
    assert all(e is None for _, _, e in rec.updates)
    assert result.rounds == 2 and rec.errors == []


LINE = [[(1.0, 2.0), (2.0, 1.0)], [(1.0, -1.0)], [(3.0, 3.0), (1.0, 0.0), (2.0, 2.0)]]


def test_round_records_match_rounds_worked_by_hand() -> None:
    """Each client takes one SGD step from the global w; its loss is read before the step;
    FedAvg weights by samples. The record holds those numbers, not merely some numbers."""
    lr, w = 0.1, 0.5
    result = Federation(QuadraticTask(LINE, lr, w), FedAvg(fraction=1.0), rounds=2, seed=0).run()
    n = [len(pts) for pts in LINE]
    def message(**meta: int) -> int:  # the wire format's bytes, metadata included
        weight = {"weight": torch.zeros(1, 1, dtype=torch.float64)}
        return len(safetensors.torch.save(weight, {k: str(v) for k, v in meta.items()}))

    for rec in result.history:
        losses = [sum(0.5 * (w * x - y) ** 2 for x, y in pts) / len(pts) for pts in LINE]
        grads = [sum(x * (w * x - y) for x, y in pts) / len(pts) for pts in LINE]
        w = sum(k * (w - lr * g) for k, g in zip(n, grads)) / sum(n)
        assert rec["clients"] == 3 and rec["samples"] == 6 and rec["rejected"] == 0
        assert rec["train_loss"] == pytest.approx(sum(k * v for k, v in zip(n, losses)) / 6)
        assert rec["w"] == pytest.approx(w, rel=1e-12)  # evaluated after the aggregation
        r = rec["round"]  # one model each way: published with its version, sent back with its round
        assert rec["bytes_down"] == 3 * message(round=r, version=r - 1)
        assert rec["bytes_up"] == 3 * message(round=r)
    assert float(result.params[0]) == pytest.approx(w, rel=1e-12)
    assert result.final_metrics == {"w": result.history[-1]["w"]}


def test_final_metrics_are_the_final_models_scored_by_hand() -> None:
    """Accuracy and test loss of the returned parameters, recomputed with plain torch."""
    task = make_tiny_task()
    fed = federation(task=task, strategy=FedAvg(), rounds=2)
    before = task.evaluate(fed.model)
    result = fed.run()
    model = tiny_mlp()
    model.load_state_dict(fed.spec.unflatten(result.params))
    data = tiny_dataset()
    with torch.no_grad():
        out = model(data.test_x)
    accuracy = float((out.argmax(1) == data.test_y).double().mean())
    loss = float(torch.nn.functional.cross_entropy(out.double(), data.test_y))
    assert result.final_metrics["accuracy"] == pytest.approx(accuracy)
    assert result.final_metrics["test_loss"] == pytest.approx(loss, rel=1e-6)
    assert loss < before["test_loss"]  # and two rounds did lower it


# -- user code that fails -----------------------------------------------------------------
class FailingTask(ClassificationTask):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.raised: BaseException | None = None

    def train_step(self, model, batch, ctx):
        if ctx.client_id == 3 and ctx.round == 2:
            self.raised = ZeroDivisionError("bad batch in user code")
            raise self.raised
        return super().train_step(model, batch, ctx)


def test_client_error_names_client_and_round_and_keeps_the_cause() -> None:
    task = make_tiny_task(FailingTask)
    rec = Recorder()
    fed = federation(task=task, strategy=FedAvg(), rounds=3, callbacks=[rec])
    with pytest.raises(ClientError) as err:
        fed.run()
    e = err.value
    assert "client 3" in str(e) and "round 2" in str(e)
    assert "ZeroDivisionError" in str(e) and "bad batch in user code" in str(e)
    assert e.client_id == 3 and e.round == 2
    assert e.__cause__ is task.raised is not None
    frames = [f.name for f in traceback.extract_tb(e.__cause__.__traceback__)]
    assert "train_step" in frames  # the user's frame is still in the traceback
    assert rec.errors == [e]
    assert fed.round == 1 and len(fed.history) == 1
    assert not any(ev[0] == "finish" for ev in rec.events)


# -- bad updates are rejected, the round goes on -------------------------------------------
class NaNForClient2(ClassificationTask):
    def train_an_epoch(self, model, optimizer, ctx):
        m = super().train_an_epoch(model, optimizer, ctx)
        if ctx.client_id == 2:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return m


class AllButClient2(FedAvg):
    def configure(self, round, available, rng):
        return RoundPlan([c for c in available if c != 2], {})


def test_nan_update_is_rejected_logged_and_counted(caplog) -> None:
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        bad = federation(
            task=make_tiny_task(NaNForClient2), strategy=FedAvg(), callbacks=[rec]
        ).run()
    for r in bad.history:
        assert r["rejected"] == 1 and r["clients"] == NUM_CLIENTS - 1
        assert r["samples"] == sum(CLIENT_SIZES) - CLIENT_SIZES[2]
    assert caplog.text.count("rejected update of client 2") == 3
    assert "NaN or Inf" in caplog.text
    errors = {(r, c): e for r, c, e in rec.updates}
    assert errors[(1, 2)] is not None and "NaN" in errors[(1, 2)]
    assert all(e is None for (r, c), e in errors.items() if c != 2)
    assert bool(torch.isfinite(bad.params).all())
    # the round went on with the others exactly as if client 2 had not been asked
    clean = federation(task=make_tiny_task(), strategy=AllButClient2()).run()
    assert torch.equal(bad.params, clean.params)
    for a, b in zip(bad.history, clean.history):
        assert a["train_loss"] == b["train_loss"] and a["accuracy"] == b["accuracy"]


class ScriptedBackend(BackendBase):
    """A backend whose clients send the given buffers."""

    def __init__(self, spec, sends: list[tuple[torch.Tensor, int]]) -> None:
        self.spec, self.sends = spec, sends

    def available_clients(self, round: int) -> list[int]:
        return list(range(len(self.sends)))

    def distribute(self, round: int, plan: RoundPlan, global_params: torch.Tensor) -> None:
        self.round, self.plan = round, plan

    def collect(self) -> Iterator[ClientUpdate]:
        for cid in self.plan.clients:
            params, n = self.sends[cid]
            yield ClientUpdate(cid, params, n, {"loss": 1.0}, self.round)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_malformed_updates_from_a_backend_are_rejected(caplog) -> None:
    task = make_tiny_task()
    probe = federation(task=task, rounds=1)
    numel = probe.spec.numel
    inf = torch.ones(numel)
    inf[-1] = float("inf")
    sends = [
        (torch.full((numel,), 2.0), 5),  # the only good one
        (torch.ones(numel - 1), 5),  # wrong size
        (torch.ones(numel, dtype=torch.float64), 5),  # wrong dtype
        (torch.ones(numel), 0),  # no samples
        (inf, 5),  # Inf
    ]
    fed = Federation(task, FedAvg(), ScriptedBackend(probe.spec, sends), rounds=1, seed=0)
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        result = fed.run()
    assert result.history[0]["clients"] == 1 and result.history[0]["rejected"] == 4
    assert torch.equal(result.params, torch.full((numel,), 2.0))
    for cid in (1, 2, 3, 4):
        assert f"rejected update of client {cid}" in caplog.text
    assert "num_samples must be > 0" in caplog.text


def test_every_update_rejected_keeps_the_model() -> None:
    task = make_tiny_task()
    probe = federation(task=task, rounds=1)
    before = probe.params.clone()
    sends = [(torch.full((probe.spec.numel,), float("nan")), 3)] * 2
    fed = Federation(task, FedAvg(), ScriptedBackend(probe.spec, sends), rounds=1, seed=0)
    result = fed.run()
    assert torch.equal(result.params, before)
    assert result.history[0]["rejected"] == 2 and result.history[0]["clients"] == 0
    assert math.isnan(result.history[0]["train_loss"])


# -- stop rules ------------------------------------------------------------------------------
class ScriptedEval(ClassificationTask):
    """Accuracy 0.1, 0.2, 0.3, ... and test loss 1, 1/2, 1/3, ... per evaluation."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.evals = 0

    def evaluate(self, model):
        self.evals += 1
        return {"accuracy": self.evals / 10, "test_loss": 1 / self.evals}


@pytest.mark.parametrize(
    "target, eval_every, rounds",
    [
        (("accuracy", 0.3), 1, 3),
        (("test_loss", 0.25), 1, 4),
        (("accuracy", 0.2), 3, 6),  # evaluations only in rounds 3 and 6
    ],
)
def test_target_stops_the_run(target, eval_every: int, rounds: int) -> None:
    rec = Recorder()
    fed = federation(
        task=make_tiny_task(ScriptedEval),
        rounds=10,
        target=target,
        eval_every=eval_every,
        callbacks=[rec],
    )
    result = fed.run()
    assert result.stop_reason == "target"
    assert result.rounds == rounds == len(result.history)
    assert rec.events[-2:] == [(RoundState.FINISH, rounds), ("finish", "target")]


def test_unreached_target_runs_all_rounds_and_callback_can_stop() -> None:
    result = federation(task=make_tiny_task(ScriptedEval), rounds=2, target=("accuracy", 0.9)).run()
    assert result.stop_reason == "max_rounds" and result.rounds == 2

    class StopAfter2(Callback):
        def on_round_end(self, fed, record):
            return record["round"] == 2

    result = federation(rounds=5, callbacks=[StopAfter2()]).run()
    assert result.stop_reason == "callback" and result.rounds == 2


# -- per-client state ----------------------------------------------------------------------
class Counting(ClassificationTask):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int, int]] = []

    def train_an_epoch(self, model, optimizer, ctx):
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        ctx.state.setdefault("rounds", []).append(ctx.round)
        self.seen.append((ctx.round, ctx.client_id, ctx.state["n"]))
        return super().train_an_epoch(model, optimizer, ctx)


def test_client_state_persists_across_rounds() -> None:
    task = make_tiny_task(Counting)
    rec = Recorder()
    fed = federation(task=task, strategy=FedAvg(clients_per_round=3), rounds=4, callbacks=[rec])
    fed.run()
    times = Counter(c for plan in rec.plans for c in plan)
    assert sum(times.values()) == 12
    states = fed.backend.states
    assert {c: s["n"] for c, s in states.items()} == dict(times)
    for rnd, plan in enumerate(rec.plans, start=1):
        for c in plan:
            assert rnd in states[c]["rounds"]
    # the n-th time a client trains, it sees its count n
    count: Counter = Counter()
    for rnd, cid, n in task.seen:
        count[cid] += 1
        assert n == count[cid], (rnd, cid)
    saved = fed.state_dict()["backend"]["clients"]
    assert {int(c): s["n"] for c, s in saved.items()} == dict(times)


class MomentumProbe(ClassificationTask):
    keep_optimizer_state = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, momentum=0.9, **kwargs)
        self.at_start: dict[tuple[int, int], list] = {}
        self.at_end: dict[tuple[int, int], list] = {}

    def _buffers(self, model, optimizer) -> list:
        out = []
        for p in model.parameters():
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            out.append(None if buf is None else buf.clone())
        return out

    def train_an_epoch(self, model, optimizer, ctx):
        self.at_start[(ctx.round, ctx.client_id)] = self._buffers(model, optimizer)
        m = super().train_an_epoch(model, optimizer, ctx)
        self.at_end[(ctx.round, ctx.client_id)] = self._buffers(model, optimizer)
        return m


def test_keep_optimizer_state_carries_momentum_per_client() -> None:
    task = make_tiny_task(MomentumProbe)
    fed = federation(task=task, strategy=FedAvg(), rounds=2)
    kept = fed.run()
    for cid in range(NUM_CLIENTS):
        assert all(b is None for b in task.at_start[(1, cid)])
        end1, start2 = task.at_end[(1, cid)], task.at_start[(2, cid)]
        assert all(b is not None for b in start2)
        for a, b in zip(end1, start2):
            assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(task.at_end[(1, 0)], task.at_end[(1, 1)]))
    assert "optimizer" in fed.backend.states[0]
    # without keep_optimizer_state every round starts from fresh momentum
    fresh_task = make_tiny_task(MomentumProbe)
    fresh_task.keep_optimizer_state = False
    fresh = federation(task=fresh_task, strategy=FedAvg(), rounds=2).run()
    assert all(b is None for b in fresh_task.at_start[(2, 0)])
    assert not torch.equal(kept.params, fresh.params)


class PersonalHead(ClassificationTask):
    personal_layers = ("2",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_start: dict[tuple[int, int], torch.Tensor] = {}
        self.head_end: dict[tuple[int, int], torch.Tensor] = {}

    def train_an_epoch(self, model, optimizer, ctx):
        self.head_start[(ctx.round, ctx.client_id)] = model[2].weight.detach().clone()
        m = super().train_an_epoch(model, optimizer, ctx)
        self.head_end[(ctx.round, ctx.client_id)] = model[2].weight.detach().clone()
        return m


def test_personal_layers_stay_per_client_and_are_not_averaged() -> None:
    task = make_tiny_task(PersonalHead)
    fed = federation(task=task, strategy=FedAvg(), rounds=3)
    init_head = fed.model[2].weight.detach().clone()
    fed.run()
    assert fed.spec.names == ["0.weight", "0.bias"]
    assert fed.params.numel() == 8 * 6 + 6
    for cid in range(NUM_CLIENTS):
        assert torch.equal(task.head_start[(1, cid)], init_head)
        for rnd in (2, 3):
            assert torch.equal(task.head_start[(rnd, cid)], task.head_end[(rnd - 1, cid)])
        assert torch.equal(fed.backend.states[cid]["personal"]["2.weight"], task.head_end[(3, cid)])
    ends = [task.head_end[(3, c)] for c in range(NUM_CLIENTS)]
    assert not torch.equal(ends[0], ends[1])
    mean = torch.stack(ends).mean(0)
    assert not any(torch.allclose(e, mean) for e in ends)
    # the server's copy of the personal layer is never touched
    assert torch.equal(fed.model[2].weight.detach(), init_head)


class CountingMomentum(Counting):
    keep_optimizer_state = True


@pytest.mark.parametrize("task_cls", [CountingMomentum, PersonalHead])
def test_federation_checkpoint_resume_with_client_state(task_cls, tmp_path: Path) -> None:
    def make(rounds: int) -> Federation:
        task = make_tiny_task(task_cls, momentum=0.5)
        return federation(task=task, strategy=FedAvg(clients_per_round=4), rounds=rounds)

    full = make(4).run()
    first = make(2)
    first.run()
    path = save_checkpoint(tmp_path / "ck.pt", first.state_dict())
    state = load_checkpoint(path)  # weights_only: client state must be plain data
    assert state["round"] == 2 and state["backend"]["clients"]
    second = make(4)
    second.load_state_dict(state)
    resumed = second.run()
    assert torch.equal(resumed.params, full.params)
    assert without_seconds(resumed.history) == without_seconds(full.history)
    with pytest.raises(ValueError, match="seed"):
        federation(seed=5).load_state_dict(state)


def test_federation_argument_validation() -> None:
    with pytest.raises(ValueError, match="rounds"):
        federation(rounds=0)
    with pytest.raises(ValueError, match="eval_every"):
        federation(eval_every=0)


# -- Experiment on mnist5k: resume equals uninterrupted, and the run directory ---------------
def resume_overrides(out_dir: Path) -> list[str]:
    return run_overrides(
        out_dir,
        name="mnist",
        rounds=4,
        **{
            "data.num_clients": 20,
            "data.partition": "dirichlet",
            "strategy.clients_per_round": 5,
            "model.name": "logreg",
        },
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Experiment, fedloom.RunResult]:
    exp = Experiment.from_config(None, resume_overrides(tmp_path_factory.mktemp("a")))
    return exp, exp.run()


class InterruptAfter(Callback):
    def __init__(self, rnd: int) -> None:
        self.rnd = rnd

    def on_round_end(self, fed, record):
        if record["round"] == self.rnd:
            raise KeyboardInterrupt


def test_resume_equals_uninterrupted(uninterrupted, tmp_path: Path) -> None:
    exp_a, result_a = uninterrupted
    overrides = [*resume_overrides(tmp_path), "output.figures=false"]
    exp_b = Experiment.from_config(None, overrides)
    assert exp_b.federation.callbacks[-1] is exp_b.recorder
    exp_b.federation.callbacks.append(InterruptAfter(2))
    with pytest.raises(KeyboardInterrupt):
        exp_b.run()
    assert [r["round"] for r in read_metrics(exp_b.run_dir)] == [1, 2]
    assert load_checkpoint(exp_b.recorder.checkpoint_path)["round"] == 2

    resumed = Experiment.from_config(None, overrides, resume=True)
    assert resumed.federation.round == 2
    result_b = resumed.run()
    assert result_b.rounds == 4 and result_b.stop_reason == "max_rounds"
    assert torch.equal(result_b.params, result_a.params)
    assert result_b.final_metrics == result_a.final_metrics
    metrics_a, metrics_b = read_metrics(exp_a.run_dir), read_metrics(resumed.run_dir)
    assert [r["round"] for r in metrics_b] == [1, 2, 3, 4]
    assert without_seconds(metrics_b) == without_seconds(metrics_a)
    assert without_seconds(result_b.history) == without_seconds(result_a.history)


def test_run_directory_contents(uninterrupted) -> None:
    exp, result = uninterrupted
    d = exp.run_dir
    assert d.parent.is_dir() and d.name == "mnist"
    config = json.loads((d / "config.json").read_text())
    assert config["rounds"] == 4 and config["model"]["name"] == "logreg"
    records = read_metrics(d / "metrics.jsonl")
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert all(r["clients"] == 5 and "accuracy" in r for r in records)
    assert len(list((d / "tb").glob("events.out.tfevents.*"))) >= 1
    for png in ("accuracy.png", "loss.png", "partition.png"):
        data = (d / "figures" / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000, png
    params, meta = fedloom.decode((d / "model.safetensors").read_bytes(), exp.federation.spec)
    assert torch.equal(params, result.params)
    assert meta["round"] == "4"
    report = json.loads((d / "report.json").read_text())
    assert report["rounds"] == 4 and report["stop_reason"] == "max_rounds"
    assert report["final_metrics"] == result.final_metrics
    assert report["final_accuracy"] == result.final_metrics["accuracy"]
    assert "mnist" in (d / "report.md").read_text()
    checkpoint = load_checkpoint(d / "checkpoint.pt")
    assert checkpoint["round"] == 4 and torch.equal(checkpoint["params"], result.params)
    # the model learned something on real data (logreg on mnist5k, 4 short rounds)
    assert result.final_metrics["accuracy"] > 0.3
    assert np.isfinite(result.final_metrics["test_loss"])


def test_a_backend_without_the_optional_hooks_is_refused_naming_them():
    class Bare:  # the five required methods only
        def available_clients(self, round):
            return [0]

        def distribute(self, round, plan, global_params):
            pass

        def collect(self):
            return iter(())

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    with pytest.raises(TypeError, match=r"\['close', 'round_stats', 'node_metrics'\].*BackendBase"):
        federation(task=make_tiny_task(), backend=Bare())
