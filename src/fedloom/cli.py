"""``fedloom run | demo | partition`` — the command line over :mod:`fedloom.experiment`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import FedloomError

DEMO_OVERRIDES = ['name="demo"']


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedloom", description=__doc__)
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
    p_demo.add_argument("--resume", action="store_true")

    p_part = sub.add_parser("partition", help="print the data split a config makes (no training)")
    p_part.add_argument("config", type=Path, nargs="?")
    p_part.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    p_part.add_argument("--figure", type=Path, help="also draw the split to this PNG")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "partition":
            return _partition(args)
        source = None if args.command == "demo" else args.config
        overrides = (DEMO_OVERRIDES if args.command == "demo" else []) + args.overrides
        return _run(source, overrides, args.resume, args.progress)
    except FedloomError as e:
        print(f"fedloom: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedloom: interrupted; continue with --resume", file=sys.stderr)
        return 130


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="override a config key, e.g. --set train.lr=0.1 (repeatable)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when the terminal is a TTY)",
    )


def _run(source, overrides: list[str], resume: bool, progress: bool | None) -> int:
    from .experiment import Experiment

    exp = Experiment.from_config(source, overrides, resume=resume, progress=progress)
    result = exp.run()
    final = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items())
    print(f"fedloom: {exp.config.name}: {result.rounds} rounds ({result.stop_reason}); {final}")
    print(f"fedloom: results in {exp.run_dir}")
    return 0


def _partition(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data.partition import format_report, partition_report, plot_partition
    from .experiment import load_dataset, partition

    cfg = load_config(args.config, args.overrides)
    dataset = load_dataset(cfg)
    parts = partition(cfg, dataset)
    report = partition_report(parts, dataset.train_y.numpy(), dataset.num_classes)
    print(f"{cfg.data.dataset}: {len(dataset)} train samples, {cfg.data.partition} split")
    print(format_report(report))
    if args.figure:
        plot_partition(report, args.figure)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
