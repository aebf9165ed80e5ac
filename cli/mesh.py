"""`nextbest mesh run`: the embedded default — seed once, start the five services as processes, wait for health.

Every service reads its own settings from the environment; the runner only fills in what ties them together
(each dependency's target from that service's port) and leaves everything else to the operator's variables.
Ctrl-C (or SIGTERM) stops every service gracefully; if one dies, the others are stopped too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.auth import mesh_credential_problem
from cli.client import DEFAULT_PORTS, cli_channel, service_target
from libs.settings import CommonSettings, load_settings

#: Start order does not matter for correctness (callers degrade until a dependency is up); this is the log order.
SERVICES = ("identity", "inventory", "scoring", "profile", "decision")
#: Which service reads which dependency target.
DEPENDENCIES = {
    "profile": ("identity",),
    "decision": ("identity", "profile", "scoring", "inventory"),
}


def mesh_environment() -> dict[str, str]:
    """The children's environment: the operator's, plus dependency targets derived from the services' ports."""
    env = dict(os.environ)
    for service, dependencies in DEPENDENCIES.items():
        for dependency in dependencies:
            env.setdefault(f"NEXTBEST_{service.upper()}_{dependency.upper()}_TARGET", service_target(dependency))
    return env


async def wait_healthy(target: str, timeout: float) -> bool:
    """Poll the gRPC health service until it says SERVING (overall status, i.e. warm-up done)."""
    deadline = time.monotonic() + timeout
    async with cli_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    return False


def _examples(data_dir: Path) -> list[str]:
    path = data_dir / "demo-customers.json"
    if not path.exists():
        return ["nextbest decide --channel web --email someone@example.com"]
    demo = orjson.loads(path.read_bytes())
    web, pos, call = demo.get("web", {}), demo.get("pos", {}), demo.get("call_center", {})
    return [
        f"nextbest decide --channel web --email {web.get('email')} --page product"
        + (f" --sku {web['sku']} --dwell 45" if web.get("sku") else ""),
        f"nextbest decide --channel pos --loyalty-card {pos.get('loyalty_card')} --store {pos.get('store_id')}"
        + (f" --sku {pos['sku']}" if pos.get("sku") else ""),
        f"nextbest call --phone '{call.get('phone')}' --reason {call.get('call_reason', 'complaint')}",
    ]


async def run_mesh(args: argparse.Namespace) -> int:
    common = load_settings(CommonSettings)
    problem = mesh_credential_problem(common)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    if not args.no_seed:
        from cli.demo.seed import seed

        await seed(customers=args.customers, seed=args.seed)
    env = mesh_environment()
    children: dict[str, asyncio.subprocess.Process] = {}
    for service in SERVICES:
        children[service] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"services.{service}", env=env
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0
    try:
        healthy = await asyncio.gather(*(wait_healthy(service_target(s), args.startup_timeout) for s in SERVICES))
        failed = [s for s, ok in zip(SERVICES, healthy, strict=True) if not ok]
        if failed:
            print(f"not healthy within {args.startup_timeout:.0f}s: {', '.join(failed)}", file=sys.stderr)
            return 1
        database = "the NEXTBEST_DATABASE_URL database" if common.database_url else f"SQLite files in {common.data_dir}"
        print(f"\nNextBest mesh is up, on {database}:")
        for service in SERVICES:
            print(f"  {service:10s} {service_target(service)}   pid {children[service].pid}")
        print("\nTry, in another terminal (with the virtualenv: source .venv/bin/activate):")
        for example in _examples(common.data_dir):
            print(f"  {example}")
        print("\nCtrl-C stops the mesh.", flush=True)
        waits = {asyncio.ensure_future(p.wait()): s for s, p in children.items()}
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in waits:
                print(f"{waits[task]} exited with {task.result()}; stopping the mesh", file=sys.stderr)
                exit_code = 1
        stopper.cancel()
    finally:
        for process in children.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for service, process in children.items():
            try:
                await asyncio.wait_for(process.wait(), timeout=common.shutdown_grace_seconds + 5)
            except TimeoutError:
                print(f"{service} did not stop in time; killing it", file=sys.stderr)
                process.kill()
                await process.wait()
    return exit_code


async def check_health(args: argparse.Namespace) -> int:
    services = args.services or SERVICES
    unknown = set(services) - set(SERVICES)
    if unknown:
        print(f"unknown service(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    results = await asyncio.gather(*(wait_healthy(service_target(s), args.timeout) for s in services))
    for service, ok in zip(services, results, strict=True):
        print(f"  {service:10s} {service_target(service):22s} {'SERVING' if ok else 'NOT SERVING'}")
    return 0 if all(results) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    mesh = subparsers.add_parser("mesh", help="run or check the whole mesh on this machine")
    actions = mesh.add_subparsers(dest="mesh_command", required=True, metavar="ACTION")
    p = actions.add_parser("run", help="seed once, start the five services, wait for health; Ctrl-C stops")
    p.add_argument("--no-seed", action="store_true", help="do not seed the demo retailer")
    p.add_argument("--customers", type=int, default=10_000, help="demo customers to seed (first run only)")
    p.add_argument("--seed", type=int, default=42, help="random seed of the demo retailer")
    p.add_argument("--startup-timeout", type=float, default=60.0)
    p.set_defaults(func=run_mesh)
    p = actions.add_parser("health", help="check the services' health (exit 1 unless all are SERVING)")
    p.add_argument("services", nargs="*", metavar="SERVICE", help=f"any of {', '.join(SERVICES)} (default: all)")
    p.add_argument("--timeout", type=float, default=2.0)
    p.set_defaults(func=check_health)


__all__ = ["DEFAULT_PORTS", "SERVICES", "mesh_environment", "register"]
