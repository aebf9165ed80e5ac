"""Identifier normalisation: the one form identifiers are stored and matched in, and what is rejected."""

from __future__ import annotations

import pytest

from libs.errors import InvalidArgument
from libs.settings import load_settings
from services.identity.domain import Identifier, IdentifierKind, Normaliser, RawIdentifier
from services.identity.settings import IdentitySettings

pytestmark = pytest.mark.unit

K = IdentifierKind


@pytest.mark.parametrize(
    ("kind", "given", "expected"),
    [
        (K.EMAIL, "  Jane.Doe@Example.COM ", "jane.doe@example.com"),
        (K.EMAIL, "bob@EXAMPLE.org", "bob@example.org"),
        (K.PHONE, "+1 (415) 555-0132", "+14155550132"),
        (K.PHONE, "(415) 555-0132", "+14155550132"),  # read with the default region
        (K.PHONE, "+44 20 7946 0958", "+442079460958"),  # an explicit country code beats the region
        (K.LOYALTY_CARD, " ab-12 34-cd ", "AB1234CD"),
        (K.ACCOUNT_ID, "  acct-42 ", "acct-42"),
        (K.DEVICE_ID, "Device:ABC def", "Device:ABC def"),  # opaque: case and inner spaces are kept
        (K.COOKIE_ID, "ck_" + "x" * 125, "ck_" + "x" * 125),
        (K.PAYMENT_TOKEN_HASH, "AB" * 16, "ab" * 16),
    ],
)
def test_valid_identifiers_normalise(kind, given, expected):
    assert Normaliser("US").normalise(RawIdentifier(kind, given), "identifiers[0]") == Identifier(kind, expected)


def test_phone_without_country_code_uses_the_configured_region():
    identifier = Normaliser("GB").normalise(RawIdentifier(K.PHONE, "020 7946 0958"), "identifiers[0]")
    assert identifier.value == "+442079460958"


@pytest.mark.parametrize(
    ("kind", "given", "reason"),
    [
        (K.EMAIL, "jane.doe", "not a valid e-mail address"),
        (K.EMAIL, "jane@@example.com", "not a valid e-mail address"),
        (K.EMAIL, "jane@localhost", "not a valid e-mail address"),
        (K.PHONE, "555-0132", "not a valid phone number"),  # too short to be a US number
        (K.PHONE, "call me", "not a valid phone number"),
        (K.PHONE, "+1 (415) 555-013", "not a valid phone number"),
        (K.LOYALTY_CARD, "AB12", "6-24 letters or digits"),
        (K.LOYALTY_CARD, "AB12CD!!", "6-24 letters or digits"),
        (K.LOYALTY_CARD, "A" * 25, "6-24 letters or digits"),
        (K.ACCOUNT_ID, "a" * 129, "1-128 printable characters"),
        (K.COOKIE_ID, "abc\x00def", "1-128 printable characters"),
        (K.PAYMENT_TOKEN_HASH, "ab" * 15, "32-128 hexadecimal characters"),
        (K.PAYMENT_TOKEN_HASH, "zz" * 16, "32-128 hexadecimal characters"),
    ],
)
def test_invalid_values_name_the_value_field_and_the_reason(kind, given, reason):
    with pytest.raises(InvalidArgument) as error:
        Normaliser("US").normalise(RawIdentifier(kind, given), "identifiers[2]")
    assert error.value.field == "identifiers[2].value"
    assert reason in error.value.reason


@pytest.mark.parametrize("given", ["", "   "])
def test_empty_value_is_required(given):
    with pytest.raises(InvalidArgument) as error:
        Normaliser().normalise(RawIdentifier(K.EMAIL, given), "identifiers[0]")
    assert str(error.value) == "identifiers[0].value: is required"


def test_unspecified_type_names_the_type_field():
    with pytest.raises(InvalidArgument) as error:
        Normaliser().normalise(RawIdentifier(None, "jane@example.com"), "identifiers[0]")
    assert error.value.field == "identifiers[0].type"


def test_normalise_all_reports_the_index_of_the_first_bad_identifier():
    raws = [
        RawIdentifier(K.EMAIL, "jane@example.com"),
        RawIdentifier(K.PHONE, "+14155550132"),
        RawIdentifier(K.PHONE, "nope"),
    ]
    with pytest.raises(InvalidArgument) as error:
        Normaliser().normalise_all(raws)
    assert error.value.field == "identifiers[2].value"


def test_normalise_all_drops_duplicates_after_normalisation_and_keeps_order():
    raws = [
        RawIdentifier(K.PHONE, "(415) 555-0132"),
        RawIdentifier(K.EMAIL, "Jane@Example.com"),
        RawIdentifier(K.PHONE, "+1 415 555 0132"),
    ]
    assert Normaliser().normalise_all(raws) == [
        Identifier(K.PHONE, "+14155550132"),
        Identifier(K.EMAIL, "jane@example.com"),
    ]


def test_normalise_all_needs_at_least_one_identifier():
    with pytest.raises(InvalidArgument) as error:
        Normaliser().normalise_all([])
    assert error.value.field == "identifiers"


def test_normalise_all_caps_the_number_of_identifiers():
    with pytest.raises(InvalidArgument) as error:
        Normaliser().normalise_all([RawIdentifier(K.COOKIE_ID, f"cookie-{i}") for i in range(33)])
    assert error.value.field == "identifiers"


def test_default_region_setting_is_read_from_the_environment_and_checked(monkeypatch):
    assert load_settings(IdentitySettings).default_region == "US"
    monkeypatch.setenv("NEXTBEST_IDENTITY_DEFAULT_REGION", "gb")
    assert load_settings(IdentitySettings).default_region == "GB"
    monkeypatch.setenv("NEXTBEST_IDENTITY_DEFAULT_REGION", "XX")
    with pytest.raises(SystemExit, match="NEXTBEST_IDENTITY_DEFAULT_REGION"):
        load_settings(IdentitySettings)
