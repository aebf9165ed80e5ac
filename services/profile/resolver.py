"""The identity service behind the domain's Resolver port (Resolve(create_if_missing) with a deadline) and its
LineageSource port (ListLineage, the journal of merges, unmerges and erasures).

Resolve is marked idempotent for the channel's retry policy: resolving the same identifiers again finds the
customer the first attempt created. ListLineage is a read.

Resolutions are cached per identifier set (`libs.customer_cache`): a producer sending cookies or e-mails sends
the same sets again and again, and each Resolve is a hop to identity and a database read there. Identity's change
feed (`WatchChanges`) drops a customer's entries when their identifiers change (link, merge, unmerge, erasure), and
while the feed is down the cache is bypassed, as in the decision.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc
from nextbest.common.v1 import common_pb2
from nextbest.identity.v1 import identity_service_pb2 as identity_pb
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc

from libs.clients import Budget, PeerCredentials, open_channel
from libs.customer_cache import ChangeSubscription, CustomerCache
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

    def __init__(
        self,
        target: str,
        timeout_seconds: float,
        credentials: PeerCredentials | None = None,
        cached_resolutions: int = 0,
    ) -> None:
        self._target = target
        self._credentials = credentials
        self._timeout_seconds = timeout_seconds
        self._channel: grpc.aio.Channel | None = None
        self._stub: identity_grpc.IdentityServiceStub | None = None
        self.resolutions: CustomerCache[tuple[Identifier, ...], str] = CustomerCache(
            "resolutions", cached_resolutions, None, customer_of=lambda _, customer_id: customer_id
        )
        self._changes = ChangeSubscription("identity", self.watch_changes, [self.resolutions] if cached_resolutions else [])

    def open(self) -> None:
        """Open the channel and follow identity's change feed; called on start so that both bind to the serving
        event loop."""
        self._channel = open_channel(
            self._target,
            idempotent=[(IDENTITY_SERVICE, "Resolve"), (IDENTITY_SERVICE, "ListLineage")],
            credentials=self._credentials,
        )
        self._stub = identity_grpc.IdentityServiceStub(self._channel)
        self._changes.start()

    def resolver(self, budget: Budget) -> IdentityResolver:
        if self._stub is None:
            raise RuntimeError("IdentityClient.open() was not called")
        return IdentityResolver(self._stub, budget, self._timeout_seconds, self.resolutions)

    async def watch_changes(self) -> AsyncIterator[list[str]]:
        """Ids of customers whose identifiers changed; `[]` first, once subscribed."""
        async for message in self._stub.WatchChanges(identity_pb.WatchChangesRequest()):
            yield list(message.customer_ids)

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
        await self._changes.stop()
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None


class IdentityResolver:
    """Resolves identifier sets for one IngestEvents call; each Resolve gets min(timeout, time left)."""

    def __init__(
        self,
        stub: identity_grpc.IdentityServiceStub,
        budget: Budget,
        timeout_seconds: float,
        cache: CustomerCache[tuple[Identifier, ...], str],
    ) -> None:
        self._stub = stub
        self._budget = budget
        self._timeout_seconds = timeout_seconds
        self._cache = cache

    async def resolve(self, identifiers: Sequence[Identifier]) -> str:
        given = tuple(identifiers)
        return await self._cache.get(given, lambda: self._resolve(given))

    async def _resolve(self, identifiers: Sequence[Identifier]) -> str:
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
