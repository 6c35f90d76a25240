"""What a run leaves for people: report.md as tables (no Python reprs), its wall time summed
over resumes, an "interrupted" notification on Ctrl-C, and a colour key on every partition
figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedloom
from fedloom.data.partition.report import partition_figure
from fedloom.federation import Callback, Federation
from fedloom.observe import write_report


def overrides(tmp_path: Path, **extra: Any) -> list[str]:
    base = {
        "name": "'rep'",
        "rounds": 3,
        "data.num_clients": 6,
        "model.name": "'logreg'",
        "train.batch_size": 50,
        "strategy.clients_per_round": 2,
        "output.dir": repr((tmp_path / "runs").as_posix()),
        "output.progress": "false",
        "output.tensorboard": "false",
        "output.figures": "false",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


class CtrlC(Callback):
    """Presses Ctrl-C (raises KeyboardInterrupt) at the end of round ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_round_end(self, fed: Federation, record: dict[str, Any]) -> bool:
        if record["round"] == self.at:
            raise KeyboardInterrupt
        return False


def test_ctrl_c_notifies_interrupted_not_failed(tmp_path, http_server) -> None:
    hook = json.dumps(http_server.url + "/hook")
    exp = fedloom.Experiment.from_config(None, overrides(tmp_path, **{"notify.webhook_url": hook}))
    exp.federation.callbacks.append(CtrlC(at=2))
    with pytest.raises(KeyboardInterrupt):
        exp.run()
    [(path, payload)] = http_server.requests
    assert path == "/hook" and payload["event"] == "interrupted", payload
    assert "interrupted" in payload["title"] and "failed" not in payload["title"]


def test_a_real_failure_still_notifies_failed(tmp_path, http_server) -> None:
    class Boom(Callback):
        def on_round_end(self, fed: Federation, record: dict[str, Any]) -> bool:
            raise RuntimeError("disk on fire")

    hook = json.dumps(http_server.url + "/hook")
    exp = fedloom.Experiment.from_config(None, overrides(tmp_path, **{"notify.webhook_url": hook}))
    exp.federation.callbacks.append(Boom())
    with pytest.raises(RuntimeError):
        exp.run()
    [(_, payload)] = http_server.requests
    assert payload["event"] == "failed" and "disk on fire" in payload["text"]


def test_wall_time_is_the_whole_run_summed_over_resumes(tmp_path) -> None:
    exp = fedloom.Experiment.from_config(None, overrides(tmp_path))
    exp.federation.callbacks.append(CtrlC(at=1))
    with pytest.raises(KeyboardInterrupt):
        exp.run()
    run_dir = exp.run_dir
    first = json.loads((run_dir / "wall_time.json").read_text())["wall_time_s"]
    assert first > 0
    # stand in for a long first session: the resumed report must include it, not restart at 0
    (run_dir / "wall_time.json").write_text(json.dumps({"wall_time_s": 1000.0}))
    fedloom.Experiment.from_config(None, overrides(tmp_path), resume=True).run()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["wall_time_s"] >= 1000.0 and report["rounds"] == 3
    assert "| Wall time | 16m" in (run_dir / "report.md").read_text()
    # a fresh run (overwrite) starts its clock at zero
    fedloom.Experiment.from_config(None, overrides(tmp_path), overwrite=True).run()
    assert json.loads((run_dir / "report.json").read_text())["wall_time_s"] < 1000.0


def test_report_md_of_a_run_has_tables_not_dict_reprs(tmp_path) -> None:
    exp = fedloom.Experiment.from_config(None, overrides(tmp_path, rounds=1))
    exp.run()
    md = (exp.run_dir / "report.md").read_text()
    assert "{'" not in md and "': " not in md, md
    assert "## Final metrics" in md and "| accuracy | " in md


def test_report_renders_nested_values_as_rows(tmp_path) -> None:
    summary = {
        "run_name": "x",
        "rounds": 2,
        "final_metrics": {"accuracy": 0.5, "test_loss": 1.25},
        "privacy": {"epsilon": 2.0, "delta": 1e-5},
        "config": {
            "topology": {"nodes": [{"name": "root", "clients": []}, {"name": "e0"}]},
            "runtime": {"tokens": {}},
            "data": {"options": {"alpha": [0.1, 0.5]}},
        },
    }
    md = write_report(tmp_path, summary)[1].read_text()
    assert "{" not in md and "[" not in md, md
    for row in (
        "| accuracy | 0.5 |",
        "| test_loss | 1.25 |",
        "| epsilon | 2 |",
        "| topology.nodes.0.name | root |",
        "| topology.nodes.0.clients | - |",
        "| topology.nodes.1.name | e0 |",
        "| runtime.tokens | - |",
        "| data.options.alpha | 0.1, 0.5 |",
    ):
        assert row in md, row


@pytest.mark.parametrize("classes", [10, 62])
def test_partition_figure_has_a_colour_key(classes: int) -> None:
    rng = np.random.default_rng(0)
    report = {
        "counts": rng.integers(0, 5, (8, classes)),
        "num_clients": 8,
        "num_classes": classes,
    }
    fig = partition_figure(report)
    bars = fig.axes[0]
    if classes <= 20:
        assert bars.get_legend() is not None
    else:  # FEMNIST's 62 classes: a colour bar labelled "class"
        assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "class"
