"""`nextbest bench`: load benchmark of the whole mesh against a same-run gRPC fan-out baseline (issue 3)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="load benchmark of the mesh against a same-run baseline")
    bench.set_defaults(func=lambda args: 0)
