"""The ``recsys`` command: one entry point, a sub-command group per stage of the system."""

from __future__ import annotations

import argparse
import sys

from recsys import __version__
from recsys.cli import data, events, export, loop, models, monitor, serve, store, train, triton, tune
from recsys.errors import RecsysError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="recsys: recommender training and serving with the MLOps loop around it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `recsys <command> --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"recsys {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    data.add_parser(commands)
    train.add_parser(commands)
    tune.add_parser(commands)
    triton.add_parser(commands)
    store.add_parser(commands)
    events.add_parser(commands)
    export.add_parser(commands)
    models.add_parser(commands)
    serve.add_parser(commands)
    monitor.add_parser(commands)
    loop.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RecsysError as exc:  # a user can fix it: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
