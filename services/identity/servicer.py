"""The IdentityService gRPC servicer: protobuf in, one domain call, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import grpc
from nextbest.common.v1 import common_pb2
from nextbest.identity.v1 import identity_service_pb2 as pb
from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc

from libs.errors import InvalidArgument
from libs.protoconv import from_timestamp, to_timestamp
from services.identity.domain import (
    Consent,
    ConsentChannel,
    ConsentInput,
    ConsentPurpose,
    Identifier,
    IdentifierKind,
    IdentityService,
    LineageKind,
    MatchMethod,
    RawIdentifier,
)
from services.identity.matching.matcher import FieldAgreement

FULL_NAME = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name

# Proto enum numbers <-> domain enums, matched by name so a renamed value fails loudly. UNSPECIFIED and numbers
# from a newer contract map to None, which the domain rejects naming the field.
_KINDS = {common_pb2.IdentifierType.Value(f"IDENTIFIER_TYPE_{kind.name}"): kind for kind in IdentifierKind}
_PURPOSES = {pb.ConsentPurpose.Value(f"CONSENT_PURPOSE_{purpose.name}"): purpose for purpose in ConsentPurpose}
_CHANNELS = {common_pb2.Channel.Value(f"CHANNEL_{channel.name}"): channel for channel in ConsentChannel}
_KIND_NUMBERS = {kind: number for number, kind in _KINDS.items()}
_PURPOSE_NUMBERS = {purpose: number for number, purpose in _PURPOSES.items()}
_CHANNEL_NUMBERS = {channel: number for number, channel in _CHANNELS.items()}
_METHODS = {method: pb.MatchMethod.Value(f"MATCH_METHOD_{method.name}") for method in MatchMethod}
_LINEAGE_KINDS = {kind: pb.LineageKind.Value(f"LINEAGE_KIND_{kind.name}") for kind in LineageKind}


def _identifier(identifier: Identifier) -> common_pb2.Identifier:
    return common_pb2.Identifier(type=_KIND_NUMBERS[identifier.kind], value=identifier.value)


def _consent(consent: Consent) -> pb.Consent:
    return pb.Consent(
        purpose=_PURPOSE_NUMBERS[consent.purpose],
        channel=_CHANNEL_NUMBERS[consent.channel],
        granted=consent.granted,
        source=consent.source,
        recorded_at=to_timestamp(consent.recorded_at),
        text_version=consent.text_version,
    )


def _agreement(agreement: FieldAgreement) -> pb.FieldAgreement:
    return pb.FieldAgreement(field=agreement.field, level=agreement.level, weight=agreement.weight)


def _recorded_at(given: pb.Consent, index: int) -> datetime | None:
    if not given.HasField("recorded_at"):
        return None
    try:
        return from_timestamp(given.recorded_at)
    except (ValueError, OverflowError) as exc:  # seconds or nanos beyond what a Timestamp or datetime holds
        raise InvalidArgument(f"consents[{index}].recorded_at", "not a valid timestamp") from exc


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    """Maps the IdentityService contract onto `IdentityService`."""

    def __init__(self, service: IdentityService) -> None:
        self.service = service

    async def Resolve(self, request: pb.ResolveRequest, context: grpc.aio.ServicerContext) -> pb.ResolveResponse:
        traits = (
            {field.name: value for field, value in request.traits.ListFields()} if request.HasField("traits") else None
        )
        resolution = await self.service.resolve(
            [RawIdentifier(_KINDS.get(given.type), given.value) for given in request.identifiers],
            request.create_if_missing,
            traits,
        )
        return pb.ResolveResponse(
            customer_id=resolution.customer_id,
            match_method=_METHODS[resolution.method],
            matched_by=_identifier(resolution.matched_by) if resolution.matched_by else None,
            linked=[_identifier(identifier) for identifier in resolution.linked],
            conflicts=[_identifier(identifier) for identifier in resolution.conflicts],
            match_probability=resolution.probability,
            agreeing_fields=[_agreement(agreement) for agreement in resolution.agreeing],
            candidates=[
                pb.MatchCandidate(
                    customer_id=candidate.customer_id,
                    match_probability=candidate.probability,
                    agreeing_fields=[_agreement(agreement) for agreement in candidate.agreeing],
                )
                for candidate in resolution.candidates
            ],
        )

    async def GetCustomer(
        self, request: pb.GetCustomerRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCustomerResponse:
        customer = await self.service.get_customer(request.customer_id)
        return pb.GetCustomerResponse(
            customer_id=customer.customer_id,
            identifiers=[_identifier(identifier) for identifier in customer.identifiers],
            created_at=to_timestamp(customer.created_at),
            merged_into=customer.merged_into or "",
        )

    async def SetConsent(
        self, request: pb.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetConsentResponse:
        current = await self.service.set_consent(
            request.customer_id,
            [
                ConsentInput(
                    purpose=_PURPOSES.get(given.purpose),
                    channel=_CHANNELS.get(given.channel),
                    granted=given.granted,
                    source=given.source,
                    recorded_at=_recorded_at(given, index),
                    text_version=given.text_version,
                )
                for index, given in enumerate(request.consents)
            ],
        )
        return pb.SetConsentResponse(consents=[_consent(consent) for consent in current])

    async def GetConsent(
        self, request: pb.GetConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConsentResponse:
        current = await self.service.get_consent(request.customer_id)
        response = pb.GetConsentResponse(consents=[_consent(consent) for consent in current])
        if request.purpose or request.channel:
            response.allowed = self.service.allowed(
                current, _PURPOSES.get(request.purpose), _CHANNELS.get(request.channel)
            )
        if request.include_history:
            history = await self.service.consent_history(request.customer_id)
            response.history.extend(_consent(consent) for consent in history)
        return response

    async def Merge(self, request: pb.MergeRequest, context: grpc.aio.ServicerContext) -> pb.MergeResponse:
        outcome = await self.service.merge(
            request.survivor_customer_id, request.merged_customer_id, request.reason, request.actor
        )
        return pb.MergeResponse(
            merge_id=outcome.merge_id,
            identifiers_moved=outcome.identifiers_moved,
            trait_records_moved=outcome.trait_records_moved,
        )

    async def Unmerge(self, request: pb.UnmergeRequest, context: grpc.aio.ServicerContext) -> pb.UnmergeResponse:
        outcome = await self.service.unmerge(request.merge_id, request.reason, request.actor)
        return pb.UnmergeResponse(
            restored_customer_id=outcome.restored_customer_id,
            identifiers_restored=outcome.identifiers_restored,
            trait_records_restored=outcome.trait_records_restored,
        )

    async def Forget(self, request: pb.ForgetRequest, context: grpc.aio.ServicerContext) -> pb.ForgetResponse:
        outcome = await self.service.forget(request.customer_id, request.reason, request.actor)
        return pb.ForgetResponse(
            erased_now=outcome.erased_now,
            identifiers_erased=outcome.identifiers,
            trait_records_erased=outcome.trait_records,
            consents_erased=outcome.consents,
            erased_at=to_timestamp(outcome.erased_at),
        )

    async def ListLineage(
        self, request: pb.ListLineageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLineageResponse:
        entries = await self.service.list_lineage(request.after_seq, request.limit)
        return pb.ListLineageResponse(
            entries=[
                pb.LineageEntry(
                    seq=entry.seq,
                    kind=_LINEAGE_KINDS[entry.kind],
                    merge_id=entry.merge_id,
                    survivor_customer_id=entry.survivor_id,
                    merged_customer_id=entry.merged_id,
                    customer_id=entry.customer_id,
                    recorded_at=to_timestamp(entry.recorded_at),
                )
                for entry in entries
            ]
        )

    async def WatchChanges(
        self, request: pb.WatchChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchChangesResponse]:
        async for customer_ids in self.service.changes.watch():
            yield pb.WatchChangesResponse(customer_ids=customer_ids)
