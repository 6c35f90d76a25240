"""Start-up: seconds from launching a process to the first client's training, fedloom vs plain.

fedloom: ``python -c`` running ``fedloom.run`` on the demo's config (mnist5k, Dirichlet 0.5
over 100 clients, the small CNN), stopped the moment the first client's first local epoch
begins. Plain: ``python -c`` that imports torch, builds the same model, builds an SGD
optimizer and takes one step (where torch 2.13 pays its lazy imports). Both are timed from
``Popen`` to a timestamp the child prints, ``--repeats`` times alternating, medians reported.

    .venv/bin/python benchmarks/startup.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from common import median, print_headlines, write_results

FEDLOOM = """
import os, time
import fedloom
def first(self, *a, **k):
    print("FIRST", time.time(), flush=True)
    os._exit(0)
fedloom.ClassificationTask.train_an_epoch = first
fedloom.run({"output": {"dir": %r, "progress": False, "figures": False, "tensorboard": False}})
"""

PLAIN = """
import time
import torch
from torch import nn
model = nn.Sequential(  # fedloom's small_cnn, the demo's model
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loss = model(torch.zeros(10, 1, 28, 28)).sum()
loss.backward()
opt.step()
print("FIRST", time.time(), flush=True)
"""


def once(code: str) -> float:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    for line in out.stdout.splitlines():
        if line.startswith("FIRST "):
            return float(line.split()[1]) - t0
    raise RuntimeError(f"no timestamp from the child:\n{out.stdout}\n{out.stderr}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="/tmp/fedloom-startup-runs")
    args = p.parse_args(argv)
    fed, plain = [], []
    once(PLAIN)  # warm the page cache for both
    once(FEDLOOM % args.out)
    for i in range(args.repeats):
        fed.append(once(FEDLOOM % args.out))
        plain.append(once(PLAIN))
        print(f"repeat {i + 1}: fedloom {fed[-1]:.2f} s, plain {plain[-1]:.2f} s", flush=True)
    ratios = [f / q for f, q in zip(fed, plain)]
    results: dict[str, Any] = {
        "fedloom_s": fed,
        "plain_s": plain,
        "fedloom_median_s": median(fed),
        "plain_median_s": median(plain),
        "ratio_median": median(ratios),
        "target_s": 3.0,
    }
    write_results("startup", results)
    print_headlines(
        {
            "startup_fedloom_s": f"{median(fed):.2f}",
            "startup_plain_s": f"{median(plain):.2f}",
            "startup_ratio": f"{median(ratios):.2f}",
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
