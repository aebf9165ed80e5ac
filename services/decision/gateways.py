"""Adapters to the four services the decision calls, through their contracts only.

Each gateway owns one long-lived channel (opened on start, closed on stop), turns protobuf into the decision's
domain types and every failed call into a `DependencyError` whose `reason` is the degraded reason code. The
exceptions: a client's bad identifier (identity's INVALID_ARGUMENT is passed through to the client), and the
lineage journal, read in the background and answered to nobody (`Unavailable`, retried).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import grpc
from nextbest.common.v1 import common_pb2
from nextbest.identity.v1 import identity_service_pb2 as identity_pb
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc
from nextbest.inventory.v1 import inventory_service_pb2 as inventory_pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2 as profile_pb
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from nextbest.scoring.v1 import scoring_service_pb2 as scoring_pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc

from libs.clients import PeerCredentials, open_channel
from libs.errors import InvalidArgument, Unavailable
from libs.lineage import LineageEntry, entries_from
from libs.protoconv import from_timestamp, to_timestamp
from services.decision.convert import (
    CHANNEL_NAMES,
    CONSENT_PURPOSE_NAMES,
    LOYALTY_TIER_NAMES,
    OFFER_RESPONSE_NUMBERS,
    enum_names,
)
from services.decision.domain.model import PendingOutcome, Prediction, Preferences, ReturnedItem, StockLevel, Traits
from services.decision.domain.pipeline import Scores

LOCATION_KIND_NAMES = {**enum_names(inventory_pb.LocationKind, "LOCATION_KIND_"), 0: ""}
OFFER_PROPENSITY = "offer_propensity"
#: The model traits (Profile.model_traits keys, written by `nextbest model rescore`) the decision reads.
LIFETIME_VALUE, CHURN_RISK = "lifetime_value", "churn_risk"


class DependencyError(Exception):
    """A dependency was down, slow or could not answer; `reason` is the degraded reason code for the answer."""

    def __init__(self, reason: str, exc: grpc.aio.AioRpcError) -> None:
        super().__init__(f"{reason}: {exc.code().name} {exc.details()}")
        self.reason = reason


class _Gateway:
    """One channel to one service; stubs are created when the channel opens (inside the running event loop)."""

    full_name = ""
    #: Methods safe to retry on UNAVAILABLE (all reads, and writes that are idempotent by key).
    idempotent: tuple[str, ...] = ()

    def __init__(self, target: str, credentials: PeerCredentials | None = None) -> None:
        self.target = target
        self.credentials = credentials
        self._channel: grpc.aio.Channel | None = None

    def open(self) -> None:
        idempotent = [(self.full_name, m) for m in self.idempotent]
        self._channel = open_channel(self.target, idempotent=idempotent, credentials=self.credentials)
        self._channel.get_state(try_to_connect=True)  # start connecting now, without waiting for it
        self._bind(self._channel)

    def _bind(self, channel: grpc.aio.Channel) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class IdentityGateway(_Gateway):
    full_name = "nextbest.identity.v1.IdentityService"
    idempotent = ("Resolve", "GetConsent", "ListLineage")

    def _bind(self, channel: grpc.aio.Channel) -> None:
        self._stub = identity_grpc.IdentityServiceStub(channel)

    async def resolve(self, identifiers: Iterable[tuple[int, str]], timeout: float, field: str) -> str | None:
        """The customer behind the identifiers, or None when none matches (an anonymous visitor).

        A malformed identifier is the client's error: INVALID_ARGUMENT naming the client's field (`field`, e.g.
        "customer", prefixed to identity's "identifiers[1].value").
        """
        request = identity_pb.ResolveRequest(
            identifiers=[common_pb2.Identifier(type=kind, value=value) for kind, value in identifiers],
            create_if_missing=False,
        )
        try:
            reply = await self._stub.Resolve(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                where, _, why = (exc.details() or "").partition(": ")
                if why:
                    raise InvalidArgument(f"{field}.{where}", why) from exc
                raise InvalidArgument(f"{field}.identifiers", where or "invalid identifier") from exc
            raise DependencyError("identity_unavailable", exc) from exc
        return reply.customer_id or None

    async def consents(self, customer_id: str, timeout: float) -> frozenset[tuple[str, str]]:
        """The granted (purpose, channel) pairs; absent means not granted."""
        try:
            reply = await self._stub.GetConsent(identity_pb.GetConsentRequest(customer_id=customer_id), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return frozenset()
            raise DependencyError("consent_unavailable", exc) from exc
        return frozenset(
            (CONSENT_PURPOSE_NAMES.get(c.purpose, ""), CHANNEL_NAMES.get(c.channel, ""))
            for c in reply.consents
            if c.granted
        )

    async def watch_changes(self) -> AsyncIterator[list[str]]:
        """Ids of customers whose identifiers or consent changed; `[]` first, once subscribed."""
        async for message in self._stub.WatchChanges(identity_pb.WatchChangesRequest()):
            yield list(message.customer_ids)

    async def list_lineage(self, after_seq: int, limit: int, timeout: float) -> list[LineageEntry]:
        """The lineage journal after `after_seq` (the lineage follower's source). Background work, not an answer
        to degrade: a failure is `Unavailable`, retried on the follower's next round."""
        request = identity_pb.ListLineageRequest(after_seq=after_seq, limit=limit)
        try:
            reply = await self._stub.ListLineage(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"identity service could not list lineage: {exc.code().name}") from exc
        return entries_from(reply.entries, "decision")


class ProfileGateway(_Gateway):
    full_name = "nextbest.profile.v1.ProfileService"
    idempotent = ("GetProfile", "IngestEvents")  # IngestEvents applies each event id once

    def _bind(self, channel: grpc.aio.Channel) -> None:
        self._stub = profile_grpc.ProfileServiceStub(channel)

    async def profile(self, customer_id: str, timeout: float) -> tuple[Traits, Mapping[str, float]] | None:
        """The customer's traits and feature vector, or None when the profile has never seen them."""
        request = profile_pb.GetProfileRequest(
            customer_id=customer_id, include_features=True, omit_recent_activity=True
        )
        try:
            reply = await self._stub.GetProfile(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise DependencyError("profile_unavailable", exc) from exc
        profile = reply.profile
        segments = (m.segment for m in profile.segments)
        traits = traits_from_proto(profile.traits, segments, profile.model_traits)
        return traits, MappingProxyType(dict(reply.features))

    async def watch_changes(self) -> AsyncIterator[list[str]]:
        """Ids of customers whose profile changed; `[]` first, once subscribed."""
        async for message in self._stub.WatchChanges(profile_pb.WatchChangesRequest()):
            yield list(message.customer_ids)

    async def ingest_outcomes(self, outcomes: Sequence[PendingOutcome], timeout: float) -> dict[int, str]:
        """Send outcomes as OfferResponse events; returns {index: "field: reason"} of events the profile rejected."""
        events = [
            profile_pb.Event(
                event_id=o.event_id,
                customer_id=o.customer_id,
                occurred_at=to_timestamp(o.occurred_at),
                source="decision",
                offer_response=profile_pb.OfferResponse(
                    decision_id=o.decision_id, offer_id=o.offer_id, response=OFFER_RESPONSE_NUMBERS[o.type]
                ),
            )
            for o in outcomes
        ]
        try:
            reply = await self._stub.IngestEvents(profile_pb.IngestEventsRequest(events=events), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise DependencyError("profile_unavailable", exc) from exc
        return {r.index: f"{r.field}: {r.reason}" for r in reply.rejected}


def traits_from_proto(
    traits: Any, segments: Iterable[str] = (), model_traits: Mapping[str, Any] | None = None
) -> Traits:
    prefs = traits.preferences
    model_traits = model_traits or {}
    return Traits(
        loyalty_tier=LOYALTY_TIER_NAMES.get(traits.loyalty_tier, "none"),
        total_spend=traits.total_spend,
        net_value=traits.net_value,
        order_count=traits.order_count,
        return_rate=traits.return_rate,
        recent_returns=traits.recent_returns,
        full_price_share=traits.full_price_share,
        shipping_paid_share=traits.shipping_paid_share,
        open_service_issues=traits.open_service_issues,
        cart_skus=tuple(line.sku for line in traits.cart),
        preferences=Preferences(tuple(prefs.sizes), tuple(prefs.colours), prefs.shipping_method),
        segments=tuple(sorted(segments)),
        recently_returned=tuple(
            ReturnedItem(item.sku, item.category, from_timestamp(item.returned_at)) for item in traits.recently_returned
        ),
        predicted_ltv=_prediction(model_traits.get(LIFETIME_VALUE)),
        churn_risk=_prediction(model_traits.get(CHURN_RISK)),
    )


def _prediction(trait: Any) -> Prediction | None:
    return Prediction(trait.value, trait.model_version) if trait is not None else None


class ScoringGateway(_Gateway):
    full_name = "nextbest.scoring.v1.ScoringService"
    idempotent = ("Score",)

    def _bind(self, channel: grpc.aio.Channel) -> None:
        self._stub = scoring_grpc.ScoringServiceStub(channel)

    async def score(
        self,
        customer_id: str,
        customer_features: Mapping[str, float],
        offer_columns: Sequence[str],
        candidates: Sequence[tuple[str, Sequence[float]]],
        timeout: float,
    ) -> Scores:
        """All candidates in one call: (offer id, its offer features in `offer_columns` order) -> each offer's
        acceptance probability. The offer features go as one packed column block, not a map per candidate: a
        third of the bytes, and a fraction of the CPU to build here and to read in scoring."""
        request = scoring_pb.ScoreRequest(
            use_case=OFFER_PROPENSITY,
            customer_id=customer_id,
            customer_features=customer_features,
            candidates=[scoring_pb.Candidate(offer_id=oid) for oid, _ in candidates],
            offer_columns=offer_columns,
            offer_values=[value for _, values in candidates for value in values],
        )
        try:
            reply = await self._stub.Score(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise DependencyError("scoring_timeout", exc) from exc
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise DependencyError("no_model", exc) from exc
            raise DependencyError("scoring_unavailable", exc) from exc
        # A probability outside [0, 1] (or NaN) is not trusted: that offer falls back to its prior.
        trusted = {s.offer_id: s.probability for s in reply.scores if 0.0 <= s.probability <= 1.0}
        return Scores(reply.model_version, trusted)


class InventoryGateway(_Gateway):
    full_name = "nextbest.inventory.v1.InventoryService"
    idempotent = ("CheckAvailability",)

    def _bind(self, channel: grpc.aio.Channel) -> None:
        self._stub = inventory_grpc.InventoryServiceStub(channel)

    async def availability(
        self, product_ids: Sequence[str], location_ids: Sequence[str], timeout: float, skus: Sequence[str] = ()
    ) -> list[StockLevel]:
        """Units of the SKUs and of every variant of the products at the locations (empty `location_ids` = every
        location)."""
        request = inventory_pb.CheckAvailabilityRequest(skus=skus, product_ids=product_ids, location_ids=location_ids)
        try:
            reply = await self._stub.CheckAvailability(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise DependencyError("inventory_unavailable", exc) from exc
        return [
            StockLevel(a.sku, a.product_id, a.location_id, LOCATION_KIND_NAMES.get(a.location_kind, ""), a.on_hand)
            for a in reply.availability
        ]

    async def watch_changes(self) -> AsyncIterator[list[str]]:
        """Ids of products whose stock changed; `[]` first, once subscribed."""
        async for message in self._stub.WatchChanges(inventory_pb.WatchChangesRequest()):
            yield list(message.product_ids)


class Gateways:
    """The four gateways, opened and closed together; `credentials` serve all four channels (None: plaintext, no API key)."""

    def __init__(
        self,
        identity_target: str,
        profile_target: str,
        scoring_target: str,
        inventory_target: str,
        credentials: PeerCredentials | None = None,
    ) -> None:
        self.identity = IdentityGateway(identity_target, credentials)
        self.profile = ProfileGateway(profile_target, credentials)
        self.scoring = ScoringGateway(scoring_target, credentials)
        self.inventory = InventoryGateway(inventory_target, credentials)
        self._all = (self.identity, self.profile, self.scoring, self.inventory)

    def open(self) -> None:
        for gateway in self._all:
            gateway.open()

    async def close(self) -> None:
        for gateway in self._all:
            await gateway.close()
