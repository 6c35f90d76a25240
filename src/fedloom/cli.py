"""fedloom's command line: run, resume, inspect and deploy federated training from a config.

Only argparse and fedloom.errors load at import, so --help answers without torch; each
command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from .errors import ConfigError, FedloomError

DEMO_OVERRIDES = ['name="demo"']
DASHBOARD = "127.0.0.1:8765"  # the --dashboard address when none is given: loopback only
DASHBOARD_HELP = (
    f"serve a live page of the run at HOST:PORT (default {DASHBOARD}; port 0 takes a free "
    "one); another address than loopback needs a token (env FEDLOOM_DASHBOARD_TOKEN, or one "
    "is made and shown in the URL)"
)
CONFIG_HELP = "a .toml or .json config file"
# named in --engine's help; a test checks the list against the registry
BUILTIN_ENGINES = ("sequential", "vectorized", "pool", "torchrun", "hierarchy")


def _int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in low..high, refused by argparse (one line, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"{low}..{high}"
            raise argparse.ArgumentTypeError(f"{value} is not allowed: give {allowed}")
        return value

    return parse


def _address_type(any_port: bool) -> Callable[[str], str]:
    """An argparse type: host:port (port 0 only where a server may take any free port)."""

    def parse(text: str) -> str:
        from .config import check_address  # here: config loads pydantic, --help need not

        try:
            return check_address(text, any_port=any_port)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    """Every command and option; building it imports nothing heavy (see the module doc)."""
    parser = argparse.ArgumentParser(
        prog="fedloom",
        description="fedloom: federated learning on PyTorch, run from one config file. "
        "'fedloom COMMAND --help' describes each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run (or resume) the federated training a config describes")
    p_run.add_argument("config", type=Path, help="a .toml or .json config file")
    _common(p_run)
    p_run.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")

    p_demo = sub.add_parser(
        "demo", help="FedAvg on the embedded MNIST (5,000 samples, 100 clients)"
    )
    _common(p_demo)
    p_demo.add_argument(
        "--resume", action="store_true", help="continue runs/demo from its checkpoint"
    )

    p_part = sub.add_parser("partition", help="print the data split a config makes (no training)")
    p_part.add_argument(
        "config", type=Path, nargs="?", help="a .toml or .json config file (default: the demo's)"
    )
    _set_option(p_part)
    p_part.add_argument("--figure", type=Path, help="also draw the split to this PNG")

    p_topo = sub.add_parser(
        "topology", help="print each node's federated groups and draw the graph (no training)"
    )
    p_topo.add_argument("config", type=Path, help=CONFIG_HELP)
    _set_option(p_topo)
    p_topo.add_argument(
        "--png", type=Path, help="draw here (default: <output.dir>/<name>/figures/topology.png)"
    )

    p_srv = sub.add_parser("server", help="run the aggregator of a networked run (gRPC)")
    p_srv.add_argument("config", type=Path, help=CONFIG_HELP)
    p_srv.add_argument(
        "--address",
        type=_address_type(any_port=True),
        help="host:port to listen on (default: runtime.address)",
    )
    _common(p_srv)
    p_srv.add_argument("--resume", action="store_true", help="continue from the checkpoint")

    p_cli = sub.add_parser("client", help="run one data holder of a networked run")
    p_cli.add_argument("config", type=Path, help=CONFIG_HELP)
    p_cli.add_argument(
        "--server",
        type=_address_type(any_port=False),
        help="the aggregator's host:port (default: runtime.address)",
    )
    p_cli.add_argument(
        "--client-id",
        type=_int_at_least(0),
        required=True,
        help="which client this process is (0 .. the task's clients - 1)",
    )
    p_cli.add_argument("--token", help="this client's token (or env FEDLOOM_TOKEN)")
    p_cli.add_argument("--data", help="where this client's data lives (sets data.root)")
    p_cli.add_argument(
        "--noise-seed",
        type=_int_at_least(0, 2**63 - 1),
        help="seed local DP / DP-SGD noise with this (or env FEDLOOM_NOISE_SEED) instead of a "
        "secret: for tests and reproducible runs only, it voids the guarantee against an "
        "aggregator that learns it",
    )
    p_cli.add_argument(
        "--device", help="where this client trains: auto, cpu, cuda, cuda:N (sets train.device)"
    )
    p_cli.add_argument(
        "--state-file",
        type=Path,
        help="keep this client's state (privacy accountant, compression residual, strategy "
        "state) in this file, written after every round, so a restarted client goes on from it",
    )
    _set_option(p_cli)

    p_start = sub.add_parser(
        "start", help="aggregator or client, as --role or RANK (torchrun, fedloom launch) says"
    )
    p_start.add_argument("config", type=Path, help=CONFIG_HELP)
    p_start.add_argument(
        "--role",
        choices=["server", "client"],
        help="this process's role (default: from RANK, as torchrun and fedloom launch set it)",
    )
    p_start.add_argument(
        "--client-id",
        type=_int_at_least(0),
        help="which client this process is (default: from RANK)",
    )
    p_start.add_argument(
        "--address", type=_address_type(any_port=True), help="aggregator host:port"
    )
    _common(p_start)
    p_start.add_argument(
        "--resume", action="store_true", help="the aggregator continues from its checkpoint"
    )

    p_node = sub.add_parser(
        "node", help="run a relay of a [topology]: aggregates its clients, a client of its parent"
    )
    p_node.add_argument("config", type=Path, help=CONFIG_HELP)
    p_node.add_argument("--name", required=True, help="the node's name in the topology")
    _set_option(p_node)

    p_launch = sub.add_parser(
        "launch",
        help="start 1 aggregator + N-1 clients on this machine (or a config's whole topology)",
    )
    p_launch.add_argument(
        "--nproc",
        type=_int_at_least(2),
        help="processes: 1 aggregator + clients (not needed for a config with a [topology])",
    )
    p_launch.add_argument(
        "--master-port",
        type=_int_at_least(1, 65535),
        help="the aggregator's port on 127.0.0.1 (default: a free one)",
    )
    p_launch.add_argument(
        "--allow-fewer-clients",
        action="store_true",
        help="run even when the task has more clients than the N-1 started (it then trains "
        "a different federation from `fedloom run`)",
    )
    p_launch.add_argument(
        "--dashboard",
        nargs="?",
        const=DASHBOARD,
        metavar="HOST:PORT",
        type=_dashboard_type,
        help="the aggregator (or a topology's root) serves a live page: " + DASHBOARD_HELP,
    )
    p_launch.add_argument("target", help="a config file, or a .py script run in every process")
    p_launch.add_argument("args", nargs=argparse.REMAINDER, help="passed on to each process")

    p_dash = sub.add_parser(
        "dashboard", help="serve the live page of a run directory, read-only (runs/NAME)"
    )
    p_dash.add_argument("run_dir", type=Path, help="a run's directory, e.g. runs/demo")
    p_dash.add_argument(
        "--address",
        default=DASHBOARD,
        type=_dashboard_type,
        help=f"HOST:PORT to serve the page at (default {DASHBOARD})",
    )
    return parser


def _dashboard_type(text: str) -> str:
    """An argparse type: the dashboard's HOST:PORT."""
    from .observe.dashboard.access import split_address

    try:
        split_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "partition":
            return _partition(args)
        if args.command == "topology":
            return _topology(args)
        if args.command == "dashboard":
            return _dashboard(args)
        if args.command in ("server", "client", "start", "launch", "node"):
            return _runtime(args)
        source = None if args.command == "demo" else args.config
        overrides = (DEMO_OVERRIDES if args.command == "demo" else []) + _engine(args)
        overrides += args.overrides
        return _run(
            source, overrides, args.resume, args.overwrite, args.progress, args.dashboard
        )
    except (FedloomError, OSError) as e:  # expected: bad input, a missing or unwritable file
        if args.verbose:
            traceback.print_exc()
        print(error_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command in ("run", "demo", "server") or _starts_server(args)
        hint = "; continue with --resume" if resumable else ""
        print(f"fedloom: interrupted{hint}", file=sys.stderr)
        return 130


def error_line(e: BaseException) -> str:
    """``fedloom: error: ...``; a message that names its command (``fedloom node: ...``) reads
    ``fedloom node: error: ...`` as argparse's own errors do, not ``fedloom: error: fedloom``."""
    text = str(e)
    head, sep, rest = text.partition(": ")
    command = head.removeprefix("fedloom ")
    if sep and command != head and command.isidentifier():
        return f"{head}: error: {rest}"
    return f"fedloom: error: {text}"


def _starts_server(args: argparse.Namespace) -> bool:
    """``fedloom start`` as the aggregator (the role that has ``--resume``), not a client."""
    if args.command != "start":
        return False
    from .deploy.roles import role_from_env

    try:
        role = args.role or getattr(role_from_env(), "name", None)
    except ConfigError:
        return False
    return bool(role == "server")


def _set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable); VALUE is read as TOML: --set train.lr=0.1, "
        "--set name='\"exp 1\"', --set runtime.tokens='{0=\"a\"}'; a bare word or a number "
        "for a text key is taken as text (--set notify.telegram_chat_id=42)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    _set_option(p)
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when the terminal is a TTY)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run of the same name (refused otherwise)",
    )
    p.add_argument(
        "--dashboard",
        nargs="?",
        const=DASHBOARD,
        metavar="HOST:PORT",
        type=_dashboard_type,
        help=DASHBOARD_HELP,
    )
    p.add_argument(
        "--engine",
        metavar="NAME",
        help="how the simulation trains a round's clients (simulation.engine): "
        f"{', '.join(BUILTIN_ENGINES)} or a registered engine's name",
    )
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="train clients in N worker processes (simulation.engine=pool, workers=N; "
        "asmallbit's main_mp.py --process_threshold)",
    )


def _engines() -> list[str]:
    """The registered engines' names (fedloom.compose.engines registers the built-in ones).

    Asked only once an ``--engine`` is given: it imports torch, which ``--help`` must not.
    """
    from .compose import engines  # noqa: F401
    from .registry import ENGINES

    return ENGINES.names()


def _engine(args: argparse.Namespace) -> list[str]:
    """``--engine`` / ``--processes`` as config overrides (an explicit ``--set`` wins)."""
    if args.engine is not None and args.engine not in _engines():
        raise ConfigError(f"--engine {args.engine!r}: unknown engine; allowed: {_engines()}")
    if args.processes is not None:
        if args.processes < 1:
            raise ConfigError(f"--processes must be >= 1, got {args.processes}")
        if args.engine not in (None, "pool"):
            raise ConfigError(f"--processes runs the 'pool' engine, not {args.engine!r}")
        return ["simulation.engine='pool'", f"simulation.workers={args.processes}"]
    return [f"simulation.engine='{args.engine}'"] if args.engine else []


def _run(
    source: Path | None,
    overrides: list[str],
    resume: bool,
    overwrite: bool,
    progress: bool | None,
    dashboard: str | None = None,
) -> int:
    from .experiment import Experiment

    exp = Experiment.from_config(
        source, overrides, resume=resume, overwrite=overwrite, progress=progress
    )
    page = None
    if dashboard is not None and exp.recorder is not None:  # rank 0 of torchrun serves it
        from .compose.dashboard import open_dashboard

        page = open_dashboard(exp.config, exp.federation, dashboard, run_dir=exp.run_dir)
    try:
        result = exp.run()
    finally:
        if page is not None:
            page.stop(linger=1.0)
    if exp.recorder is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    final = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items())
    print(f"fedloom: {exp.config.name}: {result.rounds} rounds ({result.stop_reason}); {final}")
    print(f"fedloom: results in {exp.run_dir}")
    return 0


def _runtime(args: argparse.Namespace) -> int:
    from .deploy import launch, roles

    if args.command == "launch":
        if args.nproc is None:
            return launch.launch_topology(args.target, args.args, dashboard=args.dashboard)
        return launch.launch(
            args.nproc,
            args.target,
            args.args,
            master_port=args.master_port,
            allow_fewer_clients=args.allow_fewer_clients,
            dashboard=args.dashboard,
        )
    if args.command == "node":
        from .deploy.relay import run_node

        run_node(args.config, list(args.overrides), name=args.name)
        return 0
    overrides = list(args.overrides)
    role_name, address, client_id = args.command, None, getattr(args, "client_id", None)
    if args.command == "start":
        env_role = roles.role_from_env()
        role_name = args.role or (env_role.name if env_role else None)
        if role_name is None:
            raise ConfigError("fedloom start: give --role, or run under torchrun/fedloom launch")
        address = args.address or (env_role.address if env_role else None)
        if client_id is None and env_role is not None:
            client_id = env_role.client_id
        if env_role is not None and role_name == "server" and "WORLD_SIZE" in os.environ:
            overrides.insert(0, f"runtime.min_clients={int(os.environ['WORLD_SIZE']) - 1}")
    dashboard = getattr(args, "dashboard", None)
    if role_name == "server":
        result = roles.run_server(
            args.config,
            overrides,
            address=address or getattr(args, "address", None),
            resume=args.resume,
            overwrite=args.overwrite,
            progress=args.progress,
            dashboard=dashboard,
        )
        final = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items())
        print(f"fedloom: aggregator done: {result.rounds} rounds ({result.stop_reason}); {final}")
        return 0
    if dashboard is not None:
        raise ConfigError("--dashboard: the aggregator serves the dashboard, not a client")
    if client_id is None:
        raise ConfigError("a client needs --client-id")
    if getattr(args, "data", None):
        overrides.append(f"data.root={args.data!r}")
    rounds = roles.run_client(
        args.config,
        overrides,
        server=address or getattr(args, "server", None),
        client_id=client_id,
        token=getattr(args, "token", None),
        noise_seed=getattr(args, "noise_seed", None),
        device=getattr(args, "device", None),
        state_file=getattr(args, "state_file", None),
    )
    print(f"fedloom: client {client_id} done after {rounds} rounds")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    """Serve a run directory's page until Ctrl-C; a run still being written is followed."""
    import time

    from .observe.dashboard import (
        Access,
        DashboardServer,
        RunDirFollower,
        load_run_dir,
        split_address,
    )

    state = load_run_dir(args.run_dir)
    host, port = split_address(args.address)
    access = Access.for_address(host, os.environ.get("FEDLOOM_DASHBOARD_TOKEN"))
    follower = RunDirFollower(state, args.run_dir).start()
    with DashboardServer(state, port, access=access) as page:
        print(f"fedloom: dashboard of {args.run_dir} at {page.url} (Ctrl-C stops it)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
        finally:
            follower.stop()


def _partition(args: argparse.Namespace) -> int:
    from .compose.data import load_dataset, partition
    from .config import load_config
    from .data.partition import format_report, partition_report, plot_partition

    cfg = load_config(args.config, args.overrides)
    if cfg.task is not None:
        raise ConfigError(
            f"fedloom partition shows the built-in classification task's data split; "
            f"task.factory = {cfg.task.factory!r} builds its own clients"
        )
    dataset = load_dataset(cfg)
    parts = partition(cfg, dataset)
    report = partition_report(parts, dataset.train_y.numpy(), dataset.num_classes)
    print(f"{cfg.data.dataset}: {len(dataset)} train samples, {cfg.data.partition} split")
    print(format_report(report))
    if args.figure:
        plot_partition(report, args.figure)
        print(f"figure: {args.figure}")
    return 0


def _topology(args: argparse.Namespace) -> int:
    from .config import load_config
    from .topology import Topology, TopologyError, draw_topology, groups, levels
    from .topology.graph import format_clients

    cfg = load_config(args.config, args.overrides)
    if cfg.topology is None:
        raise ConfigError(f"{args.config}: no [topology] section (see examples/hierarchy.toml)")
    topo = Topology.from_config(cfg.topology).validate()
    by_node, depths = groups(topo), levels(topo)
    n_clients = sum(len(n.clients) for n in topo.nodes.values())
    print(
        f"{cfg.name}: {len(topo.nodes)} nodes in {len(depths)} levels, {n_clients} simulated "
        f"clients; edge_rounds {cfg.topology.edge_rounds}"
    )
    for name in (n for level in depths for n in level):
        address = topo.nodes[name].address
        print(name + (f" ({address})" if address else ""))
        for g in by_node[name]:
            members = [f"peers {', '.join(g.peers)}"] if g.peers else []
            if g.role == "aggregator" and g.clients:
                members.append(f"clients {format_clients(g.clients)} ({len(g.clients)})")
            where = "of" if g.role == "aggregator" else "in"
            print(f"  {g.role:<12} {where} group {g.aggregator!r}: {'; '.join(members)}")
        if not by_node[name]:
            print("  in no group")
    try:  # what a networked run would also need; the simulation does without
        topo.validate(network=True)
    except TopologyError as e:
        print(f"note: for a networked run: {'; '.join(e.problems)}")
    png = args.png or Path(cfg.output.dir) / cfg.name / "figures" / "topology.png"
    draw_topology(topo, png, title=f"{cfg.name}: topology")
    print(f"figure: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
