"""Chaos: the hardened runtime under fuzz, outsiders, insiders and kill -9 (issue 11).

The matrix:

* wire fuzz: every decoder fed mutated bytes (:mod:`chaos_fuzz`), 50,000 cases;
* real runs, each an aggregator process and client processes on 127.0.0.1 (mnist5k shards,
  logreg, FedAvg, tokens on), compared bit for bit with the in-process simulation:

  - ``baseline``: unattacked;
  - ``outsider``: gRPC calls with missing, wrong and malformed identities, 300 held Upload
    streams without a token, 200 held TCP connections each to the gRPC and the bulk port
    (slowloris), random bytes to both ports, bad bulk headers;
  - ``insider``: a fifth client with a valid token sending bad fields, NaN / 3e38 models,
    2^62 samples, duplicates and floods (:class:`chaos_attacks.Insider`); its reference is
    the simulation in which that client's every update is rejected (against the plain
    simulation it is not identical when the attacker was sampled, reported separately);
  - ``kill_client``: kill -9 of a random client at a random time, restarted at once;
  - ``kill_aggregator``: kill -9 of the aggregator at a random time, restarted with
    ``--resume`` (or afresh with ``--overwrite`` when no checkpoint was written yet).

Per run: finished, bit_identical, server_crashed (a traceback in its log or a non-zero exit),
seconds. ``--quick``: 2,000 fuzz cases, one seed per kill scenario; default: 50,000 and 3.

    .venv/bin/python benchmarks/chaos.py [--quick] [--seeds 3] [--fuzz-cases N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chaos_attacks as attacks
from chaos_fuzz import run_wire_fuzz
from common import print_headlines, write_results
from procs import Proc, free_port, read_metrics

from fedloom import decode
from fedloom.runtime.gate import TASK_KEY
from fedloom.runtime.proto import fedloom_pb2 as pb
from fedloom.update import ClientUpdate

TASK_ID = "chaos"
RUN_LIMIT = 240.0  # seconds one run may take before it counts as wedged
INSIDER = 4  # the insider's client id (its run has 5 clients; 0-3 are honest)


def config(
    out: Path,
    name: str,
    *,
    clients: int = 4,
    rounds: int = 5,
    per_round: int = 3,
    epochs: int = 30,
    max_norm: float | None = None,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "rounds": rounds,
        "data": {"dataset": "mnist5k", "num_clients": clients, "partition": "shards"},
        "model": {"name": "logreg"},
        "train": {"local_epochs": epochs, "batch_size": 10, "lr": 0.05},  # ~1 s rounds
        "strategy": {"name": "fedavg", "clients_per_round": per_round},
        "output": {"dir": out.as_posix(), "progress": False, "tensorboard": False,
                   "figures": False},
        "runtime": {
            "task_id": TASK_ID,
            "min_clients": clients,
            "heartbeat_timeout": 20.0,
            "round_timeout": 45.0,
            "short_round": "retry",
            "retry_for": 120.0,
            "tokens": {str(i): f"tok-{i}-{random.Random(i).getrandbits(64):x}"
                       for i in range(clients)},
        },
    }  # fmt: skip
    if max_norm is not None:
        cfg["strategy"]["options"] = {"max_update_norm": max_norm}
    return cfg


# -- references: in-process simulations ---------------------------------------------------------
class Rejecting:
    """The in-process backend, with every update of ``rejected`` clients turned into a
    rejected one (as the aggregator files an attacker's bad upload)."""

    def __init__(self, inner, rejected: set[int]):
        self.inner, self.rejected = inner, rejected

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def collect(self):
        for u in self.inner.collect():
            if u.client_id in self.rejected:
                yield ClientUpdate(
                    u.client_id, torch.empty(0), 0, {}, u.round, extras={"error": "attacker"}
                )
            else:
                yield u


def simulate(cfg: dict[str, Any], out: Path, rejected: set[int] = frozenset()):
    """(final params, spec, history) of the in-process simulation of ``cfg``."""
    from fedloom import Experiment
    from fedloom.simulation import InProcessClients

    cfg = json.loads(json.dumps(cfg))
    cfg["output"]["dir"] = out.as_posix()
    backend = None
    if rejected:
        backend = lambda c, task: Rejecting(InProcessClients(task, c.seed), set(rejected))  # noqa: E731
    exp = Experiment.from_config(cfg, overwrite=True, backend=backend)
    result = exp.run()
    return result.params.clone(), exp.federation.spec, result.history


# -- processes ---------------------------------------------------------------------------------
@dataclass
class Run:
    """One networked run: its config file, address, processes and run directory."""

    name: str
    cfg: dict[str, Any]
    dir: Path
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port, self.bulk_port = free_port(), free_port()
        self.cfg["runtime"]["address"] = f"127.0.0.1:{self.port}"
        self.cfg["runtime"]["bulk_port"] = self.bulk_port
        self.config = self.dir / f"{self.name}.json"
        self.config.write_text(json.dumps(self.cfg, indent=1))
        self.run_dir = Path(self.cfg["output"]["dir"]) / self.cfg["name"]

    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, name: str, *args: str) -> Proc:
        log = self.dir / f"{name.replace(' ', '_')}.{len(self.procs)}.log"
        proc = Proc.start(name, ["-m", "fedloom", *args], log, cwd=self.dir)
        self.procs.append(proc)
        return proc

    def server(self, *extra: str) -> Proc:
        return self.start("aggregator", "server", str(self.config), *extra)

    def client(self, i: int) -> Proc:
        return self.start(f"client {i}", "client", str(self.config), "--client-id", str(i))

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.run_dir)

    def servers(self) -> list[Proc]:
        return [p for p in self.procs if p.name == "aggregator"]

    def clients(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("client")]

    def wait_for_port(self, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return True
            time.sleep(0.1)
        return False

    def wait_for_log(self, proc: Proc, text: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in proc.output():
                return True
            if proc.popen.poll() is not None:
                return text in proc.output()
            time.sleep(0.05)
        return False

    def wait_all(self, deadline: float) -> bool:
        """Wait until every process has exited, or ``deadline``; False if some had to be killed."""
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        alive = [p for p in self.procs if p.popen.poll() is None]
        for p in alive:
            p.kill()
        return not alive

    def cleanup(self) -> None:
        for p in self.procs:
            p.kill()


def checkpoint_round(run: Run) -> int:
    from fedloom import load_checkpoint

    path = run.run_dir / "checkpoint.pt"
    try:
        return int(load_checkpoint(path)["round"]) if path.exists() else 0
    except Exception:  # noqa: BLE001 - being replaced right now
        return 0


# -- outcome of a run --------------------------------------------------------------------------
def outcome(run: Run, spec, reference: torch.Tensor, t0: float, all_exited: bool) -> dict[str, Any]:
    final = run.servers()[-1]
    server_rc = final.popen.poll()
    logs = {p.name + f".{i}": p.output() for i, p in enumerate(run.procs)}
    tracebacks = [
        n for n, text in logs.items() if n.startswith("aggregator") and "Traceback" in text
    ]
    bad_exits = [
        f"{p.name}: rc {p.popen.poll()}"
        for p in run.procs
        if not p.killed_by_us and p.popen.poll() not in (0,)
    ]
    records = run.records()
    rounds = run.cfg["rounds"]
    model = run.run_dir / "model.safetensors"
    finished = server_rc == 0 and model.exists() and [r["round"] for r in records][-1:] == [rounds]
    identical: bool | None = None
    diff = None
    if model.exists():
        params, _ = decode(model.read_bytes(), spec)
        identical = bool(torch.equal(params, reference))
        if not identical:
            diff = float((params - reference).abs().max())
    refused: dict[str, int] = {}
    for r in records:
        for k, n in r.get("refused", {}).items():
            refused[k] = refused.get(k, 0) + n
    return {
        "finished": finished,
        "bit_identical": identical,
        "max_abs_diff": diff,
        "server_crashed": bool(tracebacks) or server_rc not in (0, None),
        "wedged": not all_exited,
        "server_tracebacks": tracebacks,
        "bad_exits": bad_exits,
        "all_exited": all_exited,
        "seconds": round(time.monotonic() - t0, 1),
        "rounds": [
            {
                k: r.get(k)
                for k in ("round", "clients", "rejected", "skipped", "aggregate_rejected")
                if r.get(k) is not None
            }
            for r in records
        ],
        "refused": refused,
    }


def tail(text: str, n: int = 1500) -> str:
    return text[-n:]


# -- scenarios ---------------------------------------------------------------------------------
def scenario_plain(run: Run, spec, reference, *, kill: str | None = None, seed: int = 0,
                   window: float = 10.0) -> dict[str, Any]:  # fmt: skip
    """Baseline, or one kill -9 (``kill`` = "client" / "aggregator") at a random point:
    once a random number of rounds is recorded, a random time into the next round
    (``window`` / rounds is the baseline's time per round); restarted at once."""
    rng = random.Random(seed)
    t0 = time.monotonic()
    extra: dict[str, Any] = {}
    try:
        server = run.server()
        n = run.cfg["data"]["num_clients"]
        for i in range(n):
            run.client(i)
        started = run.wait_for_log(server, f"({n} members)", 90)
        extra["round_1_started_s"] = round(time.monotonic() - t0, 1) if started else None
        if kill is not None and started:
            # a random round, then a random moment within it (training, upload, aggregation,
            # evaluation, checkpoint): ``window`` is the baseline's time for all rounds
            rounds = run.cfg["rounds"]
            k, within = rng.randrange(rounds), rng.uniform(0.0, 0.9 * window / rounds)
            end = time.monotonic() + 60
            while len(run.records()) < k and time.monotonic() < end:
                time.sleep(0.02)
            time.sleep(within)
            extra["kill_after_s"] = round(time.monotonic() - t0 - extra["round_1_started_s"], 2)
            if (run.run_dir / "model.safetensors").exists():  # the run is over: nothing to kill
                kill, extra["kill_skipped"] = None, "the run had finished"
            if kill == "client":
                victim_id = rng.randrange(n)
                victim = [p for p in run.clients() if p.name == f"client {victim_id}"][-1]
                extra["victim"] = victim_id
                extra["victim_was_running"] = victim.popen.poll() is None
                extra["rounds_done_at_kill"] = len(run.records())
                if victim.popen.poll() is None:
                    victim.killed_by_us = True
                    victim.kill()
                    run.client(victim_id)
            elif kill == "aggregator":
                extra["server_was_running"] = server.popen.poll() is None
                if server.popen.poll() is None:
                    server.killed_by_us = True
                    server.kill()
                    done = checkpoint_round(run)
                    extra["checkpoint_round_at_kill"] = done
                    extra["rounds_done_at_kill"] = len(run.records())
                    extra["model_written_at_kill"] = (run.run_dir / "model.safetensors").exists()
                    mode = "--resume" if done else "--overwrite"
                    extra["restart"] = mode
                    run.server(mode)
        model = run.run_dir / "model.safetensors"
        while time.monotonic() < t0 + RUN_LIMIT and not model.exists():
            if all(p.popen.poll() is not None for p in run.servers()):
                break
            time.sleep(0.05)
        if model.exists() and started:
            extra["model_written_s"] = round(time.monotonic() - t0, 1)
        all_exited = run.wait_all(t0 + RUN_LIMIT)
        result = outcome(run, spec, reference, t0, all_exited)
    finally:
        run.cleanup()
    result.update(extra)
    return result


def scenario_outsider(run: Run, spec, reference, *, seed: int, scale: float) -> dict[str, Any]:
    """The baseline run under outsider attacks, started as soon as the port is up."""
    t0 = time.monotonic()
    report: dict[str, Any] = {}
    stop = threading.Event()
    try:
        server = run.server()
        if not run.wait_for_port(90):
            raise RuntimeError("the aggregator never listened:\n" + tail(server.output()))
        n = run.cfg["data"]["num_clients"]
        # the slowloris connections are opened before the clients start, and held through
        # their start-up and first rounds
        held = int(200 * scale)
        jobs = {
            "held_grpc_tcp": lambda: attacks.slowloris(
                "127.0.0.1", run.port, held, 25.0, partial=attacks.GRPC_PREFACE_HALF,
                trickle_s=None, reopen=False, stop=stop).summary(),
            "held_bulk_tcp": lambda: attacks.slowloris(
                "127.0.0.1", run.bulk_port, held, 25.0, partial=attacks.BULK_LENGTH_HALF,
                trickle_s=None, reopen=False, stop=stop).summary(),
        }  # fmt: skip
        threads = {k: _spawn(report, k, fn) for k, fn in jobs.items()}
        time.sleep(1.0)
        for i in range(n):
            run.client(i)
        # every bad identity; a chunk of a plausible upload first, then held
        identities = [
            attacks.bad_metadata(TASK_ID, i) or ((TASK_KEY, TASK_ID),)
            for i in range(len(attacks.BAD_IDENTITIES))
        ]
        chunk = pb.Chunk(task_id=TASK_ID, client_id="0", round=1, data=bytes(1024))
        later = {
            "held_upload_streams": lambda: attacks.held_upload_streams(
                run.address(), int(300 * scale), 10.0, identities=identities,
                first_chunk=chunk.SerializeToString()).summary(),
            "bad_calls": lambda: attacks.outsider_calls(
                run.address(), TASK_ID, int(400 * scale), seed),
            "random_bytes_grpc": lambda: attacks.random_bytes(
                "127.0.0.1", run.port, int(60 * scale), seed, bulk_port=False),
            "random_bytes_bulk": lambda: attacks.random_bytes(
                "127.0.0.1", run.bulk_port, int(60 * scale), seed + 1, bulk_port=True),
            "bulk_headers": lambda: attacks.outsider_bulk_headers(
                "127.0.0.1", run.bulk_port, TASK_ID, int(100 * scale), seed),
        }  # fmt: skip
        for k, fn in later.items():
            threads[k] = _spawn(report, k, fn)
        all_exited = run.wait_all(t0 + RUN_LIMIT)
        stop.set()
        for t in threads.values():
            t.join(60)
        result = outcome(run, spec, reference, t0, all_exited)
    finally:
        stop.set()
        run.cleanup()
    result["attacks"] = report
    result["wrong_accepts"] = sum(
        int(v.get("wrong_accepts", 0)) for v in report.values() if isinstance(v, dict)
    )
    result["attack_calls"] = _attack_calls(report)
    return result


def _attack_calls(report: dict[str, Any]) -> int:
    total = 0
    for v in report.values():
        if isinstance(v, dict):
            total += int(v.get("calls") or v.get("streams") or v.get("opened") or 0)
            total += int(v.get("connections") or v.get("requests") or 0)
    return total


def _spawn(report: dict[str, Any], key: str, fn) -> threading.Thread:
    def target() -> None:
        try:
            report[key] = fn()
        except Exception as e:  # noqa: BLE001 - an attack that failed is reported
            report[key] = {"error": f"{type(e).__name__}: {e}"}

    t = threading.Thread(target=target, name=key, daemon=True)
    t.start()
    return t


def scenario_insider(run: Run, spec, reference, plain_reference) -> dict[str, Any]:
    t0 = time.monotonic()
    insider = None
    try:
        server = run.server()
        if not run.wait_for_port(90):
            raise RuntimeError("the aggregator never listened:\n" + tail(server.output()))
        for i in range(run.cfg["data"]["num_clients"]):
            if i != INSIDER:
                run.client(i)
        token = run.cfg["runtime"]["tokens"][str(INSIDER)]
        insider = attacks.Insider(run.address(), TASK_ID, INSIDER, token, samples=800)
        thread = threading.Thread(
            target=lambda: insider.run(t0 + RUN_LIMIT, lambda: len(run.records()) + 1),
            daemon=True,
        )
        thread.start()
        all_exited = run.wait_all(t0 + RUN_LIMIT)
        thread.join(60)
        result = outcome(run, spec, reference, t0, all_exited)
    finally:
        run.cleanup()
    report = insider.report() if insider else {}
    result["attacks"] = report
    result["wrong_accepts"] = report.get("wrong_accepts", 0)
    result["attack_calls"] = sum(report.get("calls", {}).values())
    model = run.run_dir / "model.safetensors"
    if model.exists():
        params, _ = decode(model.read_bytes(), spec)
        result["bit_identical_to_unattacked"] = bool(torch.equal(params, plain_reference))
    rejected = sum(r.get("rejected", 0) for r in result["rounds"])
    result["attacker_updates_rejected"] = rejected
    result["attacker_updates_expected_rejected"] = len(set(report.get("sampled_rounds", [])))
    if rejected < result["attacker_updates_expected_rejected"]:
        result["wrong_accepts"] += result["attacker_updates_expected_rejected"] - rejected
    return result


def notes(s: dict[str, Any]) -> str:
    """What happened in a run, in a few words, for the table."""
    out = []
    if "victim" in s:
        out.append(f"killed client {s['victim']} at +{s['kill_after_s']} s")
    elif "checkpoint_round_at_kill" in s:
        out.append(
            f"killed aggregator at +{s['kill_after_s']} s (checkpoint round "
            f"{s['checkpoint_round_at_kill']}), restarted {s.get('restart')}"
        )
    if "rounds_done_at_kill" in s:
        out.append(f"{s['rounds_done_at_kill']} rounds done at the kill")
    if "kill_skipped" in s:
        out.append(f"no kill: {s['kill_skipped']}")
    if "bit_identical_to_unattacked" in s:
        out.append(
            f"attacker sampled in rounds {s['attacks'].get('sampled_rounds')}, "
            f"{s['attacker_updates_rejected']} of its updates rejected; identical to the "
            f"unattacked simulation: {s['bit_identical_to_unattacked']}"
        )
    if s.get("refused"):
        out.append("refused " + ", ".join(f"{k} {n}" for k, n in sorted(s["refused"].items())))
    if s.get("wedged"):
        out.append("WEDGED: processes killed at the time limit")
    if s.get("bad_exits"):
        out.append("bad exits: " + "; ".join(s["bad_exits"]))
    if s.get("max_abs_diff") is not None:
        out.append(f"max |diff| {s['max_abs_diff']:.3g}")
    return "; ".join(out)


# -- the matrix --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2,000 fuzz cases, one seed per kill")
    p.add_argument("--fuzz-cases", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None, help="seeds per kill scenario")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated scenario names to run")
    p.add_argument("--keep", action="store_true", help="keep the run directories and logs")
    args = p.parse_args(argv)
    fuzz_cases = (
        args.fuzz_cases if args.fuzz_cases is not None else (2000 if args.quick else 50_000)
    )
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    only = set(args.only.split(",")) if args.only else None
    torch.set_num_threads(1)
    t_start = time.monotonic()

    print(f"wire fuzz: {fuzz_cases} cases ...", file=sys.stderr, flush=True)
    fuzz = run_wire_fuzz(fuzz_cases, args.seed)
    print(f"wire fuzz: {fuzz['crashes']} crashes, {fuzz['wrong_accepts']} wrong accepts "
          f"({fuzz['seconds']} s)", file=sys.stderr, flush=True)  # fmt: skip

    work = Path(tempfile.mkdtemp(prefix="fedloom-chaos-"))
    scenarios: list[dict[str, Any]] = []
    try:
        plain_cfg = config(work / "runs", "x")
        plain_ref, spec, _ = simulate(plain_cfg, work / "sim")
        insider_kw = dict(clients=5, rounds=7, per_round=4, epochs=10, max_norm=1e3)
        insider_cfg = config(work / "runs", "x", **insider_kw)
        insider_ref, ispec, _ = simulate(insider_cfg, work / "sim", rejected={INSIDER})
        insider_plain, _, _ = simulate(insider_cfg, work / "sim")

        def new_run(name: str, **kw: Any) -> Run:
            d = work / name
            d.mkdir()
            return Run(name, config(work / "runs", name, **kw), d)

        def record(name: str, kind: str, expect_identical: bool, result: dict[str, Any]) -> None:
            result = {"name": name, "kind": kind, "expect_identical": expect_identical, **result}
            scenarios.append(result)
            print(
                f"{name}: finished {result['finished']}, bit_identical {result['bit_identical']}, "
                f"server_crashed {result['server_crashed']}, {result['seconds']} s"
                + (
                    f", wrong_accepts {result['wrong_accepts']}"
                    if "wrong_accepts" in result
                    else ""
                ),
                file=sys.stderr,
                flush=True,
            )

        def wanted(name: str) -> bool:
            return only is None or name.split("#")[0] in only

        window = 8.0
        if wanted("baseline"):
            r = scenario_plain(new_run("baseline"), spec, plain_ref)
            record("baseline", "baseline", True, r)
            if r.get("model_written_s") is not None:  # kill within the rounds' span
                window = max(2.0, r["model_written_s"] - r["round_1_started_s"])
        if wanted("outsider"):
            r = scenario_outsider(new_run("outsider"), spec, plain_ref, seed=args.seed, scale=1.0)
            record("outsider", "outsider", True, r)
        if wanted("insider"):
            r = scenario_insider(
                new_run("insider", **insider_kw), ispec, insider_ref, insider_plain
            )
            record("insider", "insider", True, r)
        for s in range(seeds):
            for kind in ("client", "aggregator"):
                name = f"kill_{kind}#{s}"
                if wanted(name):
                    run = new_run(name.replace("#", "_"))
                    seed = args.seed * 100 + 2 * s + (kind == "aggregator")
                    r = scenario_plain(run, spec, plain_ref, kill=kind, seed=seed, window=window)
                    record(name, f"kill_{kind}", True, r)
    finally:
        if args.keep:
            print(f"runs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    expected = [s for s in scenarios if s["expect_identical"]]
    totals = {
        "fuzz_cases": fuzz["cases"],
        "fuzz_crashes": fuzz["crashes"],
        "fuzz_wrong_accepts": fuzz["wrong_accepts"],
        "scenarios": len(scenarios),
        "runs_finished": sum(bool(s["finished"]) for s in scenarios),
        "runs_bit_identical": sum(bool(s["bit_identical"]) for s in scenarios),
        "runs_expected_identical": len(expected),
        "server_crashes": sum(bool(s["server_crashed"]) for s in scenarios),
        "wrong_accepts": sum(int(s.get("wrong_accepts", 0)) for s in scenarios),
        "attack_calls": sum(int(s.get("attack_calls", 0)) for s in scenarios),
        "seconds": round(time.monotonic() - t_start, 1),
    }
    fuzz_summary = {k: v for k, v in fuzz.items() if k != "examples"}
    fuzz_summary["examples"] = fuzz.get("examples", {})
    path = write_results(
        "chaos",
        {"quick": args.quick, "seeds": seeds, "totals": totals, "fuzz": fuzz_summary,
         "scenarios": scenarios},
    )  # fmt: skip
    print(f"results: {path}", file=sys.stderr)
    print(f"{'scenario':20} finished bit_identical server_crashed seconds  notes", file=sys.stderr)
    for s in scenarios:
        print(
            f"{s['name']:20} {s['finished']!s:8} {s['bit_identical']!s:13} "
            f"{s['server_crashed']!s:14} {s['seconds']:<7} {notes(s)}",
            file=sys.stderr,
        )
    print_headlines(totals)
    bad = (
        totals["fuzz_crashes"] or totals["fuzz_wrong_accepts"] or totals["server_crashes"]
        or totals["wrong_accepts"] or totals["runs_finished"] < totals["scenarios"]
    )  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
