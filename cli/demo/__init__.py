"""`nextbest demo …`: the synthetic demo retailer (generator, seeder, model training).

The heavy modules (services, XGBoost) are imported only when a demo command runs, so other commands start fast.
"""

from __future__ import annotations

import argparse
import sys

import orjson


def _customer_count(value: str) -> int:
    number = int(value)
    if number < 5:
        raise argparse.ArgumentTypeError("at least 5 customers (the showcase needs them)")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="the synthetic demo retailer")
    commands = demo.add_subparsers(dest="demo_command", required=True, metavar="COMMAND")
    seed = commands.add_parser(
        "seed",
        help="seed catalogue, stock, customers with histories and a trained model (once per data dir)",
        description="Generate the demo retailer and load it into the services through their contracts. "
        "Uses NEXTBEST_DATA_DIR / NEXTBEST_DATABASE_URL like the services do. A second run with the same "
        "parameters does nothing; --force empties the services' databases and seeds again.",
    )
    seed.add_argument("--customers", type=_customer_count, default=10_000, help="how many customers (default 10000)")
    seed.add_argument("--seed", type=int, default=42, help="random seed; same seed, same retailer (default 42)")
    seed.add_argument("--force", action="store_true", help="empty the databases and seed again")
    seed.set_defaults(func=_seed)


async def _seed(args: argparse.Namespace) -> int:
    from cli.demo.seed import SHOWCASE, SeedConflict, seed

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        report = await seed(customers=args.customers, seed=args.seed, force=args.force, out=say)
    except SeedConflict as exc:
        print(f"nextbest demo seed: {exc}", file=sys.stderr)
        return 1
    if report.rejections:
        print(f"nextbest demo seed: {report.events_rejected} events were rejected", file=sys.stderr)
        return 1
    if not report.skipped:
        say(f"\nShowcase customers ({report.data_dir / SHOWCASE}):")
        say(orjson.dumps(report.showcase, option=orjson.OPT_INDENT_2).decode())
    return 0
