"""The identity service behind the domain's Resolver port (Resolve(create_if_missing) with a deadline) and its
LineageSource port (ListLineage, the journal of merges, unmerges and erasures).

Resolve is marked idempotent for the channel's retry policy: resolving the same identifiers again finds the
customer the first attempt created. ListLineage is a read.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from nextbest.common.v1 import common_pb2
from nextbest.identity.v1 import identity_service_pb2 as identity_pb
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc

from libs.clients import Budget, PeerCredentials, open_channel
from libs.errors import InvalidArgument, Unavailable
from libs.lineage import LineageEntry, entries_from
from services.profile.domain import Identifier

IDENTITY_SERVICE = identity_pb.DESCRIPTOR.services_by_name["IdentityService"].full_name
#: Time kept back from the caller's deadline for storing the batch after resolving.
STORE_RESERVE_SECONDS = 0.05
#: Deadline of one ListLineage page: a background read, so generous.
LINEAGE_TIMEOUT_SECONDS = 5.0


class IdentityClient:
    """The channel to the identity service; hands out a Resolver bound to each request's budget."""

    def __init__(self, target: str, timeout_seconds: float, credentials: PeerCredentials | None = None) -> None:
        self._target = target
        self._credentials = credentials
        self._timeout_seconds = timeout_seconds
        self._channel: grpc.aio.Channel | None = None
        self._stub: identity_grpc.IdentityServiceStub | None = None

    def open(self) -> None:
        """Open the channel; called on start so that it binds to the serving event loop."""
        self._channel = open_channel(
            self._target,
            idempotent=[(IDENTITY_SERVICE, "Resolve"), (IDENTITY_SERVICE, "ListLineage")],
            credentials=self._credentials,
        )
        self._stub = identity_grpc.IdentityServiceStub(self._channel)

    def resolver(self, budget: Budget) -> IdentityResolver:
        if self._stub is None:
            raise RuntimeError("IdentityClient.open() was not called")
        return IdentityResolver(self._stub, budget, self._timeout_seconds)

    async def entries(self, after_seq: int, limit: int) -> list[LineageEntry]:
        """The lineage journal after `after_seq` (the follower's LineageSource)."""
        if self._stub is None:
            raise RuntimeError("IdentityClient.open() was not called")
        request = identity_pb.ListLineageRequest(after_seq=after_seq, limit=limit)
        try:
            response = await self._stub.ListLineage(request, timeout=LINEAGE_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"identity service could not list lineage: {exc.code().name}") from exc
        return entries_from(response.entries, "profile")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None


class IdentityResolver:
    """Resolves identifier sets for one IngestEvents call; each Resolve gets min(timeout, time left)."""

    def __init__(self, stub: identity_grpc.IdentityServiceStub, budget: Budget, timeout_seconds: float) -> None:
        self._stub = stub
        self._budget = budget
        self._timeout_seconds = timeout_seconds

    async def resolve(self, identifiers: Sequence[Identifier]) -> str:
        request = identity_pb.ResolveRequest(
            identifiers=[common_pb2.Identifier(type=given.type, value=given.value) for given in identifiers],
            create_if_missing=True,
        )
        timeout = self._budget.timeout(reserve=STORE_RESERVE_SECONDS, cap=self._timeout_seconds)
        try:
            response = await self._stub.Resolve(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                # Identity names the field of its request ("identifiers[1].value: ..."), which is the same path
                # in our event because the identifiers are passed in order.
                field, _, reason = (exc.details() or "").partition(": ")
                if reason and field.startswith("identifiers"):
                    raise InvalidArgument(field, reason) from exc
                raise InvalidArgument("identifiers", exc.details() or "rejected by the identity service") from exc
            # Down, slow or failing: the whole batch fails so that the producer retries it; nothing is applied.
            raise Unavailable(f"identity service could not resolve identifiers: {exc.code().name}") from exc
        return response.customer_id
