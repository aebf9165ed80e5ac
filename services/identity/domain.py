"""Identity resolution and consent: normalisation, the match/link/conflict policy, consent rules.

Pure logic: no gRPC, no SQL. Storage is reached through the `IdentityRepository` port, so the policy can be tested
with an in-memory fake and run against SQLite or PostgreSQL through `services.identity.storage`.

Conflict policy (several customers match one Resolve): the customer owning the strongest matching identifier wins
(strength: account id > loyalty card > e-mail > phone > payment-token hash > device id > cookie id; between two
identifiers of the same type, the one listed first in the request). Identifiers owned by another customer stay
where they are and are reported as conflicts; identifiers nobody owns are linked to the winner. Nothing is merged.
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
from libs.protoconv import utcnow


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


class ConsentPurpose(StrEnum):
    """What a consent decision is for."""

    MARKETING = "marketing"
    PERSONALIZATION = "personalization"
    ANALYTICS = "analytics"


class ConsentChannel(StrEnum):
    """The channel a consent decision covers."""

    WEB = "web"
    POS = "pos"
    CALL_CENTER = "call_center"
    EMAIL = "email"


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


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer and every identifier linked to it."""

    customer_id: str
    identifiers: tuple[Identifier, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ConsentInput:
    """A consent decision as sent; unset enums are None, an unset time is None."""

    purpose: ConsentPurpose | None
    channel: ConsentChannel | None
    granted: bool
    source: str
    recorded_at: datetime | None


@dataclass(frozen=True, slots=True)
class Consent:
    """A validated consent decision."""

    purpose: ConsentPurpose
    channel: ConsentChannel
    granted: bool
    source: str
    recorded_at: datetime


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

    async def record_consents(
        self, customer_id: str, consents: Sequence[Consent], received_at: datetime
    ) -> list[Consent] | None:
        """Appends consent decisions to the history; the current ones after, or None for an unknown customer."""
        ...

    async def current_consents(self, customer_id: str) -> list[Consent] | None:
        """The latest decision per (purpose, channel), or None for an unknown customer."""
        ...


MAX_IDENTIFIERS = 32
MAX_CONSENTS = 64
MAX_SOURCE_LENGTH = 128
MAX_ID_LENGTH = 128
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


def _required_id(customer_id: str) -> str:
    customer_id = customer_id.strip()
    if not customer_id:
        raise InvalidArgument("customer_id", "is required")
    return customer_id


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
    ) -> None:
        self.repository = repository
        self.normaliser = normaliser
        self.clock = clock
        self.new_id = new_id
        #: Every committed change to a customer's identifiers or consent is published here (`WatchChanges`).
        self.changes = changes or ChangeFeed()

    async def resolve(self, raws: Sequence[RawIdentifier], create_if_missing: bool) -> Resolution:
        identifiers = self.normaliser.normalise_all(raws)
        for _ in range(RESOLVE_ATTEMPTS):
            owners = await self.repository.owners(identifiers)
            if owners:
                return await self._link_to_strongest(identifiers, owners)
            if not create_if_missing:
                raise NotFound("no customer matches the identifiers")
            customer_id = self.new_id()
            if await self.repository.create_customer(customer_id, identifiers, self.clock()):
                return Resolution(customer_id, MatchMethod.CREATED, None, tuple(identifiers), ())
            # A concurrent Resolve claimed one of these identifiers first: go again and join its customer.
        raise Unavailable("identifiers changed owner during resolution; retry")

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
        return Customer(customer.customer_id, tuple(ordered), customer.created_at)

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
            consents.append(Consent(given.purpose, given.channel, given.granted, source, recorded_at))
        return consents


_PURPOSE_ORDER = {purpose: rank for rank, purpose in enumerate(ConsentPurpose)}
_CHANNEL_ORDER = {channel: rank for rank, channel in enumerate(ConsentChannel)}


def _ordered(consents: Iterable[Consent]) -> list[Consent]:
    return sorted(consents, key=lambda c: (_PURPOSE_ORDER[c.purpose], _CHANNEL_ORDER[c.channel]))
