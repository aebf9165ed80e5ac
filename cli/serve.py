"""`nextbest serve SERVICE` and `nextbest migrate [SERVICE...]`: the container image's entry points.

`serve` is `python -m services.<service>` under one command, so a single image runs any service. `migrate` runs
the services' own migrations (each service's `migrate_schema`) and exits: the one-shot job of docker-compose and
Kubernetes, after which the services start with NEXTBEST_MIGRATE_ON_START=false.
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import sys

from cli.mesh import SERVICES
from cli.settings_doc import SERVICE_SETTINGS
from libs.db import create_engine
from libs.settings import load_settings


def serve(args: argparse.Namespace) -> int:
    # Exactly what `python -m services.<service>` runs: one entry point per service, kept in the service.
    sys.argv = [f"services.{args.service}"]
    runpy.run_module(f"services.{args.service}", run_name="__main__", alter_sys=True)
    return 0


async def migrate(args: argparse.Namespace) -> int:
    unknown = set(args.services) - set(SERVICES)
    if unknown:
        print(f"unknown service(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    for service in args.services or SERVICES:
        settings_class = getattr(importlib.import_module(f"services.{service}.settings"), SERVICE_SETTINGS[service])
        settings = load_settings(settings_class)
        app = importlib.import_module(f"services.{service}.app")
        engine = create_engine(settings.resolved_database_url, pool_size=1)
        try:
            await app.migrate_schema(engine)
        finally:
            await engine.dispose()
        print(f"{service}: migrated")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run one service (what `python -m services.SERVICE` runs)")
    p.add_argument("service", choices=SERVICES)
    p.set_defaults(func=serve)
    p = subparsers.add_parser("migrate", help="migrate the services' tables to the newest revision, then exit")
    p.add_argument("services", nargs="*", metavar="SERVICE", help=f"any of {', '.join(SERVICES)} (default: all)")
    p.set_defaults(func=migrate)
