"""Guards on a run directory: a rerun never silently replaces an earlier run, and ``--resume``
never silently continues a different experiment.

A fresh run into a directory holding an earlier run's results is refused unless it is told
to ``overwrite`` them (or to ``resume`` the run). ``--resume`` compares the config saved in
the checkpoint with the new one; only the keys in :data:`RESUMABLE` may differ, because they
change where and how the run is executed, observed or stopped, never what it trains.
Everything else (model, data and partition with its alpha, num_clients, seed, strategy and
its options, every ``train`` setting that shapes an update, attack, topology, and any key
added later) must match, so a resumed run stays the run it continues.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError, RunDirError

# The files a run leaves behind; any of them (non-empty) means "an earlier run is here". Empty
# files do not count: rank 0 of a torchrun job creates metrics.jsonl before the other ranks
# look, and nothing is lost by replacing an empty file.
RESULTS = ("checkpoint.pt", "model.safetensors", "report.json", "report.md", "metrics.jsonl")

# Config keys (and whole sections) --resume accepts changed. Keep README's run-directory
# section in step with this list.
RESUMABLE = (
    "name",  # where the run lives: output.dir/name (a moved or renamed run directory)
    "output",  # dir, progress, tensorboard, figures, checkpoint
    "rounds",  # extend a run (or stop it earlier)
    "eval",  # how often to evaluate and the target that stops the run
    "notify",
    "runtime",  # addresses, ports, timeouts, quorum, tokens, TLS of the network runtime
    "simulation",  # engine, workers, threads
    "data.root",  # where the same dataset lives
    "data.download",
    "train.device",
    "train.state_memory_mb",  # a memory budget; the states themselves are unchanged
)


def earlier_results(run_dir: Path) -> list[str]:
    """The names of an earlier run's (non-empty) result files in ``run_dir``."""
    return [n for n in RESULTS if (run_dir / n).is_file() and (run_dir / n).stat().st_size > 0]


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh run into ``run_dir`` while it holds an earlier run's results."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run and --overwrite replaces it: give one")
    found = [] if resume or overwrite else earlier_results(run_dir)
    if found:
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(found)}): continue it with --resume "
            "or replace it with --overwrite (resume=True / overwrite=True from Python)"
        )


def changed_keys(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved, new)}`` for every key that differs and is not resumable."""
    old_flat, new_flat = _flatten(_plain(saved)), _flatten(_plain(new))
    for flat in (old_flat, new_flat):  # a section added later, off (None), is no change
        for key in [k for k, v in flat.items() if v is None and "." not in k]:
            del flat[key]
    missing = "<absent>"
    return {
        key: (old_flat.get(key, missing), new_flat.get(key, missing))
        for key in sorted(old_flat.keys() | new_flat.keys())
        if old_flat.get(key, missing) != new_flat.get(key, missing) and not _resumable(key)
    }


def check_resumable(checkpoint: Path, state: dict[str, Any], config: dict[str, Any]) -> None:
    """Refuse to resume ``state`` under a ``config`` that changes what the run trains.

    A checkpoint saved without its config (by hand, from Python) is not compared here; the
    loop still checks its seed and :func:`check_params` its model size."""
    if "config" not in state:
        return
    try:
        saved = json.loads(state["config"])
    except json.JSONDecodeError:
        raise CheckpointError(f"checkpoint {checkpoint}: its config is not valid JSON") from None
    changed = changed_keys(saved, config)
    if changed:
        what = ", ".join(f"{k} ({_short(a)} -> {_short(b)})" for k, (a, b) in changed.items())
        raise CheckpointError(
            f"cannot resume {checkpoint}: changed {what}; --resume accepts changes only to "
            f"{', '.join(RESUMABLE)}: start a fresh run instead"
        )


def check_params(checkpoint: Path, state: dict[str, Any], numel: int) -> None:
    """A model of another size, named rather than a size-mismatch traceback from torch."""
    held = state["params"].numel()
    if held != numel:
        raise CheckpointError(
            f"cannot resume {checkpoint}: it holds a model of {held:,} parameters, this "
            f"config's model has {numel:,}"
        )


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    """The config as JSON gives it back (tuples become lists, paths strings)."""
    plain: dict[str, Any] = json.loads(json.dumps(config, default=str))
    return plain


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):  # an empty section or options table adds no key
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
