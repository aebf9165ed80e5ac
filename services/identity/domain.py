"""Identity resolution and consent: normalisation, the match/link/conflict policy, consent rules.

Pure logic: no gRPC, no SQL. Storage is reached through the `IdentityRepository` port, so the policy can be tested
with an in-memory fake and run against SQLite or PostgreSQL through `services.identity.storage`.

Conflict policy (several customers match one Resolve): the customer owning the strongest matching identifier wins
(strength: account id > loyalty card > e-mail > phone > payment-token hash > device id > cookie id; between two
identifiers of the same type, the one listed first in the request). Identifiers owned by another customer stay
where they are and are reported as conflicts; identifiers nobody owns are linked to the winner. Nothing is merged.
So a loyalty card presented with two different e-mails stays with the customer who registered it first and the
second e-mail's customer is told about the conflict; a family's shared phone stays with its first owner and never
pulls another family member's identifiers over (their stronger e-mail or card wins their Resolve). Joining two
customers is a deliberate act, never a side effect of a Resolve.

Probabilistic matching (only when no identifier matched and person traits were given): the traits are compared
with the stored trait records sharing a blocking key (`services.identity.matching`); the best customer at or
above the upper threshold is linked automatically; candidates between the thresholds are returned, never linked;
below, a new customer (create_if_missing) or NOT_FOUND.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from libs.changefeed import ChangeFeed
from libs.errors import InvalidArgument, NotFound, Unavailable
from libs.lineage import LineageKind
from libs.protoconv import utcnow
from services.identity.matching.blocking import blocking_keys
from services.identity.matching.matcher import FieldAgreement, ScoredCandidate, TraitMatcher
from services.identity.matching.model import MatchModel
from services.identity.matching.traits import PersonTraits, TraitError
from services.identity.matching.traits import normalise as normalise_traits


class IdentifierKind(StrEnum):
    """Identifier types, strongest first (the order decides which customer wins a conflict)."""

    ACCOUNT_ID = "account_id"
    LOYALTY_CARD = "loyalty_card"
    EMAIL = "email"
    PHONE = "phone"
    PAYMENT_TOKEN_HASH = "payment_token_hash"
    DEVICE_ID = "device_id"
    COOKIE_ID = "cookie_id"


#: Lower is stronger.
STRENGTH: dict[IdentifierKind, int] = {kind: rank for rank, kind in enumerate(IdentifierKind)}


class MatchMethod(StrEnum):
    """How Resolve found its customer."""

    IDENTIFIER = "identifier"
    CREATED = "created"
    PROBABILISTIC = "probabilistic"
    CANDIDATES = "candidates"


class ConsentPurpose(StrEnum):
    """What a consent decision is for."""

    MARKETING = "marketing"
    PERSONALIZATION = "personalization"
    ANALYTICS = "analytics"
    PROFILING = "profiling"


class ConsentChannel(StrEnum):
    """The channel a consent decision covers."""

    WEB = "web"
    POS = "pos"
    CALL_CENTER = "call_center"
    EMAIL = "email"
    SMS = "sms"
    APP = "app"


@dataclass(frozen=True, slots=True)
class Identifier:
    """A normalised identifier; equal identifiers point at the same customer."""

    kind: IdentifierKind
    value: str


@dataclass(frozen=True, slots=True)
class RawIdentifier:
    """An identifier as a touchpoint sent it; `kind` is None when the type is unset or unknown."""

    kind: IdentifierKind | None
    value: str


@dataclass(frozen=True, slots=True)
class Resolution:
    """The answer to Resolve."""

    customer_id: str
    method: MatchMethod
    matched_by: Identifier | None
    linked: tuple[Identifier, ...]
    conflicts: tuple[Identifier, ...]
    #: PROBABILISTIC: the match probability and the fields that agreed.
    probability: float = 0.0
    agreeing: tuple[FieldAgreement, ...] = ()
    #: Customers in the review band (between the thresholds), best first; never linked by Resolve.
    candidates: tuple[ScoredCandidate, ...] = ()


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer and every identifier linked to it."""

    customer_id: str
    identifiers: tuple[Identifier, ...]
    created_at: datetime
    #: The survivor, when this customer was merged into another.
    merged_into: str | None = None


@dataclass(frozen=True, slots=True)
class ConsentInput:
    """A consent decision as sent; unset enums are None, an unset time is None."""

    purpose: ConsentPurpose | None
    channel: ConsentChannel | None
    granted: bool
    source: str
    recorded_at: datetime | None
    text_version: str = ""


@dataclass(frozen=True, slots=True)
class Consent:
    """A validated consent decision."""

    purpose: ConsentPurpose
    channel: ConsentChannel
    granted: bool
    source: str
    recorded_at: datetime
    #: The consent text and version the customer saw.
    text_version: str = ""


@dataclass(frozen=True, slots=True)
class MergeOutcome:
    """A merge done: its id and what moved."""

    merge_id: str
    identifiers_moved: int
    trait_records_moved: int


@dataclass(frozen=True, slots=True)
class UnmergeOutcome:
    """A merge undone: who got their identifiers back, and how many."""

    restored_customer_id: str
    survivor_customer_id: str
    identifiers_restored: int
    trait_records_restored: int


@dataclass(frozen=True, slots=True)
class ForgetOutcome:
    """What an erasure deleted; `erased_now` is False when it had been done before."""

    erased_now: bool
    identifiers: int
    trait_records: int
    consents: int
    erased_at: datetime


@dataclass(frozen=True, slots=True)
class LineageEntry:
    """One committed merge, unmerge or erasure, as other services follow it (`ListLineage`)."""

    seq: int
    kind: LineageKind
    recorded_at: datetime
    merge_id: str = ""
    survivor_id: str = ""
    merged_id: str = ""
    #: The erased customer (FORGET).
    customer_id: str = ""


@dataclass(frozen=True, slots=True)
class LinkOutcome:
    """What `IdentityRepository.link` did: identifiers it linked, and the owners of those already taken."""

    linked: tuple[Identifier, ...]
    taken: dict[Identifier, str]


class IdentityRepository(Protocol):
    """Storage port of the identity service."""

    async def owners(self, identifiers: Sequence[Identifier]) -> dict[Identifier, str]:
        """The customer id owning each identifier that is known (one indexed query)."""
        ...

    async def create_customer(self, customer_id: str, identifiers: Sequence[Identifier], at: datetime) -> bool:
        """Creates a customer owning all identifiers, atomically; False and nothing written if any is taken."""
        ...

    async def link(self, customer_id: str, identifiers: Sequence[Identifier], at: datetime) -> LinkOutcome:
        """Links the identifiers nobody owns to the customer; reports the owners of the others."""
        ...

    async def customer(self, customer_id: str) -> Customer | None:
        """The customer with its identifiers, or None."""
        ...

    async def create_customer_with_traits(
        self,
        customer_id: str,
        identifiers: Sequence[Identifier],
        traits: PersonTraits,
        keys: dict[str, str],
        at: datetime,
        *,
        unless: Callable[[list[tuple[str, PersonTraits]]], bool] | None = None,
        limit: int = 200,
    ) -> bool:
        """`create_customer`, plus the customer's first trait record, in the same transaction.

        Creations whose records share a blocking key are serialised, and `unless` is asked, inside that
        serialisation, about the stored records sharing a key with `keys` (as `trait_candidates` finds them): True
        means one of them is this person after all (a concurrent Resolve just created it), and nothing is written
        (False). `limit` bounds the records read, as in `trait_candidates`."""
        ...

    async def add_traits(self, customer_id: str, traits: PersonTraits, keys: dict[str, str], at: datetime) -> bool:
        """Stores a trait record for the customer unless an identical one exists; True when stored."""
        ...

    async def trait_candidates(self, keys: dict[str, str], limit: int) -> list[tuple[str, PersonTraits]]:
        """Stored (customer id, trait record) pairs sharing at least one non-empty blocking key (at most `limit`)."""
        ...

    async def record_consents(
        self, customer_id: str, consents: Sequence[Consent], received_at: datetime
    ) -> list[Consent] | None:
        """Appends consent decisions to the history; the current ones after, or None for an unknown customer."""
        ...

    async def current_consents(self, customer_id: str) -> list[Consent] | None:
        """The latest decision per (purpose, channel), or None for an unknown customer."""
        ...

    async def consent_history(self, customer_id: str) -> list[Consent]:
        """Every recorded decision, oldest first."""
        ...

    async def merge(
        self, merge_id: str, survivor: str, merged: str, reason: str, actor: str, at: datetime
    ) -> MergeOutcome:
        """Moves the merged customer's identifiers and trait records to the survivor and records the audit row,
        in one transaction (NotFound / FailedPrecondition when either customer cannot take part)."""
        ...

    async def unmerge(self, merge_id: str, reason: str, actor: str, at: datetime) -> UnmergeOutcome:
        """Moves exactly what the merge moved back, and records who undid it, when and why."""
        ...

    async def forget(self, customer_id: str, reason: str, actor: str, at: datetime) -> ForgetOutcome:
        """Deletes the customer's identifiers, trait records and consents; audit without PII; idempotent."""
        ...

    async def lineage(self, after_seq: int, limit: int) -> list[LineageEntry]:
        """Journal entries with seq > `after_seq`, in seq order (which is commit order), at most `limit`."""
        ...


MAX_IDENTIFIERS = 32
MAX_CONSENTS = 64
MAX_SOURCE_LENGTH = 128
MAX_TEXT_VERSION_LENGTH = 128
MAX_REASON_LENGTH = 512
MAX_ACTOR_LENGTH = 128
MAX_ID_LENGTH = 128
#: Lineage journal entries per ListLineage page: the default, and the most a caller may ask for.
DEFAULT_LINEAGE_PAGE = 100
MAX_LINEAGE_PAGE = 1000
#: A consent time may lead our clock by this much (touchpoint clocks drift); beyond, it would pin the state.
CONSENT_CLOCK_SKEW = timedelta(minutes=5)
#: A Resolve that loses a creation race re-reads the winner; more attempts only happen if owners keep vanishing.
RESOLVE_ATTEMPTS = 3

_LOYALTY_CARD = re.compile(r"[A-Z0-9]{6,24}")
_TOKEN_HASH = re.compile(r"[0-9a-f]{32,128}")
_LOYALTY_SEPARATORS = str.maketrans("", "", " -")


class Normaliser:
    """Turns identifiers as touchpoints send them into the one form they are stored and matched in."""

    def __init__(self, default_region: str = "US") -> None:
        self.default_region = default_region

    def normalise(self, raw: RawIdentifier, field: str) -> Identifier:
        """One identifier; errors name `{field}.type` or `{field}.value`."""
        if raw.kind is None:
            raise InvalidArgument(f"{field}.type", "must be a known identifier type, not UNSPECIFIED")
        value = raw.value.strip()
        if not value:
            raise InvalidArgument(f"{field}.value", "is required")
        try:
            return Identifier(raw.kind, self._normalise_value(raw.kind, value))
        except ValueError as exc:
            raise InvalidArgument(f"{field}.value", str(exc)) from None

    def normalise_all(self, raws: Sequence[RawIdentifier], field: str = "identifiers") -> list[Identifier]:
        """Every identifier (all validated before any is used), duplicates after normalisation removed."""
        if not raws:
            raise InvalidArgument(field, "at least one identifier is required")
        if len(raws) > MAX_IDENTIFIERS:
            raise InvalidArgument(field, f"at most {MAX_IDENTIFIERS} identifiers per call")
        normalised = (self.normalise(raw, f"{field}[{i}]") for i, raw in enumerate(raws))
        return list(dict.fromkeys(normalised))

    def _normalise_value(self, kind: IdentifierKind, value: str) -> str:
        if kind is IdentifierKind.EMAIL:
            try:
                return validate_email(value, check_deliverability=False).normalized.lower()
            except EmailNotValidError as exc:
                raise ValueError(f"not a valid e-mail address: {exc}") from None
        if kind is IdentifierKind.PHONE:
            try:
                number = phonenumbers.parse(value, self.default_region)
            except phonenumbers.NumberParseException:
                number = None
            if number is None or not phonenumbers.is_valid_number(number):
                raise ValueError(f"not a valid phone number (default region {self.default_region})")
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if kind is IdentifierKind.LOYALTY_CARD:
            card = value.upper().translate(_LOYALTY_SEPARATORS)
            if not _LOYALTY_CARD.fullmatch(card):
                raise ValueError("a loyalty card is 6-24 letters or digits (spaces and dashes are ignored)")
            return card
        if kind is IdentifierKind.PAYMENT_TOKEN_HASH:
            token_hash = value.lower()
            if not _TOKEN_HASH.fullmatch(token_hash):
                raise ValueError("a payment token hash is 32-128 hexadecimal characters")
            return token_hash
        # Account, device and cookie ids are opaque: only their shape is checked.
        if len(value) > MAX_ID_LENGTH or not value.isprintable():
            raise ValueError(f"must be 1-{MAX_ID_LENGTH} printable characters")
        return value


def new_customer_id() -> str:
    return "c_" + uuid.uuid4().hex[:20]


def new_merge_id() -> str:
    return "m_" + uuid.uuid4().hex[:20]


def _audit_text(value: str, field: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required (it is kept in the audit)")
    if len(value) > limit:
        raise InvalidArgument(field, f"at most {limit} characters")
    return value


@dataclass(frozen=True, slots=True)
class MatchPolicy:
    """Thresholds of probabilistic matching (settings)."""

    #: At or above: link automatically.
    upper: float = 0.95
    #: At or above (and below `upper`): return as a candidate for review, link nothing.
    lower: float = 0.60
    #: Most stored trait records compared per Resolve.
    max_candidates: int = 200


def _required_id(customer_id: str) -> str:
    return _required_field(customer_id, "customer_id")


def _required_field(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    return value


class IdentityService:
    """The identity use cases; every method validates its whole input before touching storage."""

    def __init__(
        self,
        repository: IdentityRepository,
        normaliser: Normaliser,
        *,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], str] = new_customer_id,
        changes: ChangeFeed | None = None,
        model: MatchModel | None = None,
        policy: MatchPolicy | None = None,
    ) -> None:
        self.repository = repository
        self.normaliser = normaliser
        self.clock = clock
        self.new_id = new_id
        #: Every committed change to a customer's identifiers or consent is published here (`WatchChanges`).
        self.changes = changes or ChangeFeed()
        self.matcher = TraitMatcher(model or MatchModel())
        self.policy = policy or MatchPolicy()

    def use_model(self, model: MatchModel) -> None:
        """Swap in newly estimated m/u parameters (start-up, or after `nextbest identity estimate`)."""
        self.matcher = TraitMatcher(model)

    async def resolve(
        self,
        raws: Sequence[RawIdentifier],
        create_if_missing: bool,
        traits: dict[str, str] | None = None,
    ) -> Resolution:
        has_traits = bool(traits and any(value.strip() for value in traits.values()))
        identifiers = self.normaliser.normalise_all(raws) if raws or not has_traits else []
        person = self._person(traits, identifiers) if has_traits else None
        for _ in range(RESOLVE_ATTEMPTS):
            owners = await self.repository.owners(identifiers) if identifiers else {}
            if owners:
                resolution = await self._link_to_strongest(identifiers, owners)
                if person is not None and await self._remember(resolution.customer_id, person):
                    self.changes.publish([resolution.customer_id])
                return resolution
            review: tuple[ScoredCandidate, ...] = ()
            if person is not None:
                scored = self.matcher.score(
                    person,
                    await self.repository.trait_candidates(blocking_keys(person), self.policy.max_candidates),
                )
                if scored and scored[0].probability >= self.policy.upper:
                    return await self._link_probabilistic(scored[0], identifiers, person)
                review = tuple(c for c in scored if c.probability >= self.policy.lower)
            if not create_if_missing:
                if review:
                    return Resolution("", MatchMethod.CANDIDATES, None, (), (), candidates=review)
                raise NotFound("no customer matches the identifiers" if identifiers else "no customer matches")
            customer_id = self.new_id()
            if person is not None:
                # Two Resolves of the same new person by traits alone must not create two customers: creation
                # re-checks for an automatic link where concurrent creations of this person are serialised.
                created = await self.repository.create_customer_with_traits(
                    customer_id,
                    identifiers,
                    person,
                    blocking_keys(person),
                    self.clock(),
                    unless=self._links(person),
                    limit=self.policy.max_candidates,
                )
            else:
                created = await self.repository.create_customer(customer_id, identifiers, self.clock())
            if created:
                return Resolution(customer_id, MatchMethod.CREATED, None, tuple(identifiers), (), candidates=review)
            # A concurrent Resolve claimed one of these identifiers, or created this person, first: go again and
            # join its customer.
        raise Unavailable("identifiers changed owner during resolution; retry")

    def _links(self, person: PersonTraits) -> Callable[[list[tuple[str, PersonTraits]]], bool]:
        """Whether any of the stored records would link `person` automatically."""

        def linkable(stored: list[tuple[str, PersonTraits]]) -> bool:
            scored = self.matcher.score(person, stored, limit=1)
            return bool(scored) and scored[0].probability >= self.policy.upper

        return linkable

    def _person(self, traits: dict[str, str], identifiers: Sequence[Identifier]) -> PersonTraits:
        raw = dict(traits)
        phone = next((i.value for i in identifiers if i.kind is IdentifierKind.PHONE), "")
        raw["phone"] = phone  # a validated identifier; callers cannot send a phone trait of their own
        try:
            return normalise_traits(raw)
        except TraitError as exc:
            raise InvalidArgument(f"traits.{exc.field}", exc.reason) from None

    async def _remember(self, customer_id: str, person: PersonTraits) -> bool:
        """Keeps the trait record with the customer (new spellings and addresses improve later matches)."""
        if person.present() < 2:
            return False
        return await self.repository.add_traits(customer_id, person, blocking_keys(person), self.clock())

    async def _link_probabilistic(
        self, best: ScoredCandidate, identifiers: list[Identifier], person: PersonTraits
    ) -> Resolution:
        linked: tuple[Identifier, ...] = ()
        conflicts: list[Identifier] = []
        if identifiers:
            outcome = await self.repository.link(best.customer_id, identifiers, self.clock())
            linked = outcome.linked
            conflicts = [i for i in identifiers if outcome.taken.get(i, best.customer_id) != best.customer_id]
        stored = await self._remember(best.customer_id, person)
        if linked or stored:
            self.changes.publish([best.customer_id])
        return Resolution(
            best.customer_id,
            MatchMethod.PROBABILISTIC,
            None,
            linked,
            tuple(conflicts),
            probability=best.probability,
            agreeing=best.agreeing,
        )

    async def _link_to_strongest(self, identifiers: list[Identifier], owners: dict[Identifier, str]) -> Resolution:
        matched = [identifier for identifier in identifiers if identifier in owners]
        matched_by = min(matched, key=lambda identifier: STRENGTH[identifier.kind])  # first of the strongest
        winner = owners[matched_by]
        conflicts = [identifier for identifier in matched if owners[identifier] != winner]
        unknown = [identifier for identifier in identifiers if identifier not in owners]
        linked: tuple[Identifier, ...] = ()
        if unknown:
            outcome = await self.repository.link(winner, unknown, self.clock())
            linked = outcome.linked
            if linked:
                self.changes.publish([winner])
            # Claimed by a concurrent call since we looked: a conflict unless it went to the same customer.
            conflicts += [i for i in unknown if outcome.taken.get(i, winner) != winner]
        return Resolution(winner, MatchMethod.IDENTIFIER, matched_by, linked, tuple(conflicts))

    async def get_customer(self, customer_id: str) -> Customer:
        customer_id = _required_id(customer_id)
        customer = await self.repository.customer(customer_id)
        if customer is None:
            raise NotFound(f"customer {customer_id} not found")
        ordered = sorted(customer.identifiers, key=lambda i: (STRENGTH[i.kind], i.value))
        return Customer(customer.customer_id, tuple(ordered), customer.created_at, customer.merged_into)

    async def set_consent(self, customer_id: str, inputs: Sequence[ConsentInput]) -> list[Consent]:
        customer_id = _required_id(customer_id)
        now = self.clock()
        consents = self._validate_consents(inputs, now)
        current = await self.repository.record_consents(customer_id, consents, now)
        if current is None:
            raise NotFound(f"customer {customer_id} not found")
        self.changes.publish([customer_id])
        return _ordered(current)

    async def get_consent(self, customer_id: str) -> list[Consent]:
        customer_id = _required_id(customer_id)
        current = await self.repository.current_consents(customer_id)
        if current is None:
            raise NotFound(f"customer {customer_id} not found")
        return _ordered(current)

    async def consent_history(self, customer_id: str) -> list[Consent]:
        """Every decision recorded for the customer, oldest first (after `get_consent` proved it exists)."""
        return await self.repository.consent_history(_required_id(customer_id))

    @staticmethod
    def allowed(current: Sequence[Consent], purpose: ConsentPurpose | None, channel: ConsentChannel | None) -> bool:
        """May we use the data for `purpose` on `channel` now: the latest decision for the pair is a grant
        (no decision means no). Both must be known values."""
        if purpose is None:
            raise InvalidArgument("purpose", "must be a known purpose when asking about a channel")
        if channel is None:
            raise InvalidArgument("channel", "must be a known channel when asking about a purpose")
        return any(c.granted for c in current if c.purpose is purpose and c.channel is channel)

    async def merge(self, survivor: str, merged: str, reason: str, actor: str) -> MergeOutcome:
        survivor = _required_field(survivor, "survivor_customer_id")
        merged = _required_field(merged, "merged_customer_id")
        if survivor == merged:
            raise InvalidArgument("merged_customer_id", "must differ from survivor_customer_id")
        reason = _audit_text(reason, "reason", MAX_REASON_LENGTH)
        actor = _audit_text(actor, "actor", MAX_ACTOR_LENGTH)
        outcome = await self.repository.merge(new_merge_id(), survivor, merged, reason, actor, self.clock())
        self.changes.publish([survivor, merged])
        return outcome

    async def unmerge(self, merge_id: str, reason: str, actor: str) -> UnmergeOutcome:
        merge_id = _required_field(merge_id, "merge_id")
        reason = _audit_text(reason, "reason", MAX_REASON_LENGTH)
        actor = _audit_text(actor, "actor", MAX_ACTOR_LENGTH)
        outcome = await self.repository.unmerge(merge_id, reason, actor, self.clock())
        self.changes.publish([outcome.survivor_customer_id, outcome.restored_customer_id])
        return outcome

    async def forget(self, customer_id: str, reason: str, actor: str) -> ForgetOutcome:
        customer_id = _required_id(customer_id)
        reason = _audit_text(reason, "reason", MAX_REASON_LENGTH)
        actor = _audit_text(actor, "actor", MAX_ACTOR_LENGTH)
        outcome = await self.repository.forget(customer_id, reason, actor, self.clock())
        self.changes.publish([customer_id])
        return outcome

    async def list_lineage(self, after_seq: int, limit: int) -> list[LineageEntry]:
        """The lineage journal after `after_seq` (`limit` 0 means the default page)."""
        if after_seq < 0:
            raise InvalidArgument("after_seq", "must be >= 0")
        if limit < 0:
            raise InvalidArgument("limit", "must be >= 0")
        return await self.repository.lineage(after_seq, min(limit or DEFAULT_LINEAGE_PAGE, MAX_LINEAGE_PAGE))

    @staticmethod
    def _validate_consents(inputs: Sequence[ConsentInput], now: datetime) -> list[Consent]:
        if not inputs:
            raise InvalidArgument("consents", "at least one consent is required")
        if len(inputs) > MAX_CONSENTS:
            raise InvalidArgument("consents", f"at most {MAX_CONSENTS} consents per call")
        consents = []
        for i, given in enumerate(inputs):
            field = f"consents[{i}]"
            if given.purpose is None:
                raise InvalidArgument(f"{field}.purpose", "must be a known purpose, not UNSPECIFIED")
            if given.channel is None:
                raise InvalidArgument(f"{field}.channel", "must be a known channel, not UNSPECIFIED")
            source = given.source.strip()
            if not source:
                raise InvalidArgument(f"{field}.source", "is required")
            if len(source) > MAX_SOURCE_LENGTH:
                raise InvalidArgument(f"{field}.source", f"at most {MAX_SOURCE_LENGTH} characters")
            recorded_at = given.recorded_at or now
            if recorded_at > now + CONSENT_CLOCK_SKEW:
                raise InvalidArgument(f"{field}.recorded_at", "is in the future")
            text_version = given.text_version.strip()
            if len(text_version) > MAX_TEXT_VERSION_LENGTH:
                raise InvalidArgument(f"{field}.text_version", f"at most {MAX_TEXT_VERSION_LENGTH} characters")
            consents.append(Consent(given.purpose, given.channel, given.granted, source, recorded_at, text_version))
        return consents


_PURPOSE_ORDER = {purpose: rank for rank, purpose in enumerate(ConsentPurpose)}
_CHANNEL_ORDER = {channel: rank for rank, channel in enumerate(ConsentChannel)}


def _ordered(consents: Iterable[Consent]) -> list[Consent]:
    return sorted(consents, key=lambda c: (_PURPOSE_ORDER[c.purpose], _CHANNEL_ORDER[c.channel]))
