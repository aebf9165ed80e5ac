"""The ProfileService gRPC servicer: protobuf in, one domain call, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from nextbest.common.v1 import common_pb2
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc

from libs.clients import Budget
from libs.protoconv import from_timestamp, to_duration, to_timestamp
from services.profile.domain import Event, Identifier, ProfileService, ProfileView
from services.profile.domain import events as ev
from services.profile.resolver import IdentityClient

FULL_NAME = pb.DESCRIPTOR.services_by_name["ProfileService"].full_name
#: Budget for resolving a batch's identifiers when the producer sent no deadline.
DEFAULT_INGEST_SECONDS = 30.0

# Proto enum numbers -> domain vocabulary, matched by name so a renamed value fails loudly at import.
_RETURN_METHODS = {pb.ReturnMethod.Value(f"RETURN_METHOD_{name.upper()}"): name for name in ev.RETURN_METHODS}
_CART_ACTIONS = {pb.CartAction.Value(f"CART_ACTION_{name.upper()}"): name for name in ev.CART_ACTIONS}
_OFFER_RESPONSES = {
    pb.OfferResponseType.Value(f"OFFER_RESPONSE_TYPE_{name.upper()}"): name for name in ev.OFFER_RESPONSES
}
_CHANNELS = {
    number: name.removeprefix("CHANNEL_").lower()
    for name, number in common_pb2.Channel.items()
    if number != common_pb2.CHANNEL_UNSPECIFIED
}


def _vocabulary(mapping: Mapping[int, str], number: int) -> str:
    """The domain name of an enum number: "" when unset, "#n" for a number this contract does not know."""
    return mapping.get(number) or ("" if number == 0 else f"#{number}")


def _time(message: pb.Event) -> datetime | None:
    if not message.HasField("occurred_at"):
        return None
    try:
        return from_timestamp(message.occurred_at)
    except (ValueError, OverflowError, OSError):  # outside what a datetime can hold: rejected as invalid
        return None


def _purchase(message: pb.Purchase) -> ev.Purchase:
    return ev.Purchase(
        order_id=message.order_id,
        lines=tuple(ev.OrderLine(line.sku, line.quantity, line.unit_price, line.list_price) for line in message.lines),
        shipping_fee=message.shipping_fee,
        shipped=message.shipped,
        channel=_CHANNELS.get(message.channel, ""),
        store_id=message.store_id,
    )


def _return(message: pb.ProductReturn) -> ev.ProductReturn:
    return ev.ProductReturn(
        order_id=message.order_id,
        lines=tuple(ev.ReturnLine(line.sku, line.quantity, line.refund_amount) for line in message.lines),
        method=_vocabulary(_RETURN_METHODS, message.method),
        reason=message.reason,
    )


_PAYLOADS: dict[str, Callable[..., ev.Payload]] = {
    "page_view": lambda m: ev.PageView(m.page),
    "product_view": lambda m: ev.ProductView(m.sku, m.dwell.seconds + m.dwell.nanos / 1e9),
    "cart_change": lambda m: ev.CartChange(_vocabulary(_CART_ACTIONS, m.action), m.sku, m.quantity, m.unit_price),
    "purchase": _purchase,
    "product_return": _return,
    "service_contact": lambda m: ev.ServiceContact(m.reason, m.resolved),
    "loyalty_change": lambda m: ev.LoyaltyChange(m.points_delta, m.tier),
    "offer_response": lambda m: ev.OfferResponse(
        m.decision_id, m.offer_id, _vocabulary(_OFFER_RESPONSES, m.response)
    ),
    "preference_update": lambda m: ev.PreferenceUpdate(tuple(m.sizes), tuple(m.colours), m.shipping_method),
}


def _event(message: pb.Event) -> Event:
    kind = message.WhichOneof("payload")
    return Event(
        event_id=message.event_id,
        customer_id=message.customer_id,
        identifiers=tuple(Identifier(given.type, given.value) for given in message.identifiers),
        occurred_at=_time(message),
        source=message.source,
        payload=_PAYLOADS[kind](getattr(message, kind)) if kind else None,
    )


def _timestamp(value: datetime | None) -> Timestamp | None:
    return to_timestamp(value) if value is not None else None


def _profile(view: ProfileView) -> pb.Profile:
    traits = view.traits
    return pb.Profile(
        customer_id=view.customer_id,
        traits=pb.Traits(
            total_spend=traits.total_spend,
            order_count=traits.order_count,
            average_order_value=traits.average_order_value,
            last_purchase_at=_timestamp(traits.last_purchase_at),
            days_since_last_purchase=traits.days_since_last_purchase,
            return_rate=traits.return_rate,
            return_count=traits.return_count,
            return_method_mix=traits.return_method_mix,
            full_price_share=traits.full_price_share,
            shipping_paid_share=traits.shipping_paid_share,
            loyalty_tier=traits.loyalty_tier,
            loyalty_points=traits.loyalty_points,
            open_service_issues=traits.open_service_issues,
            service_contacts=traits.service_contacts,
            last_viewed=[
                pb.ViewedSku(
                    sku=view.sku,
                    dwell=to_duration(timedelta(seconds=view.dwell_seconds)),
                    viewed_at=to_timestamp(view.viewed_at),
                )
                for view in traits.last_viewed
            ],
            cart=[
                common_pb2.CartLine(sku=line.sku, quantity=line.quantity, unit_price=line.unit_price)
                for line in traits.cart
            ],
            preferences=pb.Preferences(
                sizes=traits.preferences.sizes,
                colours=traits.preferences.colours,
                shipping_method=traits.preferences.shipping_method,
            ),
            recent_returns=traits.recent_returns,
            net_value=traits.net_value,
        ),
        recent_activity=[
            pb.Activity(
                event_id=activity.event_id,
                kind=activity.kind,
                occurred_at=to_timestamp(activity.occurred_at),
                summary=activity.summary,
            )
            for activity in view.recent_activity
        ],
        first_seen_at=_timestamp(view.first_seen_at),
        updated_at=to_timestamp(view.updated_at),
    )


class ProfileServicer(pb_grpc.ProfileServiceServicer):
    """Maps the ProfileService contract onto `ProfileService`."""

    def __init__(self, service: ProfileService, identity: IdentityClient) -> None:
        self.service = service
        self.identity = identity

    async def IngestEvents(
        self, request: pb.IngestEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestEventsResponse:
        resolver = self.identity.resolver(Budget.from_context(context, DEFAULT_INGEST_SECONDS))
        result = await self.service.ingest([_event(message) for message in request.events], resolver)
        return pb.IngestEventsResponse(
            accepted=result.accepted,
            duplicates=result.duplicates,
            rejected=[
                pb.EventRejection(index=r.index, event_id=r.event_id, field=r.field, reason=r.reason)
                for r in result.rejected
            ],
        )

    async def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProfileResponse:
        view = await self.service.get_profile(
            request.customer_id, request.include_features, include_activity=not request.omit_recent_activity
        )
        return pb.GetProfileResponse(profile=_profile(view), features=view.features or {})

    async def GetFeatures(
        self, request: pb.GetFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetFeaturesResponse:
        features = await self.service.get_features(request.customer_id)
        return pb.GetFeaturesResponse(customer_id=request.customer_id, features=features)

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        async for customer_ids in self.service.changes.watch():
            yield pb.WatchChangesResponse(customer_ids=customer_ids)
