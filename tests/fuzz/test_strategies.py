"""The descriptor-driven strategies really reach the edge cases they promise (else the fuzz tier proves little)."""

from __future__ import annotations

import math

import pytest
from hypothesis import Phase, find, settings
from nextbest.decision.v1 import decision_service_pb2 as decision_pb
from nextbest.profile.v1 import profile_service_pb2 as profile_pb
from nextbest.scoring.v1 import scoring_service_pb2 as scoring_pb

from tests.fuzz.strategies import TIMESTAMP_EDGES, messages, mutations

#: Long-list requests have long reprs on purpose; hypothesis warns when it builds one.
pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore:Generating overly large repr")]
#: Generation only: finding one example is the point, shrinking it would only cost time. Derandomised: a search
#: that finds its example once finds it every run (a random one missed a purchase with lines in 2,000 tries once).
SEARCH = settings(max_examples=2_000, database=None, phases=[Phase.generate], derandomize=True)


def reaches(strategy, condition) -> None:
    assert find(strategy, condition, settings=SEARCH) is not None


def test_messages_reach_unknown_enums_nested_fields_and_impossible_timestamps():
    decide = messages(decision_pb.DecideRequest.DESCRIPTOR)
    known_channels = {v.number for v in decision_pb.DecideRequest.DESCRIPTOR.fields_by_name["channel"].enum_type.values}
    reaches(decide, lambda m: m.channel not in known_channels)
    reaches(decide, lambda m: m.context.cart and m.context.cart[0].quantity in (-(2**31), 2**31 - 1))
    reaches(decide, lambda m: m.context.dwell.seconds < 0)
    outcome = messages(decision_pb.RecordOutcomeRequest.DESCRIPTOR)
    reaches(outcome, lambda m: m.occurred_at.seconds < TIMESTAMP_EDGES[0])
    reaches(outcome, lambda m: math.isnan(m.revenue))


def test_messages_fill_maps_oneofs_and_long_lists():
    score = messages(scoring_pb.ScoreRequest.DESCRIPTOR)
    reaches(score, lambda m: any(math.isinf(v) for v in m.customer_features.values()))
    reaches(score, lambda m: len(m.candidates) >= 100)
    event = messages(profile_pb.Event.DESCRIPTOR)
    reaches(event, lambda m: m.WhichOneof("payload") == "purchase" and m.purchase.lines)
    reaches(event, lambda m: any("\x00" in i.value for i in m.identifiers))


def test_mutations_change_one_field_of_a_valid_request_anywhere_in_it():
    valid = decision_pb.DecideRequest(
        channel=1, customer={"customer_id": "c-1"}, context={"store_id": "S1", "page": "home"}, max_offers=3
    )
    mutated = mutations([valid])
    reaches(mutated, lambda m: m.context.store_id != "S1" and m.customer.customer_id == "c-1" and m.max_offers == 3)
    reaches(mutated, lambda m: not m.HasField("customer") and m.context.store_id == "S1")
