"""``benchmarks/privacy_secagg_net.py --quick``: every row runs end to end and says something.

Simulated rounds of 6 and 12 clients and rounds over a loopback aggregator with 6 clients in
a client process, plain and secure, with a tiny MLP on 600 MNIST images: the secure model
after round 1 is the plain one to a quantisation step, both kinds of round aggregate every
client, and the protocol's bytes per client are at least the masked vector's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT.parent / "shared" / "datasets" / "mnist" / "raw"


@pytest.mark.skipif(
    not (MNIST / "train-images-idx3-ubyte.gz").is_file() and "FEDLOOM_MNIST" not in os.environ,
    reason="MNIST is not in ../shared/datasets/mnist/raw",
)
def test_quick_rows_run_and_agree(tmp_path: Path) -> None:
    out = tmp_path / "secagg.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "privacy_secagg_net.py"), "--quick",
         "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    heads = dict(
        line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line
    )
    results = json.loads(out.read_text())
    assert [r["clients"] for r in results["simulation"]] == [6, 12]
    assert [r["clients"] for r in results["processes"]] == [6]
    for row in results["simulation"]:
        n, d = row["clients"], row["parameters"]
        assert row["plain"]["clients"] == row["secure"]["clients"] == n
        assert row["secure"]["secagg_survivors"] == n
        assert 0 < row["max_abs_model_diff_after_round_1"] <= row["quantisation_step"] * 1.001
        assert row["secure"]["secagg_bytes_up_per_client"] > 4 * d
        assert 0 < row["protocol_split"]["client_s_mean"] <= row["protocol_split"]["client_s_max"]
        assert float(heads[f"secagg_sim_n{n}_ratio"]) == pytest.approx(row["ratio"], rel=1e-3)
    net = results["processes"][0]
    assert not net["plain"]["client_errors"] and not net["secure"]["client_errors"]
    model_bytes = 4 * results["simulation"][0]["parameters"]
    assert net["secure"]["bytes_up_per_client"] > model_bytes  # the masked vector, at least
    assert net["secure"]["protocol_bytes_down_per_client"] > 0
    assert net["secure"]["client_protocol_cpu_s_per_round"] > 0
    assert net["ratio"] > 0 and int(heads["secagg_net_n6_bytes_up_per_client"]) > model_bytes
