"""Merge/Unmerge round trips, the conflict policy, consent per purpose x channel with history, and Forget, over gRPC
on real SQLite and PostgreSQL, with the change feed and the audit tables checked."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.identity.v1 import identity_service_pb2 as pb
from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc
from sqlalchemy import select

from libs.settings import CommonSettings
from services.identity.app import build
from services.identity.settings import IdentitySettings
from services.identity.storage import erasures, merges, trait_records

pytestmark = pytest.mark.integration

EMAIL, PHONE, CARD = common.IDENTIFIER_TYPE_EMAIL, common.IDENTIFIER_TYPE_PHONE, common.IDENTIFIER_TYPE_LOYALTY_CARD
COOKIE = common.IDENTIFIER_TYPE_COOKIE_ID
WEB, EMAIL_CHANNEL = common.CHANNEL_WEB, common.CHANNEL_EMAIL
MARKETING, PROFILING = pb.CONSENT_PURPOSE_MARKETING, pb.CONSENT_PURPOSE_PROFILING
TRAITS = pb.PersonTraits(
    given_name="Ada", surname="Lindqvist", date_of_birth="1979-02-14", street_number="7",
    address_line="Harbor Road", city="Marlow", postcode="40211", state="KY",
)


def ident(kind: int, value: str) -> common.Identifier:
    return common.Identifier(type=kind, value=value)


def pairs(found) -> list[tuple[int, str]]:
    return sorted((i.type, i.value) for i in found)


@pytest.fixture
async def identity(serve, database_url, tmp_path):
    app = build(IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path)))
    _, channel = await serve(app)
    return pb_grpc.IdentityServiceStub(channel), app


async def create(stub, *identifiers, traits=None) -> str:
    request = pb.ResolveRequest(identifiers=identifiers, create_if_missing=True, traits=traits)
    return (await stub.Resolve(request)).customer_id


async def error_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code(), error.value.details()


async def rows(engine, table):
    async with engine.connect() as connection:
        return (await connection.execute(select(table))).all()


async def test_merge_then_unmerge_restores_the_previous_clusters_exactly(identity):
    stub, app = identity
    engine = app.parts["engine"]
    survivor = await create(stub, ident(EMAIL, "ada@example.com"), ident(CARD, "LC700001"))
    merged = await create(stub, ident(PHONE, "+1 415 555 0199"), ident(COOKIE, "ck-ada"), traits=TRAITS)
    changes = app.parts["service"].changes.watch()
    assert await anext(changes) == []

    merge = await stub.Merge(
        pb.MergeRequest(survivor_customer_id=survivor, merged_customer_id=merged, reason="same person, agent call",
                        actor="steward-17")
    )
    assert (merge.identifiers_moved, merge.trait_records_moved) == (2, 1)
    assert await asyncio.wait_for(anext(changes), 2) == sorted([survivor, merged])
    by_phone = await stub.Resolve(pb.ResolveRequest(identifiers=[ident(PHONE, "4155550199")]))
    assert by_phone.customer_id == survivor
    assert (await stub.GetCustomer(pb.GetCustomerRequest(customer_id=merged))).merged_into == survivor
    # Seen after the merge: belongs to the survivor, and stays there when the merge is undone.
    await stub.Resolve(pb.ResolveRequest(identifiers=[ident(PHONE, "4155550199"), ident(COOKIE, "ck-new")]))
    merged_view = await stub.GetCustomer(pb.GetCustomerRequest(customer_id=survivor))
    assert len(merged_view.identifiers) == 5

    undo = await stub.Unmerge(pb.UnmergeRequest(merge_id=merge.merge_id, reason="different people", actor="lead-2"))
    assert (undo.restored_customer_id, undo.identifiers_restored, undo.trait_records_restored) == (merged, 2, 1)
    assert await asyncio.wait_for(anext(changes), 2) == sorted([survivor, merged])
    back = await stub.GetCustomer(pb.GetCustomerRequest(customer_id=merged))
    assert back.merged_into == ""
    assert pairs(back.identifiers) == [(PHONE, "+14155550199"), (COOKIE, "ck-ada")]
    kept = await stub.GetCustomer(pb.GetCustomerRequest(customer_id=survivor))
    assert pairs(kept.identifiers) == [(EMAIL, "ada@example.com"), (CARD, "LC700001"), (COOKIE, "ck-new")]
    assert {row.customer_id for row in await rows(engine, trait_records)} == {merged}
    # Who, what, when and why of both acts are in the audit.
    (audit,) = await rows(engine, merges)
    assert (audit.survivor_id, audit.merged_id, audit.actor, audit.reason) == (
        survivor, merged, "steward-17", "same person, agent call"
    )
    assert audit.merged_at is not None and audit.unmerged_at is not None
    assert (audit.unmerge_actor, audit.unmerge_reason) == ("lead-2", "different people")
    assert sorted(map(tuple, audit.moved["identifiers"])) == [("cookie_id", "ck-ada"), ("phone", "+14155550199")]

    code, details = await error_of(
        stub.Unmerge(pb.UnmergeRequest(merge_id=merge.merge_id, reason="again", actor="lead-2"))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already undone" in details


async def test_merge_preconditions_and_chained_merges(identity):
    stub, _ = identity
    a = await create(stub, ident(EMAIL, "a@example.com"))
    b = await create(stub, ident(EMAIL, "b@example.com"))
    c = await create(stub, ident(EMAIL, "c@example.com"))

    def merge(survivor, merged, reason="dup", actor="steward"):
        return stub.Merge(
            pb.MergeRequest(survivor_customer_id=survivor, merged_customer_id=merged, reason=reason, actor=actor)
        )

    assert await error_of(merge(a, a)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "merged_customer_id: must differ from survivor_customer_id"
    )
    assert (await error_of(merge(a, b, reason=" ")))[1] == "reason: is required (it is kept in the audit)"
    assert (await error_of(merge(a, "c_nobody")))[0] == grpc.StatusCode.NOT_FOUND
    first = await merge(a, b)
    code, details = await error_of(merge(c, b))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and f"already merged into {a}" in details
    await merge(c, a)  # a (holding b's identifiers) goes into c
    resolved = await stub.Resolve(pb.ResolveRequest(identifiers=[ident(EMAIL, "b@example.com")]))
    assert resolved.customer_id == c
    code, details = await error_of(stub.Unmerge(pb.UnmergeRequest(merge_id=first.merge_id, reason="x", actor="y")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "undo merge m_" in details


async def test_conflict_policy_card_claimed_by_two_emails_and_a_shared_family_phone(identity):
    stub, _ = identity
    # One loyalty card, two e-mails: the card stays with its first holder; the other e-mail's customer keeps its
    # e-mail and is told about the conflict. Nothing merges.
    holder = await create(stub, ident(EMAIL, "first@example.com"), ident(CARD, "LC900900"))
    other = await create(stub, ident(EMAIL, "second@example.com"))
    claim = await stub.Resolve(
        pb.ResolveRequest(identifiers=[ident(EMAIL, "second@example.com"), ident(CARD, "LC900900")])
    )
    assert claim.customer_id == holder  # a card outranks an e-mail
    assert pairs(claim.conflicts) == [(EMAIL, "second@example.com")]
    assert pairs((await stub.GetCustomer(pb.GetCustomerRequest(customer_id=other))).identifiers) == [
        (EMAIL, "second@example.com")
    ]
    # A family phone: the parent registered it; the child's own e-mail wins the child's Resolve, the phone stays.
    parent = await create(stub, ident(EMAIL, "parent@example.com"), ident(PHONE, "+14155550101"))
    child = await create(stub, ident(EMAIL, "child@example.com"))
    seen = await stub.Resolve(
        pb.ResolveRequest(identifiers=[ident(PHONE, "+14155550101"), ident(EMAIL, "child@example.com")])
    )
    assert seen.customer_id == child and pairs(seen.conflicts) == [(PHONE, "+14155550101")]
    assert pairs((await stub.GetCustomer(pb.GetCustomerRequest(customer_id=parent))).identifiers) == [
        (EMAIL, "parent@example.com"),
        (PHONE, "+14155550101"),
    ]


async def test_consent_per_purpose_and_channel_with_text_version_and_history(identity):
    stub, _ = identity
    customer = await create(stub, ident(EMAIL, "c@example.com"))
    await stub.SetConsent(
        pb.SetConsentRequest(
            customer_id=customer,
            consents=[
                pb.Consent(purpose=MARKETING, channel=EMAIL_CHANNEL, granted=True, source="web-signup",
                           text_version="marketing-v3"),
                pb.Consent(purpose=PROFILING, channel=WEB, granted=True, source="web-signup",
                           text_version="profiling-v1"),
            ],
        )
    )

    async def ask(purpose, channel) -> pb.GetConsentResponse:
        return await stub.GetConsent(pb.GetConsentRequest(customer_id=customer, purpose=purpose, channel=channel))

    assert (await ask(MARKETING, EMAIL_CHANNEL)).allowed
    assert not (await ask(MARKETING, WEB)).allowed  # never asked: not granted
    await stub.SetConsent(
        pb.SetConsentRequest(
            customer_id=customer,
            consents=[pb.Consent(purpose=MARKETING, channel=EMAIL_CHANNEL, granted=False, source="unsubscribe-link",
                                 text_version="marketing-v3")],
        )
    )
    withdrawn = await ask(MARKETING, EMAIL_CHANNEL)
    assert not withdrawn.allowed
    current = {(c.purpose, c.channel): (c.granted, c.text_version) for c in withdrawn.consents}
    assert current == {(MARKETING, EMAIL_CHANNEL): (False, "marketing-v3"), (PROFILING, WEB): (True, "profiling-v1")}
    history = await stub.GetConsent(pb.GetConsentRequest(customer_id=customer, include_history=True))
    assert [(c.purpose, c.granted, c.source) for c in history.history] == [
        (MARKETING, True, "web-signup"),
        (PROFILING, True, "web-signup"),
        (MARKETING, False, "unsubscribe-link"),
    ]
    code, details = await error_of(stub.GetConsent(pb.GetConsentRequest(customer_id=customer, purpose=MARKETING)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("channel: ")


async def test_forget_erases_everything_is_idempotent_and_audits_without_pii(identity):
    stub, app = identity
    engine = app.parts["engine"]
    customer = await create(stub, ident(EMAIL, "erase.me@example.com"), ident(PHONE, "+14155550177"), traits=TRAITS)
    other = await create(stub, ident(COOKIE, "ck-erase"))
    merge = await stub.Merge(
        pb.MergeRequest(survivor_customer_id=customer, merged_customer_id=other, reason="dup", actor="steward")
    )
    await stub.SetConsent(
        pb.SetConsentRequest(
            customer_id=customer, consents=[pb.Consent(purpose=MARKETING, channel=WEB, granted=True, source="pos")]
        )
    )
    changes = app.parts["service"].changes.watch()
    assert await anext(changes) == []

    forget = pb.ForgetRequest(customer_id=customer, reason="erasure request 2025-114", actor="dpo")
    first = await stub.Forget(forget)
    assert first.erased_now
    assert (first.identifiers_erased, first.trait_records_erased, first.consents_erased) == (3, 1, 1)
    assert await asyncio.wait_for(anext(changes), 2) == [customer]

    for identifiers in ([ident(EMAIL, "erase.me@example.com")], [ident(COOKIE, "ck-erase")]):
        code, _ = await error_of(stub.Resolve(pb.ResolveRequest(identifiers=identifiers)))
        assert code == grpc.StatusCode.NOT_FOUND
    code, _ = await error_of(stub.Resolve(pb.ResolveRequest(traits=TRAITS)))
    assert code == grpc.StatusCode.NOT_FOUND  # no trait record left to match
    assert (await error_of(stub.GetCustomer(pb.GetCustomerRequest(customer_id=customer))))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    assert (await error_of(stub.GetConsent(pb.GetConsentRequest(customer_id=customer))))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    code, details = await error_of(stub.Unmerge(pb.UnmergeRequest(merge_id=merge.merge_id, reason="x", actor="y")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "erased" in details

    again = await stub.Forget(forget)
    assert not again.erased_now and again.identifiers_erased == 3 and again.erased_at == first.erased_at

    # The audits name the customer id, counts, who and why; no e-mail, phone, name or address anywhere.
    (erasure,) = await rows(engine, erasures)
    assert (erasure.customer_id, erasure.actor, erasure.identifiers) == (customer, "dpo", 3)
    audit_text = repr(await rows(engine, erasures)) + repr(await rows(engine, merges))
    for pii in ("erase.me", "4155550177", "ck-erase", "lindqvist", "Lindqvist", "Harbor"):
        assert pii not in audit_text
    # The old identifiers are free: a new Resolve makes a new customer.
    fresh = await create(stub, ident(EMAIL, "erase.me@example.com"))
    assert fresh != customer
