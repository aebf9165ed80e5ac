"""Bugs the fuzz tier found, pinned as named examples: each once answered INTERNAL or UNKNOWN to bad input."""

from __future__ import annotations

import grpc
import pytest
from nextbest.decision.v1 import decision_service_pb2 as decision_pb
from nextbest.identity.v1 import identity_service_pb2 as identity_pb

from tests.fuzz.harness import call_client_stream, call_unary

pytestmark = pytest.mark.fuzz
INVALID = grpc.StatusCode.INVALID_ARGUMENT
#: One second before 0001-01-01T00:00:00Z: a valid int64, not a valid Timestamp.
BEFORE_YEAR_ONE = -62135596801


def method(target, name: str):
    return target.service.methods_by_name[name]


async def test_undecodable_request_bytes_are_invalid_argument(targets):
    target = await targets("identity")
    # grpc's own deserializer failing used to answer UNKNOWN "Unexpected <class DecodeError>".
    code, details = await call_unary(target.channel, method(target, "Resolve"), b"\x00")
    assert code == INVALID
    assert details.startswith("request: cannot be decoded: Error parsing message with type "
                              "'nextbest.identity.v1.ResolveRequest'"), details


async def test_an_undecodable_message_in_a_client_stream_is_invalid_argument(targets):
    target = await targets("profile")
    code, details = await call_client_stream(target.channel, method(target, "StreamEvents"), [b"\x0a\x05"])
    assert (code, details.split(": ")[0]) == (INVALID, "request")


async def test_set_consent_with_a_timestamp_before_year_one_names_the_field(targets):
    target = await targets("identity")
    request = identity_pb.SetConsentRequest(customer_id=target.examples["SetConsent"][0].customer_id)
    consent = request.consents.add(purpose=identity_pb.CONSENT_PURPOSE_MARKETING, channel=1, granted=True, source="t")
    consent.recorded_at.seconds = BEFORE_YEAR_ONE
    assert await call_unary(target.channel, method(target, "SetConsent"), request) == (
        INVALID,
        "consents[0].recorded_at: not a valid timestamp",
    )


async def test_record_outcome_with_an_impossible_timestamp_names_the_field(targets):
    target = await targets("decision")
    request = decision_pb.RecordOutcomeRequest()
    request.CopyFrom(target.examples["RecordOutcome"][0])
    request.outcome_id = "out-regression"
    request.occurred_at.nanos = -1  # nanos must be 0..999,999,999
    assert await call_unary(target.channel, method(target, "RecordOutcome"), request) == (
        INVALID,
        "occurred_at: not a valid timestamp",
    )
