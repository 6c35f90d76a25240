"""``benchmarks/gpu.py --smoke``: every code path of the GPU benchmark, on the CPU.

The figures themselves are taken on a GPU; here the script must run end to end (the plain
loop, the sequential and vectorised engines on all four W1 workloads, the non-IID paper cell
through the config path), the two fedloom engines must agree, and the JSON and the
``name: value`` lines must hold every figure the README quotes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["smoke"] is True
    names = [w["name"] for w in result["workloads"]]
    assert names == ["cnn_10x8", "mlp_10x8", "cnn_40x4", "mlp_40x4"]
    for w in result["workloads"]:
        assert set(w["seconds_per_round"]) == {"plain", "sequential", "vectorized"}
        assert w["sequential_over_plain"] > 0 and w["plain_over_vectorized"] > 0
        assert w["vectorized_path"] == ("fused" if w["model"] == "mlp" else "vmap")
        # the same clients on the same batches: float32 rounding apart, nothing more
        assert w["vectorized_vs_sequential_max_abs_diff"] < 1e-4, w
    cell = result["paper_cell"]
    assert cell["engine_path"] == "vmap" and cell["rounds_run"] == 2
    assert len(cell["accuracy"]) == 2 and cell["seconds_per_round"] > 0
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines()[-11:])
    assert set(lines) == {
        *(f"{n}_{r}" for n in names for r in ("sequential_over_plain", "plain_over_vectorized")),
        "cell_rounds_to_99",
        "cell_seconds_per_round",
        "total_seconds",
    }
