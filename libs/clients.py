"""Client channels to other services, and the latency budget that gives every outbound call a deadline.

Retries live only in the channel's service config, only on UNAVAILABLE, only for the methods a caller marks
idempotent (STYLE: grpc/grpc examples/python/retry).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
import orjson
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from libs.auth.client import bearer_token_interceptors
from libs.settings import CommonSettings
from libs.telemetry import tracing_active
from libs.tls import TlsMaterial, load_tls


def _service_config(idempotent: Iterable[tuple[str, str]]) -> str:
    names = [{"service": service, "method": method} for service, method in idempotent]
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if names:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return orjson.dumps(config).decode()


@dataclass(frozen=True)
class PeerCredentials:
    """What this process shows the services it calls: TLS material (None: plaintext) and its API key."""

    tls: TlsMaterial | None = None
    token: str | None = None


def peer_credentials(common: CommonSettings) -> PeerCredentials:
    """This process's credentials from its settings (NEXTBEST_TLS_*, NEXTBEST_AUTH_TOKEN); read once at wiring."""
    return PeerCredentials(load_tls(common), common.auth_token.get_secret_value() if common.auth_token else None)


def open_channel(
    target: str, idempotent: Iterable[tuple[str, str]] = (), credentials: PeerCredentials | None = None
) -> grpc.aio.Channel:
    """A channel to `target` ("host:port"), traced when tracing is active; retries UNAVAILABLE only for the given
    (service, method)s. With `credentials` it verifies the server (presenting this process's certificate under
    mTLS) and sends this process's API key on every call."""
    credentials = credentials or PeerCredentials()
    if credentials.tls is None:
        connect = grpc.aio.insecure_channel
    else:
        connect = functools.partial(grpc.aio.secure_channel, credentials=credentials.tls.channel_credentials())
    tokens = bearer_token_interceptors(credentials.token) if credentials.token else []
    return connect(
        target,
        options=[
            ("grpc.service_config", _service_config(idempotent)),
            ("grpc.enable_retries", 1),
            ("grpc.keepalive_time_ms", 30_000),
            # Fail fast instead of waiting minutes to reconnect to a restarted dependency.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ],
        interceptors=[*(aio_client_interceptors() if tracing_active() else []), *tokens] or None,
    )


class Budget:
    """The time left to answer one request; every downstream call gets a deadline carved from it."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    @classmethod
    def from_context(cls, context: grpc.aio.ServicerContext, default_seconds: float) -> Budget:
        """The client's deadline when it sent one, else the default (for this channel)."""
        remaining = context.time_remaining()
        if remaining is None or remaining > 3600:  # no deadline sent: gRPC reports a huge value or None
            return cls(default_seconds)
        return cls(remaining)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def timeout(self, reserve: float = 0.0, cap: float | None = None) -> float:
        """Seconds a downstream call may take: what is left minus a reserve for the work after it."""
        left = self.remaining() - reserve
        if cap is not None:
            left = min(left, cap)
        return max(0.001, left)

    def expired(self) -> bool:
        return self.remaining() <= 0.0
