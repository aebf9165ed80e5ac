"""Server side of authentication: the keystore as a running server sees it, and the interceptor that admits calls.

Every call except health and reflection must carry `authorization: Bearer <API key>`. Order of checks: the key
(UNAUTHENTICATED), the scope and request fields (PERMISSION_DENIED), the client's rate (RESOURCE_EXHAUSTED with
google.rpc.RetryInfo and a `retry-after-ms` trailer). Every denial is one structured line on `nextbest.audit`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from libs.auth.keystore import AuthenticationError, Caller, Keystore, KeystoreError
from libs.auth.policy import authorize, is_open
from libs.auth.ratelimit import RateLimiter
from libs.settings import CommonSettings
from libs.tls import is_loopback

log = logging.getLogger("nextbest.auth")
audit = logging.getLogger("nextbest.audit")


class KeystoreWatcher:
    """The keystore file, re-read when it changes (checked at most every `check_interval` seconds, one stat).

    Rotation and revocation therefore need no restart, which is also how a mounted Kubernetes Secret updates. A
    file that turns unreadable or malformed keeps the last good keystore in force and logs an error, rather than
    locking every client out; at start-up the same problem stops the server.
    """

    def __init__(self, path: Path, check_interval: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.check_interval = check_interval
        self._clock = clock
        self._signature = self._stat()
        try:
            self._keystore = Keystore.load(path)
        except KeystoreError as exc:
            raise SystemExit(f"NEXTBEST_AUTH_KEYS_FILE: {exc}") from None
        self._checked = clock()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_ino, info.st_size  # inode: an atomic replace within one mtime tick

    def current(self) -> Keystore:
        now = self._clock()
        if now - self._checked < self.check_interval:
            return self._keystore
        self._checked = now
        signature = self._stat()
        if signature == self._signature:
            return self._keystore
        self._signature = signature
        try:
            self._keystore = Keystore.load(self.path)
            log.info("keystore %s reloaded", self.path, extra={"clients": len(self._keystore.clients)})
        except KeystoreError as exc:
            log.error("keeping the previous keystore: %s", exc)
        return self._keystore


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits or denies every call that is not health or reflection (see the module docstring for the order)."""

    def __init__(self, keystore: KeystoreWatcher, limiter: RateLimiter | None = None) -> None:
        self._keystore = keystore
        self._limiter = limiter or RateLimiter()

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or is_open(method):
            return handler
        kind = (
            "unary_unary" if handler.unary_unary else "unary_stream" if handler.unary_stream
            else "stream_unary" if handler.stream_unary else "stream_stream"
        )
        behavior = getattr(handler, kind)
        # Only a unary request can be checked field by field before the handler runs; streamed ones never need to.
        unary_request = kind.startswith("unary")
        if kind.endswith("unary"):
            async def admitted(request, context):
                await self._admit(method, request if unary_request else None, context)
                return await behavior(request, context)
        else:
            async def admitted(request, context) -> AsyncIterator[Any]:
                await self._admit(method, request if unary_request else None, context)
                async for response in behavior(request, context):
                    yield response
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        return make(
            admitted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _admit(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Caller:
        token = bearer_token(context)
        try:
            if token is None:
                raise AuthenticationError("missing credential: send metadata 'authorization: Bearer <API key>'")
            caller = self._keystore.current().authenticate(token)
        except AuthenticationError as exc:
            await self._deny(context, grpc.StatusCode.UNAUTHENTICATED, exc.reason, method, None, exc.key_id)
        denial = authorize(caller, method, request)
        if denial is not None:
            await self._deny(context, grpc.StatusCode.PERMISSION_DENIED, denial, method, caller.client.name,
                             caller.key_id)
        wait = self._limiter.retry_after(caller.client)
        if wait > 0:
            await self._deny(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {caller.client.rate_per_second:g}/s exceeded for client {caller.client.name!r}; "
                f"retry in {wait:.3f}s",
                method, caller.client.name, caller.key_id, retry_after=wait,
            )
        return caller

    async def _deny(
        self,
        context: grpc.aio.ServicerContext,
        code: grpc.StatusCode,
        reason: str,
        method: str,
        client: str | None,
        key_id: str | None,
        retry_after: float | None = None,
    ) -> NoReturn:
        audit.warning(
            "denied %s to %s: %s", method, client or "an unauthenticated caller", reason,
            extra={"client": client, "key_id": key_id, "method": method, "reason": reason, "status": code.name,
                   "peer": context.peer()},
        )
        if retry_after is None:
            await context.abort(code, reason)
        status = rich_status(code, reason, retry_after)
        milliseconds = str(math.ceil(retry_after * 1000))
        await context.abort(status.code, status.details, (*status.trailing_metadata, ("retry-after-ms", milliseconds)))


def rich_status(code: grpc.StatusCode, message: str, retry_after: float) -> grpc.Status:
    """A status carrying google.rpc.RetryInfo in `grpc-status-details-bin`, as the gRPC error model prescribes."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(math.ceil(retry_after * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(status_pb2.Status(code=getattr(code_pb2, code.name), message=message,
                                                  details=[detail]))


def load_keystore(settings: CommonSettings, service: str) -> KeystoreWatcher | None:
    """The keystore a server enforces, or None (no authentication: loud when the host is reachable from outside)."""
    if settings.auth_keys_file is None:
        if not is_loopback(settings.host):
            log.warning(
                "%s: no NEXTBEST_AUTH_KEYS_FILE on non-loopback host %s: any client that reaches it may call every "
                "RPC, including the admin ones", service, settings.host,
            )
        return None
    return KeystoreWatcher(settings.auth_keys_file)
