"""The live dashboard's cost to a run, and how a page of 200 clients keeps up.

1. Round time with the dashboard open. Two copies of one 100-client simulation (the demo's:
   mnist5k, Dirichlet(0.5) over 100 clients, 10 a round, the small CNN, evaluated every
   round), built alike with the same seed; one also has ``--dashboard`` (its loop feed, its
   server) and a page reading the event stream the whole time (a reader process by default:
   the browser of a person watching runs elsewhere; ``--browser`` uses headless Chromium on
   this machine instead, whose drawing then competes for these CPUs too). Rounds alternate
   between the copies, the order flipping every pair, so machine noise hits both alike; the
   figures are the medians of the per-pair ratios of round wall time and of the process's
   CPU time per round (all its threads: the loop's and the page's), and, least sensitive to
   other jobs on a shared machine, the dashboard's own CPU (its loop hooks, timed, plus its
   server threads' CPU clocks) as a share of the plain rounds' CPU.
2. A page of 200 connected clients. A clients table of 200 entries fed through the real hook
   (the aggregator's :class:`~fedloom.runtime.membership.Membership` watchers and heartbeats,
   200 check-ins), a publisher playing rounds in which all 200 report; headless Chromium
   loads the page (time until the table shows 200 rows and the charts are drawn) and the
   update latency is measured from each round's publication to the page showing it (a
   ``MutationObserver`` on the round counter, both clocks this machine's), and from a drop
   to the row turning ``dropped``. Without Chromium a Python reader measures the stream.

    .venv/bin/python benchmarks/dashboard.py [--pairs 12] [--warmup 2] [--rounds 40] [--browser]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from common import print_headlines, write_results

from fedloom.compose.dashboard import open_dashboard
from fedloom.experiment import Experiment
from fedloom.federation import Callback, Federation
from fedloom.observe.dashboard import ClientTable, DashboardServer, LiveState, run_info
from fedloom.runtime.membership import Membership

READER = """
import sys, urllib.request
stream = urllib.request.urlopen(sys.argv[1] + "events")
total = 0
while chunk := stream.read1(65536):
    total += len(chunk)
"""


def experiment(out: Path, name: str) -> Experiment:
    sets = [f'name="{name}"', f'output.dir="{out.as_posix()}"', "rounds=100000",
            "output.progress=false", "output.tensorboard=false", "output.figures=false",
            "output.checkpoint=false"]  # fmt: skip
    return Experiment.from_config(None, sets, overwrite=True)


def one_round(fed: Federation, rnd: int) -> tuple[float, float]:
    """A round as ``Federation.run`` plays it (the callbacks' round end included): its wall
    seconds and this process's CPU seconds (every thread: the loop's and the page's)."""
    t0, c0 = time.perf_counter(), time.process_time()
    record = fed.run_round(rnd)
    for cb in fed.callbacks:
        cb.on_round_end(fed, record)
    return time.perf_counter() - t0, time.process_time() - c0


class Timed(Callback):
    """Another callback, with the CPU seconds its hooks take in the loop's thread."""

    def __init__(self, inner: Callback) -> None:
        self.inner, self.cpu = inner, 0.0

    def _timed(self, hook: Any, *args: Any) -> Any:
        t0 = time.thread_time()
        try:
            return hook(*args)
        finally:
            self.cpu += time.thread_time() - t0

    def on_start(self, fed: Any) -> None:
        self._timed(self.inner.on_start, fed)

    def on_state(self, fed: Any, state: Any, round: int) -> None:
        self._timed(self.inner.on_state, fed, state, round)

    def on_update(self, fed: Any, update: Any, error: str | None) -> None:
        self._timed(self.inner.on_update, fed, update, error)

    def on_round_end(self, fed: Any, record: dict[str, Any]) -> Any:
        return self._timed(self.inner.on_round_end, fed, record)


def other_threads_cpu() -> float:
    """CPU seconds of this process's threads other than the main one (the page's server and
    stream threads; torch runs one thread here), by their POSIX CPU clocks."""
    total = 0.0
    for t in threading.enumerate():
        if t is threading.main_thread() or t.ident is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
    return total


def round_overhead(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    plain, watched = experiment(out, "plain"), experiment(out, "watched")
    page = open_dashboard(
        watched.config, watched.federation, "127.0.0.1:0", run_dir=watched.run_dir,
        announce=False,
    )  # fmt: skip
    feed = Timed(watched.federation.callbacks[-1])  # the dashboard's LiveFeed, timed
    watched.federation.callbacks[-1] = feed
    reader = browser = None
    if args.browser:
        browser = Chromium(page.url)
    else:
        reader = subprocess.Popen([sys.executable, "-c", READER, page.url])
    for fed in (plain.federation, watched.federation):
        for cb in fed.callbacks:
            cb.on_start(fed)
    try:
        for r in range(1, args.warmup + 1):
            one_round(plain.federation, r)
            one_round(watched.federation, r)
        times: dict[str, list[float]] = {"plain": [], "watched": []}
        cpu: dict[str, list[float]] = {"plain": [], "watched": []}
        feed.cpu, threads0 = 0.0, other_threads_cpu()
        for i in range(args.pairs):
            r = args.warmup + i + 1
            order = ("plain", "watched") if i % 2 == 0 else ("watched", "plain")
            for which in order:
                fed = (plain if which == "plain" else watched).federation
                wall, used = one_round(fed, r)
                times[which].append(wall)
                cpu[which].append(used)
        threads_cpu = other_threads_cpu() - threads0
        if browser is not None:
            browser.check_round(args.warmup + args.pairs)
    finally:
        if reader is not None:
            reader.kill()
        if browser is not None:
            browser.close()
        page.stop()
    assert torch.equal(plain.federation.params, watched.federation.params)  # same work done
    ratios = [w / p for w, p in zip(times["watched"], times["plain"])]
    cpu_ratios = [w / p for w, p in zip(cpu["watched"], cpu["plain"])]
    return {
        "reader": "chromium" if args.browser else "process",
        "rounds_each": args.pairs,
        "round_s_plain": statistics.median(times["plain"]),
        "round_s_watched": statistics.median(times["watched"]),
        "ratio_median": statistics.median(ratios),
        "overhead_pct": 100 * (statistics.median(ratios) - 1),
        "cpu_s_plain": statistics.median(cpu["plain"]),
        "cpu_s_watched": statistics.median(cpu["watched"]),
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "cpu_overhead_pct": 100 * (statistics.median(cpu_ratios) - 1),
        # the dashboard's own CPU (its loop hooks + its threads) over the plain rounds' CPU
        "feed_cpu_s": feed.cpu,
        "server_threads_cpu_s": threads_cpu,
        "attributed_pct": 100 * (feed.cpu + threads_cpu) / sum(cpu["plain"]),
        "times": times,
        "cpu": cpu,
    }


class Chromium:
    """Headless Chromium on the page (the tests' driver settings)."""

    def __init__(self, url: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--window-size=1280,1700", "--no-proxy-server"):  # fmt: skip
            options.add_argument(arg)
        self.driver = webdriver.Chrome(
            options=options, service=Service(shutil.which("chromedriver") or "chromedriver")
        )
        self.t0 = time.perf_counter()
        self.driver.get(url)

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def wait(self, script: str, timeout: float = 60.0) -> float:
        """Seconds since the page was asked for until ``script`` returns true."""
        deadline = time.monotonic() + timeout
        while not self.js(script):
            if time.monotonic() > deadline:
                raise SystemExit(f"the page never showed: {script}")
            time.sleep(0.005)
        return time.perf_counter() - self.t0

    def check_round(self, n: int) -> None:
        self.wait(f"return Number(document.getElementById('round').textContent) >= {n}")

    def close(self) -> None:
        self.driver.quit()


WATCH = """
window.__seen = {};
const round = document.getElementById('round');
new MutationObserver(() => { window.__seen[round.textContent] = Date.now(); })
  .observe(round, {childList: true, characterData: true, subtree: true});
window.__dropped = null;
const body = document.querySelector('#clients tbody');
new MutationObserver(() => {
  if (window.__dropped === null && body.querySelector('tr[data-state="dropped"]'))
    window.__dropped = Date.now();
}).observe(body, {childList: true, subtree: true, attributes: true});
"""


def many_clients(args: argparse.Namespace) -> dict[str, Any]:
    n = args.clients
    cv = threading.Condition()
    membership = Membership(cv, min_clients=1, start_timeout=None, quorum=1,
                            heartbeat_timeout=3600, round_timeout=None, poll_interval=0.05,
                            on_drop=lambda cid: None)  # fmt: skip
    table = ClientTable(membership.heartbeats)
    membership.watchers.append(table)  # the hook the aggregator's dashboard uses
    info = run_info({"name": "200-clients", "rounds": args.rounds}, name="200-clients",
                    rounds=args.rounds, deployment=True)  # fmt: skip
    state = LiveState(info, clients=table)
    with cv:
        for cid in range(n):
            membership.check_in(cid, num_samples=50, round=0)
    state.started(0)
    published: dict[int, float] = {}

    def play(rnd: int) -> None:
        state.state("distribute", rnd)
        state.planned(n)
        table.planned(range(n))
        state.state("train", rnd)
        for cid in range(n):
            with cv:
                membership.touch(cid)
            table.reported(cid, 80_000, rejected=False)
            state.client_done()
        table.round_closed()
        published[rnd] = time.time() * 1000
        state.record({"round": rnd, "accuracy": 0.5 + rnd / (4 * args.rounds),
                      "train_loss": 1.0 / rnd, "bytes_up": 80_000 * n, "bytes_down": 80_000 * n,
                      "seconds": 0.5, "clients": n})  # fmt: skip

    for rnd in range(1, 11):  # a page opened on a run under way: 10 rounds of history
        play(rnd)
    with DashboardServer(state) as server:
        if shutil.which("chromedriver") is None:
            return python_reader(server, state, play, published, args)
        page = Chromium(server.url)
        load = page.wait(
            f"return document.querySelectorAll('#clients tbody tr').length === {n} && "
            "document.querySelector('svg[data-metric=accuracy]') !== null"
        )
        page.js(WATCH)
        for rnd in range(11, args.rounds + 1):
            play(rnd)
            time.sleep(args.every)
        page.check_round(args.rounds)
        seen = page.js("return window.__seen")
        latencies = [seen[str(r)] - published[r] for r in range(11, args.rounds + 1)
                     if str(r) in seen]  # fmt: skip
        time.sleep(0.5)
        dropped_at = time.time() * 1000
        with cv:  # a client silent past its timeout: dropped through the same hook
            membership.heartbeat_timeout = 0.0
            membership.members[n - 1].last_seen -= 1.0
            for cid in range(n - 1):
                membership.members[cid].last_seen += 3600
            membership.drop_silent()
        page.wait("return window.__dropped !== null", 10)
        drop_ms = page.js("return window.__dropped") - dropped_at
        page.close()
    return {
        "reader": "chromium",
        "clients": n,
        "page_load_s": load,
        "update_latency_ms_median": statistics.median(latencies),
        "update_latency_ms_p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
        "updates_seen": len(latencies),
        "updates_sent": args.rounds - 10,
        "drop_latency_ms": drop_ms,
        "latencies_ms": latencies,
    }


def python_reader(  # type: ignore[no-untyped-def]
    server, state, play, published, args
) -> dict[str, Any]:
    import urllib.request

    t0 = time.perf_counter()
    urllib.request.urlopen(server.url).read()
    stream = urllib.request.urlopen(server.url + "events")
    while not stream.readline().startswith(b"data:"):
        pass
    load = time.perf_counter() - t0
    latencies = []
    for rnd in range(11, args.rounds + 1):
        play(rnd)
        while True:
            line = stream.readline()
            if line.startswith(b"data:") and f'"round":{rnd},' in line.decode():
                latencies.append(time.time() * 1000 - published[rnd])
                break
        time.sleep(args.every)
    return {
        "reader": "python",
        "clients": args.clients,
        "page_load_s": load,
        "update_latency_ms_median": statistics.median(latencies),
        "update_latency_ms_p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=12, help="timed rounds of each copy")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds of each copy")
    parser.add_argument("--browser", action="store_true", help="headless Chromium reads")
    parser.add_argument("--clients", type=int, default=200, help="clients in the table")
    parser.add_argument("--rounds", type=int, default=40, help="rounds played to the page")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between them")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fedloom-bench-dashboard"))
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    if not args.skip_overhead:
        results["round_time"] = round_overhead(args, args.out)
    results["many_clients"] = many_clients(args)
    path = write_results("dashboard", results)
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if not isinstance(vv, list | dict)}
                      for k, v in results.items()}, indent=1))  # fmt: skip
    print(f"results: {path}")
    heads: dict[str, Any] = {}
    if "round_time" in results:
        rt = results["round_time"]
        heads["round_s_plain"] = f"{rt['round_s_plain']:.4f}"
        heads["round_s_with_dashboard"] = f"{rt['round_s_watched']:.4f}"
        heads["round_time_change_pct"] = f"{rt['overhead_pct']:+.2f}"
        heads["round_cpu_change_pct"] = f"{rt['cpu_overhead_pct']:+.2f}"
        heads["dashboard_cpu_share_pct"] = f"{rt['attributed_pct']:.3f}"
    mc = results["many_clients"]
    heads["page_load_s_200_clients"] = f"{mc['page_load_s']:.3f}"
    heads["update_latency_ms_median"] = f"{mc['update_latency_ms_median']:.1f}"
    heads["update_latency_ms_p95"] = f"{mc['update_latency_ms_p95']:.1f}"
    if "drop_latency_ms" in mc:
        heads["drop_latency_ms"] = f"{mc['drop_latency_ms']:.1f}"
    print_headlines(heads)


if __name__ == "__main__":
    main()
