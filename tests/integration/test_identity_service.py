"""The identity service end to end over gRPC, on real SQLite and PostgreSQL: every RPC, its errors, no half-writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.identity.v1 import identity_service_pb2 as pb
from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc
from sqlalchemy import func, select

from libs.protoconv import from_timestamp, to_timestamp
from libs.settings import CommonSettings
from services.identity.app import build
from services.identity.settings import IdentitySettings
from services.identity.storage import consents, customers, identifiers

pytestmark = pytest.mark.integration

EMAIL, PHONE, CARD = common.IDENTIFIER_TYPE_EMAIL, common.IDENTIFIER_TYPE_PHONE, common.IDENTIFIER_TYPE_LOYALTY_CARD
COOKIE, ACCOUNT = common.IDENTIFIER_TYPE_COOKIE_ID, common.IDENTIFIER_TYPE_ACCOUNT_ID
MARKETING, ANALYTICS = pb.CONSENT_PURPOSE_MARKETING, pb.CONSENT_PURPOSE_ANALYTICS
WEB, POS = common.CHANNEL_WEB, common.CHANNEL_POS


def ident(kind: int, value: str) -> common.Identifier:
    return common.Identifier(type=kind, value=value)


def pairs(found) -> list[tuple[int, str]]:
    return [(i.type, i.value) for i in found]


@pytest.fixture
async def identity(serve, database_url, tmp_path):
    """A stub to a freshly started identity service, and the service's engine to inspect its tables."""
    settings = IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))
    app = build(settings)
    _, channel = await serve(app)
    return pb_grpc.IdentityServiceStub(channel), app.parts["engine"]


async def count(engine, table) -> int:
    async with engine.connect() as connection:
        return await connection.scalar(select(func.count()).select_from(table))


async def create(stub, *identifiers: common.Identifier) -> str:
    """A new customer owning the identifiers."""
    return (await stub.Resolve(pb.ResolveRequest(identifiers=identifiers, create_if_missing=True))).customer_id


async def expect_error(call, code: grpc.StatusCode, details: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code
    assert error.value.details().startswith(details), error.value.details()


async def test_resolve_creates_then_matches_on_normalised_identifiers(identity):
    stub, _ = identity
    created = await stub.Resolve(
        pb.ResolveRequest(
            identifiers=[ident(EMAIL, "  Jane.Doe@Example.COM "), ident(PHONE, "+1 (415) 555-0132")],
            create_if_missing=True,
        ),
        timeout=5,
    )
    assert created.customer_id.startswith("c_") and len(created.customer_id) == 22
    assert created.match_method == pb.MATCH_METHOD_CREATED
    assert not created.HasField("matched_by")
    assert pairs(created.linked) == [(EMAIL, "jane.doe@example.com"), (PHONE, "+14155550132")]

    again = await stub.Resolve(pb.ResolveRequest(identifiers=[ident(PHONE, "(415) 555-0132")]), timeout=5)
    assert again.customer_id == created.customer_id
    assert again.match_method == pb.MATCH_METHOD_IDENTIFIER
    assert pairs([again.matched_by]) == [(PHONE, "+14155550132")]
    assert not again.linked and not again.conflicts


async def test_resolve_links_new_identifiers_seen_with_a_known_one(identity):
    stub, _ = identity
    customer_id = await create(stub, ident(EMAIL, "a@example.com"))
    result = await stub.Resolve(
        pb.ResolveRequest(identifiers=[ident(COOKIE, "ck-1"), ident(EMAIL, "A@example.com"), ident(CARD, "lc-1234-56")])
    )
    assert result.customer_id == customer_id and result.match_method == pb.MATCH_METHOD_IDENTIFIER
    assert pairs([result.matched_by]) == [(EMAIL, "a@example.com")]
    assert pairs(result.linked) == [(COOKIE, "ck-1"), (CARD, "LC123456")]
    customer = await stub.GetCustomer(pb.GetCustomerRequest(customer_id=customer_id))
    assert pairs(customer.identifiers) == [(CARD, "LC123456"), (EMAIL, "a@example.com"), (COOKIE, "ck-1")]


async def test_resolve_conflict_goes_to_the_strongest_identifier_and_moves_nothing(identity):
    stub, _ = identity
    by_phone = await create(stub, ident(PHONE, "+14155550132"))
    by_account = await create(stub, ident(ACCOUNT, "acct-7"))
    result = await stub.Resolve(
        pb.ResolveRequest(identifiers=[ident(PHONE, "415-555-0132"), ident(COOKIE, "ck-9"), ident(ACCOUNT, "acct-7")])
    )
    assert result.customer_id == by_account
    assert pairs([result.matched_by]) == [(ACCOUNT, "acct-7")]
    assert pairs(result.conflicts) == [(PHONE, "+14155550132")]
    assert pairs(result.linked) == [(COOKIE, "ck-9")]
    phone_owner = await stub.GetCustomer(pb.GetCustomerRequest(customer_id=by_phone))
    assert pairs(phone_owner.identifiers) == [(PHONE, "+14155550132")]
    account_owner = await stub.GetCustomer(pb.GetCustomerRequest(customer_id=by_account))
    assert pairs(account_owner.identifiers) == [(ACCOUNT, "acct-7"), (COOKIE, "ck-9")]


async def test_resolve_of_unknown_identifiers_without_create_is_not_found(identity):
    stub, engine = identity
    await expect_error(
        stub.Resolve(pb.ResolveRequest(identifiers=[ident(EMAIL, "nobody@example.com")])),
        grpc.StatusCode.NOT_FOUND,
        "no customer matches",
    )
    assert await count(engine, customers) == 0


@pytest.mark.parametrize(
    ("given", "details"),
    [
        ([], "identifiers: at least one identifier is required"),
        ([ident(common.IDENTIFIER_TYPE_UNSPECIFIED, "x@example.com")], "identifiers[0].type: "),
        ([ident(EMAIL, "ok@example.com"), ident(PHONE, "12345")], "identifiers[1].value: not a valid phone number"),
        ([ident(EMAIL, "ok@example.com"), ident(CARD, "  ")], "identifiers[1].value: is required"),
        ([ident(EMAIL, "not-an-email")], "identifiers[0].value: not a valid e-mail address"),
        ([ident(99, "from-a-newer-client")], "identifiers[0].type: "),
    ],
)
async def test_resolve_rejects_bad_identifiers_and_writes_nothing(identity, given, details):
    stub, engine = identity
    await expect_error(
        stub.Resolve(pb.ResolveRequest(identifiers=given, create_if_missing=True)),
        grpc.StatusCode.INVALID_ARGUMENT,
        details,
    )
    assert await count(engine, customers) == 0 and await count(engine, identifiers) == 0


async def test_get_customer_returns_identifiers_and_creation_time(identity):
    stub, _ = identity
    before = datetime.now(UTC)
    customer_id = await create(stub, ident(CARD, "lc 0000 42"))
    customer = await stub.GetCustomer(pb.GetCustomerRequest(customer_id=customer_id))
    assert customer.customer_id == customer_id
    assert pairs(customer.identifiers) == [(CARD, "LC000042")]
    assert before - timedelta(seconds=1) <= from_timestamp(customer.created_at) <= datetime.now(UTC)


async def test_get_customer_errors(identity):
    stub, _ = identity
    await expect_error(
        stub.GetCustomer(pb.GetCustomerRequest(customer_id="")), grpc.StatusCode.INVALID_ARGUMENT, "customer_id: "
    )
    await expect_error(
        stub.GetCustomer(pb.GetCustomerRequest(customer_id="c_unknown")),
        grpc.StatusCode.NOT_FOUND,
        "customer c_unknown",
    )
    await expect_error(  # longer than any id we issue: still just unknown, on both databases
        stub.GetCustomer(pb.GetCustomerRequest(customer_id="c_" + "x" * 200)), grpc.StatusCode.NOT_FOUND, "customer c_"
    )


def consent(
    purpose=MARKETING, channel=WEB, granted=True, source="web-signup", at: datetime | None = None
) -> pb.Consent:
    return pb.Consent(purpose=purpose, channel=channel, granted=granted, source=source, recorded_at=to_timestamp(at))


def states(found) -> list[tuple[int, int, bool, str]]:
    return [(c.purpose, c.channel, c.granted, c.source) for c in found]


async def test_set_consent_keeps_history_and_the_latest_decision_wins_even_out_of_order(identity):
    stub, engine = identity
    customer_id = await create(stub, ident(EMAIL, "consent@example.com"))
    assert not (await stub.GetConsent(pb.GetConsentRequest(customer_id=customer_id))).consents

    before = datetime.now(UTC)
    first = await stub.SetConsent(
        pb.SetConsentRequest(customer_id=customer_id, consents=[consent(), consent(ANALYTICS, POS, False, "pos")])
    )
    assert states(first.consents) == [(MARKETING, WEB, True, "web-signup"), (ANALYTICS, POS, False, "pos")]
    assert from_timestamp(first.consents[0].recorded_at) >= before - timedelta(seconds=1)  # defaulted to now

    # A withdrawal made yesterday arrives late: it is kept in the history but does not override today's grant.
    late = await stub.SetConsent(
        pb.SetConsentRequest(
            customer_id=customer_id,
            consents=[consent(granted=False, source="call-centre", at=before - timedelta(days=1))],
        )
    )
    assert states(late.consents) == states(first.consents)

    withdrawn_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    withdrawn = await stub.SetConsent(
        pb.SetConsentRequest(
            customer_id=customer_id, consents=[consent(granted=False, source="email-link", at=withdrawn_at)]
        )
    )
    assert states(withdrawn.consents) == [(MARKETING, WEB, False, "email-link"), (ANALYTICS, POS, False, "pos")]
    assert from_timestamp(withdrawn.consents[0].recorded_at) == withdrawn_at

    current = await stub.GetConsent(pb.GetConsentRequest(customer_id=customer_id))
    assert list(current.consents) == list(withdrawn.consents)
    assert await count(engine, consents) == 4


@pytest.mark.parametrize(
    ("bad", "details"),
    [
        (consent(purpose=pb.CONSENT_PURPOSE_UNSPECIFIED), "consents[1].purpose: "),
        (consent(channel=common.CHANNEL_UNSPECIFIED), "consents[1].channel: "),
        (consent(source=" "), "consents[1].source: is required"),
        (consent(at=datetime.now(UTC) + timedelta(days=1)), "consents[1].recorded_at: is in the future"),
    ],
)
async def test_set_consent_rejects_bad_consents_and_records_none_of_them(identity, bad, details):
    stub, engine = identity
    customer_id = await create(stub, ident(EMAIL, "consent@example.com"))
    await expect_error(
        stub.SetConsent(pb.SetConsentRequest(customer_id=customer_id, consents=[consent(), bad])),
        grpc.StatusCode.INVALID_ARGUMENT,
        details,
    )
    assert await count(engine, consents) == 0


async def test_set_consent_request_errors(identity):
    stub, engine = identity
    customer_id = await create(stub, ident(EMAIL, "consent@example.com"))
    await expect_error(
        stub.SetConsent(pb.SetConsentRequest(customer_id=customer_id)), grpc.StatusCode.INVALID_ARGUMENT, "consents: "
    )
    await expect_error(
        stub.SetConsent(pb.SetConsentRequest(consents=[consent()])), grpc.StatusCode.INVALID_ARGUMENT, "customer_id: "
    )
    await expect_error(
        stub.SetConsent(pb.SetConsentRequest(customer_id="c_unknown", consents=[consent()])),
        grpc.StatusCode.NOT_FOUND,
        "customer c_unknown",
    )
    assert await count(engine, consents) == 0


async def test_get_consent_errors(identity):
    stub, _ = identity
    await expect_error(stub.GetConsent(pb.GetConsentRequest()), grpc.StatusCode.INVALID_ARGUMENT, "customer_id: ")
    await expect_error(
        stub.GetConsent(pb.GetConsentRequest(customer_id="c_unknown")), grpc.StatusCode.NOT_FOUND, "customer c_unknown"
    )


async def test_consent_on_sms_and_app_channels_is_kept_per_channel(identity):
    stub, engine = identity
    customer_id = await create(stub, ident(EMAIL, "texts@example.com"))
    sms, app = common.CHANNEL_SMS, common.CHANNEL_APP
    granted = await stub.SetConsent(
        pb.SetConsentRequest(
            customer_id=customer_id,
            consents=[consent(channel=app, source="app-onboarding"), consent(channel=sms, source="sms-keyword")],
        )
    )
    # Ordered by purpose then channel, SMS before APP (their order in the contract).
    assert states(granted.consents) == [(MARKETING, sms, True, "sms-keyword"), (MARKETING, app, True, "app-onboarding")]

    async def allowed(channel: int) -> bool:
        request = pb.GetConsentRequest(customer_id=customer_id, purpose=MARKETING, channel=channel)
        return (await stub.GetConsent(request)).allowed

    assert await allowed(sms) and await allowed(app) and not await allowed(WEB)

    # "STOP" by text withdraws SMS only; the app keeps its grant, and the history keeps both decisions.
    stop_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    await stub.SetConsent(
        pb.SetConsentRequest(
            customer_id=customer_id, consents=[consent(channel=sms, granted=False, source="sms-stop", at=stop_at)]
        )
    )
    assert not await allowed(sms) and await allowed(app)
    history = await stub.GetConsent(pb.GetConsentRequest(customer_id=customer_id, include_history=True))
    assert [(c.channel, c.granted) for c in history.history if c.channel == sms] == [(sms, True), (sms, False)]
    assert await count(engine, consents) == 3


async def test_data_survives_a_restart_on_the_same_database(serve, database_url, tmp_path):
    settings = IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))
    _, channel = await serve(build(settings))
    customer_id = await create(pb_grpc.IdentityServiceStub(channel), ident(EMAIL, "consent@example.com"))
    _, channel = await serve(build(settings))  # a second process: migrations find the schema already there
    again = await pb_grpc.IdentityServiceStub(channel).Resolve(
        pb.ResolveRequest(identifiers=[ident(EMAIL, "Consent@Example.com")])
    )
    assert again.customer_id == customer_id


async def test_phone_numbers_are_read_in_the_configured_default_region(serve, database_url, tmp_path):
    settings = IdentitySettings(
        database_url=database_url, port=0, default_region="GB", common=CommonSettings(data_dir=tmp_path)
    )
    _, channel = await serve(build(settings))
    created = await pb_grpc.IdentityServiceStub(channel).Resolve(
        pb.ResolveRequest(identifiers=[ident(PHONE, "020 7946 0958")], create_if_missing=True)
    )
    assert pairs(created.linked) == [(PHONE, "+442079460958")]
