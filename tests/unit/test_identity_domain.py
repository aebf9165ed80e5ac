"""The identity use cases on an in-memory repository: create, link, the conflict policy, races, consent rules."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from libs.errors import InvalidArgument, NotFound
from services.identity.domain import (
    Consent,
    ConsentChannel,
    ConsentInput,
    ConsentPurpose,
    Customer,
    Identifier,
    IdentifierKind,
    IdentityService,
    LinkOutcome,
    MatchMethod,
    Normaliser,
    RawIdentifier,
)

pytestmark = pytest.mark.unit

K = IdentifierKind
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EMAIL = Identifier(K.EMAIL, "jane@example.com")
PHONE = Identifier(K.PHONE, "+14155550132")
CARD = Identifier(K.LOYALTY_CARD, "LC123456")
ACCOUNT = Identifier(K.ACCOUNT_ID, "acct-1")
COOKIE = Identifier(K.COOKIE_ID, "ck-1")


def raw(identifier: Identifier) -> RawIdentifier:
    return RawIdentifier(identifier.kind, identifier.value)


class FakeRepository:
    """In-memory `IdentityRepository`; `before_write` lets a test play a concurrent caller."""

    def __init__(self) -> None:
        self.customers: dict[str, datetime] = {}
        self.owner: dict[Identifier, str] = {}
        self.history: dict[str, list[Consent]] = {}
        self.writes = 0
        self.before_write: Callable[[], None] | None = None

    def _write(self) -> None:
        self.writes += 1
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook()

    async def owners(self, identifiers: Sequence[Identifier]) -> dict[Identifier, str]:
        return {i: self.owner[i] for i in identifiers if i in self.owner}

    async def create_customer(self, customer_id: str, identifiers: Sequence[Identifier], at: datetime) -> bool:
        self._write()
        if any(i in self.owner for i in identifiers):
            return False
        self.customers[customer_id] = at
        self.owner.update({i: customer_id for i in identifiers})
        return True

    async def link(self, customer_id: str, identifiers: Sequence[Identifier], at: datetime) -> LinkOutcome:
        self._write()
        taken = {i: self.owner[i] for i in identifiers if i in self.owner}
        linked = tuple(i for i in identifiers if i not in taken)
        self.owner.update({i: customer_id for i in linked})
        return LinkOutcome(linked, taken)

    async def customer(self, customer_id: str) -> Customer | None:
        if customer_id not in self.customers:
            return None
        mine = tuple(i for i, owner in self.owner.items() if owner == customer_id)
        return Customer(customer_id, mine, self.customers[customer_id])

    async def record_consents(self, customer_id: str, consents: Sequence[Consent], received_at: datetime):
        self._write()
        if customer_id not in self.customers:
            return None
        self.history.setdefault(customer_id, []).extend(consents)
        return await self.current_consents(customer_id)

    async def current_consents(self, customer_id: str) -> list[Consent] | None:
        if customer_id not in self.customers:
            return None
        current: dict[tuple[ConsentPurpose, ConsentChannel], Consent] = {}
        for consent in self.history.get(customer_id, []):
            key = (consent.purpose, consent.channel)
            if key not in current or consent.recorded_at >= current[key].recorded_at:
                current[key] = consent
        return list(current.values())

    def add_customer(self, customer_id: str, *identifiers: Identifier) -> None:
        self.customers[customer_id] = NOW
        self.owner.update({i: customer_id for i in identifiers})


@pytest.fixture
def repo() -> FakeRepository:
    return FakeRepository()


@pytest.fixture
def service(repo) -> IdentityService:
    ids = (f"c_{n}" for n in itertools.count(1))
    return IdentityService(repo, Normaliser("US"), clock=lambda: NOW, new_id=lambda: next(ids))


async def test_unknown_identifiers_create_a_customer_owning_all_of_them(service, repo):
    given = [RawIdentifier(K.EMAIL, " Jane@Example.com"), RawIdentifier(K.PHONE, "(415) 555-0132")]
    result = await service.resolve(given, True)
    assert (result.customer_id, result.method, result.matched_by) == ("c_1", MatchMethod.CREATED, None)
    assert result.linked == (EMAIL, PHONE) and result.conflicts == ()
    assert repo.owner == {EMAIL: "c_1", PHONE: "c_1"}


async def test_unknown_identifiers_without_create_are_not_found_and_write_nothing(service, repo):
    with pytest.raises(NotFound):
        await service.resolve([raw(EMAIL)], False)
    assert repo.writes == 0 and not repo.customers


async def test_known_identifiers_resolve_without_any_write(service, repo):
    repo.add_customer("c_9", EMAIL, PHONE)
    result = await service.resolve([raw(PHONE), raw(EMAIL)], False)
    assert (result.customer_id, result.method, result.matched_by) == ("c_9", MatchMethod.IDENTIFIER, EMAIL)
    assert result.linked == () and result.conflicts == ()
    assert repo.writes == 0


async def test_new_identifiers_seen_with_a_known_one_are_linked(service, repo):
    repo.add_customer("c_9", PHONE)
    result = await service.resolve([raw(COOKIE), raw(PHONE), raw(CARD)], False)
    assert result.customer_id == "c_9" and result.matched_by == PHONE
    assert result.linked == (COOKIE, CARD)
    assert repo.owner[COOKIE] == repo.owner[CARD] == "c_9"


async def test_conflict_strongest_identifier_wins_and_nothing_moves(service, repo):
    repo.add_customer("c_phone", PHONE)
    repo.add_customer("c_card", CARD)
    repo.add_customer("c_cookie", COOKIE)
    result = await service.resolve([raw(COOKIE), raw(PHONE), raw(EMAIL), raw(CARD)], False)
    assert result.customer_id == "c_card" and result.matched_by == CARD
    assert result.conflicts == (COOKIE, PHONE)  # in request order
    assert result.linked == (EMAIL,)  # unknown identifiers go to the winner
    assert repo.owner == {PHONE: "c_phone", CARD: "c_card", COOKIE: "c_cookie", EMAIL: "c_card"}


async def test_conflict_between_identifiers_of_one_type_goes_to_the_first_listed(service, repo):
    other = Identifier(K.EMAIL, "jane.work@example.com")
    repo.add_customer("c_a", EMAIL)
    repo.add_customer("c_b", other)
    result = await service.resolve([raw(other), raw(EMAIL)], False)
    assert (result.customer_id, result.matched_by, result.conflicts) == ("c_b", other, (EMAIL,))


async def test_account_id_beats_every_other_type(service, repo):
    repo.add_customer("c_email", EMAIL)
    repo.add_customer("c_account", ACCOUNT)
    result = await service.resolve([raw(EMAIL), raw(ACCOUNT)], False)
    assert result.customer_id == "c_account" and result.conflicts == (EMAIL,)


async def test_losing_a_creation_race_joins_the_winner_instead_of_creating_a_second_customer(service, repo):
    # Another Resolve creates the customer for the same e-mail between our lookup and our insert.
    repo.before_write = lambda: repo.add_customer("c_other", EMAIL)
    result = await service.resolve([raw(EMAIL), raw(PHONE)], True)
    assert result.customer_id == "c_other" and result.method == MatchMethod.IDENTIFIER
    assert result.linked == (PHONE,)
    assert set(repo.customers) == {"c_other"}


async def test_identifier_claimed_by_another_customer_during_linking_is_a_conflict(service, repo):
    repo.add_customer("c_1", EMAIL)
    repo.add_customer("c_2")
    repo.before_write = lambda: repo.owner.update({PHONE: "c_2"})
    result = await service.resolve([raw(EMAIL), raw(PHONE), raw(COOKIE)], False)
    assert result.customer_id == "c_1" and result.linked == (COOKIE,) and result.conflicts == (PHONE,)


async def test_identifier_linked_to_the_same_customer_concurrently_is_neither_linked_nor_a_conflict(service, repo):
    repo.add_customer("c_1", EMAIL)
    repo.before_write = lambda: repo.owner.update({PHONE: "c_1"})
    result = await service.resolve([raw(EMAIL), raw(PHONE)], False)
    assert result.linked == () and result.conflicts == ()


async def test_one_bad_identifier_rejects_the_whole_call_before_any_storage_access(service, repo):
    with pytest.raises(InvalidArgument) as error:
        await service.resolve([raw(EMAIL), RawIdentifier(K.PHONE, "12"), RawIdentifier(None, "x")], True)
    assert error.value.field == "identifiers[1].value"
    assert repo.writes == 0 and not repo.owner


async def test_get_customer_lists_identifiers_strongest_first(service, repo):
    repo.add_customer("c_1", COOKIE, EMAIL, ACCOUNT)
    customer = await service.get_customer(" c_1 ")
    assert customer.identifiers == (ACCOUNT, EMAIL, COOKIE) and customer.created_at == NOW


@pytest.mark.parametrize("call", ["get_customer", "get_consent"])
async def test_customer_id_is_required_and_must_exist(service, call):
    with pytest.raises(InvalidArgument) as error:
        await getattr(service, call)("  ")
    assert error.value.field == "customer_id"
    with pytest.raises(NotFound):
        await getattr(service, call)("c_missing")


def consent(purpose=ConsentPurpose.MARKETING, channel=ConsentChannel.WEB, granted=True, source="web-signup", at=None):
    return ConsentInput(purpose, channel, granted, source, at)


async def test_consent_defaults_its_time_to_now_and_later_decisions_replace_earlier_ones(service, repo):
    repo.add_customer("c_1")
    first = await service.set_consent("c_1", [consent(at=NOW - timedelta(days=2))])
    assert first == [Consent(ConsentPurpose.MARKETING, ConsentChannel.WEB, True, "web-signup", NOW - timedelta(days=2))]
    current = await service.set_consent("c_1", [consent(granted=False, source="pos")])
    assert current == [Consent(ConsentPurpose.MARKETING, ConsentChannel.WEB, False, "pos", NOW)]


async def test_consents_come_back_ordered_by_purpose_then_channel(service, repo):
    repo.add_customer("c_1")
    await service.set_consent(
        "c_1",
        [
            consent(ConsentPurpose.ANALYTICS, ConsentChannel.WEB),
            consent(ConsentPurpose.MARKETING, ConsentChannel.EMAIL),
            consent(ConsentPurpose.MARKETING, ConsentChannel.WEB),
        ],
    )
    current = await service.get_consent("c_1")
    assert [(c.purpose, c.channel) for c in current] == [
        (ConsentPurpose.MARKETING, ConsentChannel.WEB),
        (ConsentPurpose.MARKETING, ConsentChannel.EMAIL),
        (ConsentPurpose.ANALYTICS, ConsentChannel.WEB),
    ]


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (consent(purpose=None), "consents[1].purpose"),
        (consent(channel=None), "consents[1].channel"),
        (consent(source="  "), "consents[1].source"),
        (consent(source="x" * 129), "consents[1].source"),
        (consent(at=NOW + timedelta(hours=1)), "consents[1].recorded_at"),
    ],
)
async def test_invalid_consent_names_its_field_and_records_nothing(service, repo, bad, field):
    repo.add_customer("c_1")
    with pytest.raises(InvalidArgument) as error:
        await service.set_consent("c_1", [consent(), bad])
    assert error.value.field == field
    assert repo.writes == 0


async def test_set_consent_needs_at_least_one_consent_and_a_known_customer(service, repo):
    with pytest.raises(InvalidArgument) as error:
        await service.set_consent("c_1", [])
    assert error.value.field == "consents"
    with pytest.raises(NotFound):
        await service.set_consent("c_1", [consent()])
