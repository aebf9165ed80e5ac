"""The ProfileService gRPC servicer: protobuf in, one domain call, protobuf out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from nextbest.common.v1 import common_pb2
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc

from libs.clients import Budget
from libs.errors import InvalidArgument
from libs.protoconv import from_timestamp, to_duration, to_timestamp
from services.profile.domain import Event, Identifier, IngestResult, ProfileService, ProfileView
from services.profile.domain import events as ev
from services.profile.domain.lineage import LineageFollower
from services.profile.domain.segments import SegmentDefinition
from services.profile.domain.service import ITEM_SLICE
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
_LEDGER_TYPES = {
    pb.LedgerEntryType.Value(f"LEDGER_ENTRY_TYPE_{name.upper()}"): name for name in ev.LEDGER_ENTRY_TYPES
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
        lines=tuple(
            ev.OrderLine(
                line.sku,
                line.quantity,
                line.unit_price,
                line.list_price,
                line.category,
                line.brand,
                line.size,
                line.colour,
            )
            for line in message.lines
        ),
        shipping_fee=message.shipping_fee,
        shipped=message.shipped,
        channel=_CHANNELS.get(message.channel, ""),
        store_id=message.store_id,
    )


def _return(message: pb.ProductReturn) -> ev.ProductReturn:
    return ev.ProductReturn(
        order_id=message.order_id,
        lines=tuple(
            ev.ReturnLine(line.sku, line.quantity, line.refund_amount, line.category) for line in message.lines
        ),
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
    "search": lambda m: ev.Search(m.query, m.results),
    "cart_abandoned": lambda m: ev.CartAbandoned(m.cart_value, m.items),
    "checkout": lambda m: ev.Checkout(m.cart_value, m.items, _CHANNELS.get(m.channel, "")),
    "store_visit": lambda m: ev.StoreVisit(m.store_id, m.duration.seconds + m.duration.nanos / 1e9),
    "login": lambda m: ev.Login(_CHANNELS.get(m.channel, "")),
    "ledger_entry": lambda m: ev.LedgerEntry(_vocabulary(_LEDGER_TYPES, m.type), m.amount, m.order_id),
    "model_prediction": lambda m: ev.ModelPrediction(m.use_case, m.model_name, m.model_version, m.value),
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


async def _events(messages: Sequence[pb.Event]) -> list[Event]:
    """A batch's events in domain terms, yielding to the event loop between slices: converting a 500-event batch
    takes milliseconds that reads would otherwise wait out."""
    events = []
    for start in range(0, len(messages), ITEM_SLICE):
        if start:
            await asyncio.sleep(0)
        events.extend(_event(message) for message in messages[start : start + ITEM_SLICE])
    return events


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
            spend_30d=traits.spend_30d,
            spend_90d=traits.spend_90d,
            spend_365d=traits.spend_365d,
            orders_30d=traits.orders_30d,
            orders_90d=traits.orders_90d,
            orders_365d=traits.orders_365d,
            return_rate_by_count=traits.return_rate_by_count,
            favourite_categories=traits.favourite_categories,
            favourite_brands=traits.favourite_brands,
            favourite_sizes=traits.favourite_sizes,
            favourite_colours=traits.favourite_colours,
            preferred_channel=traits.preferred_channel,
            searches=traits.searches,
            recent_searches=traits.recent_searches,
            cart_abandonments=traits.cart_abandonments,
            checkouts=traits.checkouts,
            store_visits=traits.store_visits,
            last_store_id=traits.last_store_id,
            logins=traits.logins,
            last_login_at=_timestamp(traits.last_login_at),
            ledger_refunds=traits.ledger_refunds,
            purchase_frequency=traits.purchase_frequency,
            net_spend_30d=traits.net_spend_30d,
            net_spend_90d=traits.net_spend_90d,
            net_spend_365d=traits.net_spend_365d,
            write_offs=traits.write_offs,
            purchase_intent=traits.purchase_intent,
            recently_returned=[
                pb.ReturnedItem(sku=item.sku, category=item.category, returned_at=to_timestamp(item.returned_at))
                for item in traits.recently_returned
            ],
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
        segments=[
            pb.SegmentMembership(segment=name, since=to_timestamp(since))
            for name, since in (view.segments or {}).items()
        ],
        model_traits={
            use_case: pb.ModelTrait(
                value=trait.value,
                model_name=trait.model_name,
                model_version=trait.model_version,
                scored_at=to_timestamp(trait.scored_at),
            )
            for use_case, trait in (view.model_traits or {}).items()
        },
    )


def _ingest_response(result: IngestResult, response: type) -> object:
    return response(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=[
            pb.EventRejection(index=r.index, event_id=r.event_id, field=r.field, reason=r.reason)
            for r in result.rejected
        ],
    )


def _segment(definition: SegmentDefinition) -> pb.Segment:
    return pb.Segment(
        name=definition.name,
        expression=definition.expression,
        description=definition.description,
        version=definition.version,
        updated_at=to_timestamp(definition.updated_at),
    )


@dataclass(frozen=True, slots=True)
class _ReadMask:
    """A GetProfile read mask: Profile field paths, and the model use cases asked for one by one."""

    fields: FieldMask
    model_traits: frozenset[str]

    def wants(self, top_level_field: str) -> bool:
        return any(path.split(".")[0] == top_level_field for path in self.fields.paths)

    def apply(self, profile: pb.Profile) -> pb.Profile:
        masked = pb.Profile()
        self.fields.MergeMessage(profile, masked)
        for use_case in self.model_traits & profile.model_traits.keys():
            masked.model_traits[use_case].CopyFrom(profile.model_traits[use_case])
        return masked


def _read_mask(request: pb.GetProfileRequest) -> _ReadMask | None:
    """The request's mask, normalised, or None for "every field"; INVALID_ARGUMENT names a path Profile lacks.
    A map key may end a path (`model_traits.churn_risk`, or quoted: model_traits.`churn.v2`, as AIP-161 allows):
    that entry alone, when present."""
    if not request.HasField("read_mask") or not request.read_mask.paths:
        return None
    fields, use_cases = FieldMask(), set()
    for i, path in enumerate(request.read_mask.paths):
        head, _, key = path.partition(".")
        if head == "model_traits" and key:
            if len(key) > 2 and key[0] == key[-1] == "`":
                key = key[1:-1]  # AIP-161's quoting, for a key holding "." or other non-identifier characters
            elif "." in key:
                raise InvalidArgument(
                    f"read_mask.paths[{i}]", f"{path!r}: a model trait is selected whole (quote a key holding '.' "
                    "in backticks)"
                )
            use_cases.add(key)
        elif FieldMask(paths=[path]).IsValidForDescriptor(pb.Profile.DESCRIPTOR):
            fields.paths.append(path)
        else:
            raise InvalidArgument(f"read_mask.paths[{i}]", f"{path!r} is not a field of Profile")
    canonical = FieldMask()
    canonical.CanonicalFormFromMask(fields)  # sorted, overlapping paths merged
    whole = "model_traits" in canonical.paths  # the whole map asked for too: its keys add nothing
    return _ReadMask(canonical, frozenset() if whole else frozenset(use_cases))


class ProfileServicer(pb_grpc.ProfileServiceServicer):
    """Maps the ProfileService contract onto `ProfileService`."""

    def __init__(self, service: ProfileService, identity: IdentityClient, lineage: LineageFollower) -> None:
        self.service = service
        self.identity = identity
        self.lineage = lineage

    async def IngestEvents(
        self, request: pb.IngestEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestEventsResponse:
        resolver = self.identity.resolver(Budget.from_context(context, DEFAULT_INGEST_SECONDS))
        result = await self.service.ingest(await _events(request.events), resolver)
        return _ingest_response(result, pb.IngestEventsResponse)

    async def StreamEvents(
        self, request_iterator: AsyncIterator[pb.StreamEventsRequest], context: grpc.aio.ServicerContext
    ) -> pb.StreamEventsResponse:
        async def batches() -> AsyncIterator[list[Event]]:
            # The next message is read only after the previous batch is applied: one batch in flight, and the
            # producer's sends block on HTTP/2 flow control meanwhile.
            async for message in request_iterator:
                yield await _events(message.events)

        def resolver() -> object:
            return self.identity.resolver(Budget.from_context(context, DEFAULT_INGEST_SECONDS))

        result = await self.service.ingest_stream(batches(), resolver)
        return _ingest_response(result, pb.StreamEventsResponse)

    async def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProfileResponse:
        mask = _read_mask(request)
        wants_activity = not request.omit_recent_activity and (mask is None or mask.wants("recent_activity"))
        view = await self.service.get_profile(
            request.customer_id, request.include_features, include_activity=wants_activity
        )
        profile = _profile(view)
        if mask is not None:
            profile = mask.apply(profile)
        return pb.GetProfileResponse(profile=profile, features=view.features or {})

    async def GetFeatures(
        self, request: pb.GetFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetFeaturesResponse:
        names = list(request.names)
        features = await self.service.get_features(request.customer_id, names)
        return pb.GetFeaturesResponse(
            customer_id=request.customer_id, features=features, values=[features[name] for name in names]
        )

    async def RefoldProfiles(
        self, request: pb.RefoldProfilesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RefoldProfilesResponse:
        customer_ids, token = await self.service.refold_targets(
            list(request.customer_ids), request.all, request.page_size, request.page_token
        )
        refolded = await self.lineage.refold(customer_ids)
        return pb.RefoldProfilesResponse(refolded=refolded, next_page_token=token)

    async def ListFeatures(
        self, request: pb.ListFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListFeaturesResponse:
        page = await self.service.list_features(list(request.names), request.page_size, request.page_token)
        return pb.ListFeaturesResponse(
            customer_ids=page.customer_ids,
            names=page.names,
            values=[value for row in page.rows for value in row],
            next_page_token=page.next_page_token,
        )

    async def PutSegment(
        self, request: pb.PutSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.PutSegmentResponse:
        given = request.segment
        definition, members = await self.service.put_segment(
            given.name, given.expression, given.description, request.expected_version
        )
        return pb.PutSegmentResponse(segment=_segment(definition), members=members)

    async def ListSegments(
        self, request: pb.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentsResponse:
        return pb.ListSegmentsResponse(segments=[_segment(d) for d in await self.service.list_segments()])

    async def ListSegmentVersions(
        self, request: pb.ListSegmentVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentVersionsResponse:
        versions, current, token = await self.service.segment_versions(
            request.name, request.page_size, request.page_token
        )
        return pb.ListSegmentVersionsResponse(
            versions=[_segment(d) for d in versions], current_version=current, next_page_token=token
        )

    async def DeleteSegment(
        self, request: pb.DeleteSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSegmentResponse:
        await self.service.delete_segment(request.name)
        return pb.DeleteSegmentResponse()

    async def ListSegmentMembers(
        self, request: pb.ListSegmentMembersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentMembersResponse:
        members, token = await self.service.list_segment_members(
            request.segment, request.page_size, request.page_token
        )
        return pb.ListSegmentMembersResponse(
            members=[pb.SegmentMember(customer_id=m.customer_id, since=to_timestamp(m.since)) for m in members],
            next_page_token=token,
        )

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        async for customer_ids in self.service.changes.watch():
            yield pb.WatchChangesResponse(customer_ids=customer_ids)
