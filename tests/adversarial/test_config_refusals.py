"""Configs that would leave a deployment open or wedged are refused before anything listens,
in one line; a run without tokens says in its log that anyone may join."""

from __future__ import annotations

from runtime.conftest import free_port, wait_until, with_changes, write_config

from .conftest import TRACEBACK, small_config


def one_error_line(output: str) -> str:
    errors = [ln for ln in output.splitlines() if ln.startswith("fedloom: error:")]
    assert len(errors) == 1, output
    assert TRACEBACK not in output, output
    return errors[0]


def test_unsafe_configs_are_refused_and_an_open_run_says_so(tmp_path, procs):
    cfg = small_config(tmp_path / "net", "cfg", clients=3, rounds=1)
    named = with_changes(cfg, **{"runtime.tokens": {"alice": "a", "bob": "b", "carol": "c"}})
    partial = with_changes(cfg, **{"runtime.tokens": {"0": "a", "1": "b"}})  # no token for 2
    wedging = with_changes(
        cfg, **{"strategy": {"name": "fedasync"}, "runtime.async_max_share": 1.0}
    )
    started = {
        name: procs.fedloom(
            name,
            "server",
            str(write_config(tmp_path / f"{name}.json", c)),
            "--address",
            f"127.0.0.1:{free_port()}",
        )
        for name, c in (("named", named), ("partial", partial), ("wedging", wedging), ("open", cfg))
    }
    # tokens keyed by node names in a flat run: one line naming runtime.tokens, non-zero exit
    assert started["named"].wait(60) != 0
    line = one_error_line(started["named"].output())
    assert "runtime.tokens" in line and "'alice'" in line, line
    assert started["partial"].wait(60) != 0
    line = one_error_line(started["partial"].output())
    assert "runtime.tokens: no token for ['2']" in line, line
    # async_max_share = 1 would let every client sit at its cap with none training (a wedge)
    # (a config validation error: "invalid config:" then one line per field)
    assert started["wedging"].wait(60) != 0
    one_error_line(started["wedging"].output())
    assert "runtime.async_max_share: Input should be greater than 1" in (
        started["wedging"].output()
    )
    # no tokens: the run starts, and its log says that anyone reaching it may join
    open_run = started["open"]
    wait_until(lambda: "unauthenticated run" in open_run.output(), 60, "the warning")
    assert "unauthenticated run: whoever reaches this server may join as client ids [0, 3)" in (
        open_run.output()
    )
    assert open_run.popen.poll() is None  # waiting for its clients; killed in teardown
