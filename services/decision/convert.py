"""Protobuf enum <-> domain name tables, shared by the servicer and the gateways (built once at import: data only)."""

from __future__ import annotations

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as decision_pb
from nextbest.identity.v1 import identity_service_pb2 as identity_pb
from nextbest.profile.v1 import profile_service_pb2 as profile_pb


def enum_names(enum: EnumTypeWrapper, prefix: str) -> dict[int, str]:
    """Enum number -> lower-case name without the prefix, e.g. CHANNEL_CALL_CENTER -> "call_center"."""
    return {number: name.removeprefix(prefix).lower() for name, number in enum.items()}


def enum_numbers(enum: EnumTypeWrapper, prefix: str) -> dict[str, int]:
    return {name: number for number, name in enum_names(enum, prefix).items()}


CHANNEL_NAMES = enum_names(common_pb2.Channel, "CHANNEL_")
CHANNEL_NUMBERS = enum_numbers(common_pb2.Channel, "CHANNEL_")
CONSENT_PURPOSE_NAMES = enum_names(identity_pb.ConsentPurpose, "CONSENT_PURPOSE_")
LOYALTY_TIER_NAMES = {**enum_names(profile_pb.LoyaltyTier, "LOYALTY_TIER_"), 0: "none"}
OFFER_RESPONSE_NUMBERS = enum_numbers(profile_pb.OfferResponseType, "OFFER_RESPONSE_TYPE_")
OFFER_TYPE_NUMBERS = enum_numbers(decision_pb.OfferType, "OFFER_TYPE_")
OUTCOME_TYPE_NAMES = enum_names(decision_pb.OutcomeType, "OUTCOME_TYPE_")
CALL_TIER_NUMBERS = enum_numbers(decision_pb.CallTier, "CALL_TIER_")
CART_ACTION_NUMBERS = enum_numbers(decision_pb.CartAction, "CART_ACTION_")
OFFER_FATE_NUMBERS = enum_numbers(decision_pb.OfferFate, "OFFER_FATE_")
REPORT_DIMENSION_NAMES = enum_names(decision_pb.ReportDimension, "REPORT_DIMENSION_")
