"""Concurrent Resolves of the same new identifiers, or of the same new person by traits alone, end with one customer,
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.identity.v1 import identity_service_pb2 as pb
from nextbest.identity.v1 import identity_service_pb2_grpc as pb_grpc
from sqlalchemy import func, select

from libs.settings import CommonSettings
from services.identity.app import build
from services.identity.settings import IdentitySettings
from services.identity.storage import customers, identifiers, trait_records

pytestmark = pytest.mark.integration

CALLS = 20
EMAIL = common.Identifier(type=common.IDENTIFIER_TYPE_EMAIL, value="rush@example.com")
PHONE = common.Identifier(type=common.IDENTIFIER_TYPE_PHONE, value="+14155550199")
COOKIE = common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE_ID, value="ck-rush")
PERSON = pb.PersonTraits(
    given_name="Rosalind",
    surname="Achterberg",
    date_of_birth="1979-06-02",
    street_number="7",
    address_line="Harbour Road",
    city="Portsmouth",
    postcode="03801",
    state="NH",
)


@pytest.fixture
async def identity(serve, database_url, tmp_path):
    settings = IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path))
    app = build(settings)
    _, channel = await serve(app)
    return pb_grpc.IdentityServiceStub(channel), app.parts["engine"]


async def rows(engine, table) -> int:
    async with engine.connect() as connection:
        return await connection.scalar(select(func.count()).select_from(table))


async def test_concurrent_resolves_of_a_new_email_create_one_customer(identity):
    stub, engine = identity
    request = pb.ResolveRequest(identifiers=[EMAIL], create_if_missing=True)
    results = await asyncio.gather(*(stub.Resolve(request, timeout=30) for _ in range(CALLS)))
    assert len({result.customer_id for result in results}) == 1
    assert [result.match_method for result in results].count(pb.MATCH_METHOD_CREATED) == 1
    assert not any(result.conflicts for result in results)
    # The losers rolled their own customer back: no orphan rows.
    assert await rows(engine, customers) == 1 and await rows(engine, identifiers) == 1


async def test_concurrent_resolves_of_the_same_identifiers_in_any_order_create_one_customer(identity):
    stub, engine = identity
    orders = ([EMAIL, PHONE], [PHONE, EMAIL])
    results = await asyncio.gather(
        *(
            stub.Resolve(pb.ResolveRequest(identifiers=orders[n % 2], create_if_missing=True), timeout=30)
            for n in range(CALLS)
        )
    )
    assert len({result.customer_id for result in results}) == 1
    assert not any(result.conflicts for result in results)
    assert await rows(engine, customers) == 1 and await rows(engine, identifiers) == 2


async def test_concurrent_links_of_a_new_identifier_link_it_once(identity):
    stub, engine = identity
    customer_id = (await stub.Resolve(pb.ResolveRequest(identifiers=[EMAIL], create_if_missing=True))).customer_id
    request = pb.ResolveRequest(identifiers=[EMAIL, COOKIE])
    results = await asyncio.gather(*(stub.Resolve(request, timeout=30) for _ in range(CALLS)))
    assert {result.customer_id for result in results} == {customer_id}
    assert sum(len(result.linked) for result in results) == 1  # exactly one call linked it; the rest found it linked
    assert not any(result.conflicts for result in results)
    assert await rows(engine, identifiers) == 2


async def test_concurrent_resolves_of_a_new_person_by_traits_alone_create_one_customer(identity):
    stub, engine = identity
    request = pb.ResolveRequest(traits=PERSON, create_if_missing=True)
    results = await asyncio.gather(*(stub.Resolve(request, timeout=30) for _ in range(CALLS)))
    assert len({result.customer_id for result in results}) == 1
    methods = [result.match_method for result in results]
    assert methods.count(pb.MATCH_METHOD_CREATED) == 1
    assert methods.count(pb.MATCH_METHOD_PROBABILISTIC) == CALLS - 1  # the others linked to it by traits
    assert await rows(engine, customers) == 1 and await rows(engine, trait_records) == 1


async def test_concurrent_resolves_of_noisy_copies_of_a_new_person_create_one_customer(identity):
    stub, engine = identity
    # A typo in the given name and another in the street: different records, still sharing blocking keys.
    copies = [PERSON, pb.PersonTraits(**{**_fields(PERSON), "given_name": "Rosalnd", "address_line": "Harbor Road"})]
    results = await asyncio.gather(
        *(
            stub.Resolve(pb.ResolveRequest(traits=copies[n % 2], create_if_missing=True), timeout=30)
            for n in range(CALLS)
        )
    )
    assert len({result.customer_id for result in results}) == 1
    assert [result.match_method for result in results].count(pb.MATCH_METHOD_CREATED) == 1
    assert await rows(engine, customers) == 1


def _fields(traits: pb.PersonTraits) -> dict[str, str]:
    return {field.name: value for field, value in traits.ListFields()}
