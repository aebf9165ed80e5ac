"""Resolve by person traits over gRPC on real SQLite and PostgreSQL: automatic links, the review band, new
customers, validation, the change feed, and the match model estimated from stored records and loaded at start-up."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.identity.v1 import identity_service_pb2 as pb
from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc
from sqlalchemy import func, select

from libs.protoconv import utcnow
from libs.settings import CommonSettings
from services.identity.app import build
from services.identity.estimation import estimate_and_store
from services.identity.matching.blocking import blocking_keys
from services.identity.matching.synth import generate
from services.identity.matching.traits import normalise
from services.identity.settings import IdentitySettings
from services.identity.storage import customers, identifiers, trait_records

pytestmark = pytest.mark.integration

EMAIL, PHONE = common.IDENTIFIER_TYPE_EMAIL, common.IDENTIFIER_TYPE_PHONE
KATHERINE = pb.PersonTraits(
    given_name="Katherine",
    surname="Okafor",
    date_of_birth="1984-03-11",
    street_number="12",
    address_line="Oak Street",
    city="Springfield",
    postcode="62704",
    state="IL",
)


def settings_for(database_url, tmp_path) -> IdentitySettings:
    return IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))


@pytest.fixture
async def identity(serve, database_url, tmp_path):
    app = build(settings_for(database_url, tmp_path))
    _, channel = await serve(app)
    return pb_grpc.IdentityServiceStub(channel), app


async def count(engine, table) -> int:
    async with engine.connect() as connection:
        return await connection.scalar(select(func.count()).select_from(table))


async def katherine(stub) -> str:
    created = await stub.Resolve(
        pb.ResolveRequest(
            identifiers=[common.Identifier(type=EMAIL, value="kate@example.com")],
            traits=KATHERINE,
            create_if_missing=True,
        )
    )
    assert created.match_method == pb.MATCH_METHOD_CREATED
    return created.customer_id


async def test_noisy_traits_link_automatically_and_take_the_new_identifier_along(identity):
    stub, app = identity
    customer_id = await katherine(stub)
    changes = app.parts["service"].changes.watch()
    assert await anext(changes) == []  # subscribed

    noisy = pb.PersonTraits(
        given_name="KATE",  # nickname, capitals
        surname="Okafr",  # typo
        date_of_birth="1984-11-03",  # day and month swapped
        street_number="12",
        address_line="Oak St",
        city="Springfield",
        postcode="62704",
    )
    result = await stub.Resolve(
        pb.ResolveRequest(identifiers=[common.Identifier(type=PHONE, value="+1 415 555 0132")], traits=noisy)
    )
    assert result.customer_id == customer_id
    assert result.match_method == pb.MATCH_METHOD_PROBABILISTIC
    assert result.match_probability > 0.95
    levels = {agreement.field: agreement.level for agreement in result.agreeing_fields}
    assert levels == {
        "given_name": "nickname",
        "surname": "close",
        "date_of_birth": "swap_or_one_digit",
        "address": "same_address",
    }
    assert [(i.type, i.value) for i in result.linked] == [(PHONE, "+14155550132")]
    assert await asyncio.wait_for(anext(changes), 2) == [customer_id]
    # The phone now resolves deterministically, and the new spelling is kept as a second trait record.
    again = await stub.Resolve(pb.ResolveRequest(identifiers=[common.Identifier(type=PHONE, value="4155550132")]))
    assert again.customer_id == customer_id and again.match_method == pb.MATCH_METHOD_IDENTIFIER
    assert await count(app.parts["engine"], trait_records) == 2


async def test_review_band_returns_candidates_and_links_nothing(identity):
    stub, app = identity
    customer_id = await katherine(stub)
    engine = app.parts["engine"]
    # Same name and town, nothing else: between the thresholds.
    partial = pb.PersonTraits(given_name="Katherine", surname="Okafor", city="Springfield", state="IL")
    email = common.Identifier(type=EMAIL, value="k.okafor@example.org")
    result = await stub.Resolve(pb.ResolveRequest(identifiers=[email], traits=partial))
    assert result.match_method == pb.MATCH_METHOD_CANDIDATES and result.customer_id == ""
    assert [c.customer_id for c in result.candidates] == [customer_id]
    assert 0.6 <= result.candidates[0].match_probability < 0.95
    assert {a.field for a in result.candidates[0].agreeing_fields} == {"given_name", "surname", "address"}
    assert not result.linked
    assert (await count(engine, customers), await count(engine, identifiers), await count(engine, trait_records)) == (
        1,
        1,
        1,
    )
    # With create_if_missing a new customer is made, and the candidate is still reported for review.
    created = await stub.Resolve(pb.ResolveRequest(identifiers=[email], traits=partial, create_if_missing=True))
    assert created.match_method == pb.MATCH_METHOD_CREATED and created.customer_id != customer_id
    assert [c.customer_id for c in created.candidates] == [customer_id]


async def test_weak_or_contradicting_traits_do_not_match(identity):
    stub, _ = identity
    customer_id = await katherine(stub)
    # A different person of the same household: same surname and address, different given name and birth date.
    sibling = pb.PersonTraits(
        given_name="Robert", surname="Okafor", date_of_birth="1990-07-21", street_number="12",
        address_line="Oak Street", city="Springfield", postcode="62704", state="IL",
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Resolve(pb.ResolveRequest(traits=sibling))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    created = await stub.Resolve(pb.ResolveRequest(traits=sibling, create_if_missing=True))
    assert created.match_method == pb.MATCH_METHOD_CREATED and created.customer_id != customer_id
    assert not created.candidates and not created.linked  # a customer with traits and no identifiers


@pytest.mark.parametrize(
    ("traits", "details"),
    [
        (pb.PersonTraits(given_name="Ann", date_of_birth="21/03/1984"), "traits.date_of_birth: must be a date"),
        (pb.PersonTraits(given_name="Ann", date_of_birth="1984-13-01"), "traits.date_of_birth: "),
        (pb.PersonTraits(surname="x" * 200), "traits.surname: at most 128 characters"),
    ],
)
async def test_bad_traits_are_rejected_naming_the_field_and_nothing_is_written(identity, traits, details):
    stub, app = identity
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Resolve(pb.ResolveRequest(traits=traits, create_if_missing=True))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(details), error.value.details()
    assert await count(app.parts["engine"], customers) == 0


async def test_empty_request_still_names_identifiers(identity):
    stub, _ = identity
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Resolve(pb.ResolveRequest(traits=pb.PersonTraits(), create_if_missing=True))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("identifiers: at least one identifier is required")


async def test_model_estimated_from_stored_records_is_loaded_at_start_up(serve, database_url, tmp_path):
    app = build(settings_for(database_url, tmp_path))
    await serve(app)  # migrates
    repository = app.parts["repository"]
    rows = generate(1_200, seed=11)
    now = utcnow()
    for index, row in enumerate(rows):
        person = normalise(row)
        await repository.create_customer_with_traits(f"c_{index:020d}", [], person, blocking_keys(person), now)
    model = await estimate_and_store(repository, now)
    assert model is not None and model.fitted_on == 1_200
    # EM learnt that a true match nearly always agrees on the date of birth, and random people almost never do.
    assert model.m[2][0] > 0.7 and model.u[2][0] < 0.01

    restarted = build(settings_for(database_url, tmp_path))
    await serve(restarted)
    loaded = restarted.parts["service"].matcher.model
    assert loaded.fitted_on == 1_200 and loaded.to_dict() == model.to_dict()


async def test_no_pii_in_logs_even_when_the_database_fails(identity, caplog):
    """Traits and identifiers never reach a log line: not in normal flows, not in the stack trace of a database
    error (bound parameters are hidden from driver messages)."""
    import logging

    from sqlalchemy.exc import StatementError

    stub, app = identity
    caplog.set_level(logging.DEBUG)
    await katherine(stub)
    await stub.Resolve(pb.ResolveRequest(traits=pb.PersonTraits(given_name="Kate", surname="Okafor",
                                                                date_of_birth="1984-03-11")))
    engine = app.parts["engine"]
    assert engine.sync_engine.hide_parameters
    # A statement that fails inside the driver: its error text must not carry the values.
    with pytest.raises(StatementError) as error:
        async with engine.connect() as connection:
            await connection.execute(
                identifiers.insert(), [{"type": "email", "value": "kate@example.com", "customer_id": None,
                                        "linked_at": None}]
            )
    assert "kate@example.com" not in str(error.value)
    for secret in ("kate@example.com", "Okafor", "okafor", "Katherine", "Oak Street", "62704", "1984"):
        assert secret not in caplog.text
