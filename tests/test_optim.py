"""fedloom.optim: torch's SGD and Adam, bit for bit, without importing torch._dynamo."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fedloom
from fedloom import optim as fo

SGD_CONFIGS = [
    {"lr": 0.1},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    {"lr": 0.05, "momentum": 0.5, "dampening": 0.3, "weight_decay": 1e-2},
    {"lr": 0.05, "momentum": 0.9, "foreach": True, "maximize": True},
]
ADAM_CONFIGS = [
    {"lr": 1e-2},
    {"lr": 1e-2, "amsgrad": True, "weight_decay": 1e-2},
    {"lr": 1e-2, "betas": (0.8, 0.95), "foreach": False},
]
CASES = [(fo.SGD, torch.optim.SGD, c) for c in SGD_CONFIGS] + [
    (fo.Adam, torch.optim.Adam, c) for c in ADAM_CONFIGS
]
IDS = [f"{ours.__name__}-{i}" for i, (ours, _, _) in enumerate(CASES)]


@pytest.fixture(params=["eager", "torch"])
def path(request, monkeypatch) -> str:
    """Both of fedloom.optim's paths: torch's undecorated methods (what runs while
    torch._dynamo is not imported) and torch's decorated ones (once it is, or compiling)."""
    # private: which path runs depends on process-wide torch state; only this switch picks one
    monkeypatch.setattr(fo, "_torch_path", lambda: request.param == "torch")
    return request.param


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)


def train(m: nn.Module, opt: torch.optim.Optimizer, steps: range) -> list[float]:
    losses = []
    for i in steps:
        x, y = batch(i)
        opt.zero_grad()

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            return loss

        if i % 2:
            losses.append(float(opt.step(closure).detach()))
        else:
            closure()
            assert opt.step() is None
        assert torch.is_grad_enabled()
    return losses


def assert_same(a: Any, b: Any) -> None:
    """Equal nested state (tensors bit for bit)."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def pair(ours: type, theirs: type, config: dict[str, Any]):
    m1, m2 = model(), model()
    return m1, ours(m1.parameters(), **config), m2, theirs(m2.parameters(), **config)


@pytest.mark.parametrize(("ours", "theirs", "config"), CASES, ids=IDS)
def test_same_updates_and_state_as_torch(path, ours, theirs, config) -> None:
    m1, o1, m2, o2 = pair(ours, theirs, config)
    assert isinstance(o1, theirs) and o1.defaults == o2.defaults
    assert train(m1, o1, range(6)) == train(m2, o2, range(6))
    assert_same(dict(m1.named_parameters()), dict(m2.named_parameters()))
    assert_same(o1.state_dict(), o2.state_dict())


@pytest.mark.parametrize(("ours", "theirs", "config"), CASES, ids=IDS)
def test_state_dicts_load_across(path, ours, theirs, config) -> None:
    m1, o1, m2, o2 = pair(ours, theirs, config)
    train(m1, o1, range(3))
    train(m2, o2, range(3))
    # torch -> fedloom: a fresh fedloom optimizer continues torch's run, and back again
    # (deep copies: load_state_dict keeps the very tensors it is given as its state)
    m3 = model()
    m3.load_state_dict(m2.state_dict())
    o3 = ours(m3.parameters(), **config)
    o3.load_state_dict(copy.deepcopy(o2.state_dict()))
    m4 = model()
    m4.load_state_dict(m1.state_dict())
    o4 = theirs(m4.parameters(), **config)
    o4.load_state_dict(copy.deepcopy(o1.state_dict()))
    for m, o in ((m1, o1), (m2, o2), (m3, o3), (m4, o4)):
        train(m, o, range(3, 6))
    for m in (m2, m3, m4):
        assert_same(dict(m1.named_parameters()), dict(m.named_parameters()))
    for o in (o2, o3, o4):
        assert_same(o1.state_dict(), o.state_dict())


def test_zero_grad(path) -> None:
    m = model()
    opt = fo.SGD(m.parameters(), lr=0.1)
    nn.functional.cross_entropy(m(batch(0)[0]), batch(0)[1]).backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize(
    ("ours", "theirs"), [(fo.SGD, torch.optim.SGD), (fo.Adam, torch.optim.Adam)]
)
def test_param_group_added_later(path, ours, theirs) -> None:
    head1, head2 = nn.Linear(3, 3), nn.Linear(3, 3)
    head2.load_state_dict(head1.state_dict())
    m1, o1, m2, o2 = pair(ours, theirs, {"lr": 0.05, "weight_decay": 1e-3})
    train(m1, o1, range(2))
    train(m2, o2, range(2))
    o1.add_param_group({"params": head1.parameters(), "lr": 0.01})
    o2.add_param_group({"params": head2.parameters(), "lr": 0.01})
    assert o1.param_groups[1]["lr"] == 0.01 and o1.param_groups[1]["weight_decay"] == 1e-3
    for m, h, o in ((m1, head1, o1), (m2, head2, o2)):
        for i in range(3):
            x, y = batch(i)
            o.zero_grad()
            nn.functional.cross_entropy(h(m(x)), y).backward()
            o.step()
    assert_same(dict(head1.named_parameters()), dict(head2.named_parameters()))
    assert_same(o1.state_dict(), o2.state_dict())
    with pytest.raises(ValueError, match="some parameters appear in more than one"):
        o1.add_param_group({"params": head1.parameters()})


def test_lr_schedulers_drive_it_as_torchs(path) -> None:
    """A StepLR (lr) and a OneCycleLR (lr and Adam's betas) give torch's schedule and steps."""
    for ours, theirs, sched in (
        (fo.SGD, torch.optim.SGD, lambda o: torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5)),
        (
            fo.Adam,
            torch.optim.Adam,
            lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=6),
        ),
    ):
        m1, o1, m2, o2 = pair(ours, theirs, {"lr": 0.1})
        s1, s2 = sched(o1), sched(o2)
        for i in range(6):
            train(m1, o1, range(i, i + 1))
            train(m2, o2, range(i, i + 1))
            s1.step()
            s2.step()
            assert s1.get_last_lr() == s2.get_last_lr()
        assert_same(m1.state_dict(), m2.state_dict())
        assert_same(o1.state_dict(), o2.state_dict())


def test_step_hooks_run_once_each(path) -> None:
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # hooks torch's SGD.step
    assert getattr(torch.optim.SGD.step, "hooked", False)

    # private _eager/_NoDynamoImport: how fedloom.optim makes its classes, applied to one more
    @fo._eager(torch.optim.SGD)  # a class made after torch's step got its profiling wrapper
    class Late(fo._NoDynamoImport, torch.optim.SGD):
        pass

    for cls in (fo.SGD, Late):
        m = model()
        opt = cls(m.parameters(), lr=0.1)
        calls: list[str] = []
        opt.register_step_pre_hook(lambda *a, calls=calls: calls.append("pre"))
        opt.register_step_post_hook(lambda *a, calls=calls: calls.append("post"))
        train(m, opt, range(2))
        assert calls == ["pre", "post"] * 2, cls


def test_an_unknown_wrapper_gets_torchs_method() -> None:
    class Plain(torch.optim.SGD):  # methods that are not torch's wrappers
        def step(self, closure=None):
            return super().step(closure)

        def zero_grad(self, set_to_none: bool = True) -> None:
            super().zero_grad(set_to_none)

    @fo._eager(Plain)  # private: the unwrapping of torch's wrappers, on a class without them
    class Ours(fo._NoDynamoImport, Plain):
        pass

    assert Ours._raw["zero_grad"] is None and Ours._raw["add_param_group"] is not None
    assert "step" not in Ours.__dict__ and Ours.step is Plain.step
    assert fo._unwrap(Plain.step, "_use_grad", "torch/optim/optimizer.py") is None
    assert fo.SGD._raw["state_dict"] is not None and "step" in fo.SGD.__dict__


def test_exported() -> None:
    assert fedloom.optim is fo and "optim" in dir(fedloom)
    assert fo.SGD.__module__ == "fedloom.optim" and issubclass(fo.Adam, torch.optim.Adam)


# -- torch._dynamo stays unimported ------------------------------------------------------------
def run_python(code: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_optimizers_do_not_import_dynamo(tmp_path: Path) -> None:
    out = run_python(
        """
        import copy
        import sys
        import torch
        from torch import nn
        from fedloom import optim

        def run(cls, **kw):
            torch.manual_seed(0)
            m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            opt = cls(m.parameters(), **kw)
            for i in range(3):
                opt.zero_grad()
                m(torch.ones(5, 4) * i).pow(2).mean().backward()
                opt.step()
            fresh = cls(m.parameters(), **kw)
            fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
            fresh.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
            return [p.detach().clone() for p in m.parameters()], opt.state_dict()

        ours = [run(optim.SGD, lr=0.1, momentum=0.9), run(optim.Adam, lr=0.01, amsgrad=True)]
        assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
        theirs = [run(torch.optim.SGD, lr=0.1, momentum=0.9),
                  run(torch.optim.Adam, lr=0.01, amsgrad=True)]
        assert "torch._dynamo" in sys.modules  # torch's own optimizers do import it
        for (p1, s1), (p2, s2) in zip(ours, theirs):
            assert all(torch.equal(a, b) for a, b in zip(p1, p2))
            assert str(s1) == str(s2)
        print("OK")
        """,
        tmp_path,
    )
    assert "OK" in out


def test_a_run_does_not_import_dynamo(tmp_path: Path) -> None:
    config = {
        "name": "nodynamo",
        "rounds": 1,
        "data": {"dataset": "mnist5k", "num_clients": 6, "partition": "iid"},
        "model": {"name": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 50, "momentum": 0.9},
        "strategy": {"clients_per_round": 3},
        "output": {
            "dir": (tmp_path / "runs").as_posix(),
            "progress": False,
            "figures": False,
            "tensorboard": False,
        },
    }
    out = run_python(
        f"""
        import sys
        import fedloom
        result = fedloom.run({config!r})
        assert result.history[-1]["clients"] == 3, result.history
        print("dynamo", "torch._dynamo" in sys.modules)
        """,
        tmp_path,
    )
    assert "dynamo False" in out


def compiled_steps(cls: type[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """Three steps of ``cls`` inside ``torch.compile(backend="eager")``: losses, parameters."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    m = model()
    opt = cls(m.parameters(), lr=0.1, momentum=0.9)

    @torch.compile(backend="eager")
    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    losses = [step(*batch(i)) for i in range(3)]
    return losses + [p.detach().clone() for p in m.parameters()]


def test_under_torch_compile() -> None:
    """Compiled code (backend="eager") steps a fedloom SGD as it steps torch's."""
    ours, theirs = compiled_steps(fo.SGD), compiled_steps(torch.optim.SGD)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
