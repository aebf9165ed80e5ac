"""Entry point of the `nextbest` command: each area registers its sub-commands from its own module."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys

#: Modules that add sub-commands; each has `register(subparsers)` and sets `func` on its parsers.
COMMAND_MODULES = (
    "cli.client", "cli.mesh", "cli.demo", "cli.inventory", "cli.settings_doc", "cli.bench", "cli.identity",
    "cli.model", "cli.explain", "cli.profile", "cli.serve", "cli.certs", "cli.auth", "cli.report", "cli.ope",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextbest", description="NextBest next-best-offer decisioning mesh")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
        if inspect.isawaitable(result):
            result = asyncio.run(result)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
    except BrokenPipeError:
        # The reader went away (`nextbest profile segments members X | head`): stop quietly, as Unix tools do,
        # with stdout pointed at /dev/null so that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
