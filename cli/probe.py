"""`python -m cli.probe PORT`: the health check containers run on themselves (docker-compose, Kubernetes under TLS).

Asks grpc.health.v1 for the overall status of the server on 127.0.0.1:PORT and exits 0 only when it is SERVING
(warm-up done, not shutting down). It speaks TLS when NEXTBEST_TLS_* are set, presenting the process's own
certificate under mTLS — which kubelet's native gRPC probes cannot do. It imports only grpc: it runs every few
seconds in every container, and the full `nextbest` command costs seconds of CPU to start, this ≈0.2 s.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(variable: str) -> bytes | None:
    path = os.environ.get(variable)
    if not path:
        return None
    with open(path, "rb") as file:
        return file.read()


def channel_to(target: str) -> grpc.Channel:
    """Plaintext, or TLS as libs/tls.py sets it up: the CA verifies the server, cert+key are the client's."""
    chain, key, ca = (_read(f"NEXTBEST_TLS_{name}_FILE") for name in ("CERT", "KEY", "CA"))
    if chain is None and ca is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, key, chain))


def check(port: int, timeout: float) -> str:
    """The overall health status name (SERVING, NOT_SERVING, …), or the RPC's failure."""
    with channel_to(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cli.probe", description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int, help="the service's gRPC port")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    status = check(args.port, args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
