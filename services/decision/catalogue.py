"""The offer catalogue: a versioned folder the operator edits (offers.json + products.json), validated on load.

Pure domain code (no gRPC, no SQL). A malformed catalogue raises `CatalogueError` naming the exact entry and
field, e.g. `offers[3].type: unknown offer type 'coupon'`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

import orjson

from services.decision.domain.rules import STAGES, Rule, RuleError, compile_rule

OFFER_TYPES = ("discount", "free_shipping", "loyalty_perk", "pre_order", "cross_sell", "service_action")
CHANNELS = ("web", "pos", "call_center")
#: A placement (the slot an offer fills, e.g. "cart", "till"): also what a request may name.
PLACEMENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
TIERS = ("none", "bronze", "silver", "gold", "platinum")
#: The files of a catalogue folder.
CATALOGUE_FILES = ("offers.json", "products.json")


class CatalogueError(ValueError):
    """The catalogue folder is missing or malformed; the message names the entry and field."""


@dataclass(frozen=True)
class Eligibility:
    """Structured eligibility rules over the profile and the request context (all must hold)."""

    min_tier: str = "none"
    min_total_spend: float = 0.0
    min_orders: int = 0
    max_return_rate: float = 1.0
    #: Web pages where the offer may show; empty means any page.
    pages: tuple[str, ...] = ()
    #: Call reasons the offer answers; empty means any.
    call_reasons: tuple[str, ...] = ()
    requires_cart: bool = False
    #: Only for customers who paid for shipping on at least this share of shipped orders.
    min_shipping_paid_share: float = 0.0


@dataclass(frozen=True)
class ContactPolicy:
    """How often one customer may see the offer (counted per channel) and when to stop showing it."""

    max_per_day: int | None = None
    max_per_week: int | None = None
    #: Days the offer stays away from a customer after they declined it.
    decline_cooldown_days: float | None = None
    #: Stop showing the offer to a customer after this many decisions that showed it got no response at all.
    max_ignores: int | None = None


@dataclass(frozen=True)
class BudgetCap:
    """Total accepts and/or accepted spend (revenue) the offer may take, across all customers."""

    max_accepts: int | None = None
    max_spend: float | None = None


@dataclass(frozen=True)
class Scarcity:
    """When the offer's product runs low, only valuable or loyal customers keep seeing it (see domain/scarcity.py).

    The customer's value percentile is read off `value_percentiles` (percentile of the customer base -> the net
    value reaching it, from the operator's profile report): no per-decision query of the whole base.
    """

    #: The policy applies while the product has fewer units than this at the fulfilling location.
    below_units: int
    #: Customers below this value percentile lose the offer while it is scarce (loyal tiers excepted).
    min_value_percentile: float
    #: Percentile (0-100) -> net value at that percentile, ascending.
    value_percentiles: tuple[tuple[float, float], ...]
    #: Tiers that keep the offer whatever their value, and go first.
    loyal_tiers: tuple[str, ...] = ("gold", "platinum")


@dataclass(frozen=True)
class Offer:
    id: str
    name: str
    type: str
    channels: tuple[str, ...]
    #: Marketing offers need the customer's marketing consent for the channel; service actions do not.
    marketing: bool
    #: Expected margin to the retailer when accepted, in currency units.
    value: float
    #: Business weight set by the operator (1.0 = neutral).
    lever: float
    #: Prior acceptance probability, used when the scoring service is unavailable.
    base_propensity: float
    discount_pct: float = 0.0
    #: Product whose stock gates the offer; the decision picks the SKU variant (size/colour) at decision time.
    product_id: str | None = None
    #: The product's SKU variants the offer covers (a clearance of some sizes or colours); empty: every variant.
    skus: frozenset[str] = frozenset()
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    eligibility: Eligibility = field(default_factory=Eligibility)
    #: What the associate or agent says (POS, call centre).
    script: str = ""
    #: CEL rules (eligibility, then applicability, then suitability); all must hold.
    rules: tuple[Rule, ...] = ()
    #: Whether the offer may be shown next to another offer of the same type (diversity).
    allow_same_type: bool = False
    #: Slots the offer may fill ("cart", "checkout", "till", ...); empty: any placement of its channels.
    placements: frozenset[str] = frozenset()
    contact: ContactPolicy | None = None
    budget: BudgetCap | None = None
    scarcity: Scarcity | None = None


@dataclass(frozen=True)
class Variant:
    sku: str
    size: str
    colour: str


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    brand: str
    price: float
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class Catalogue:
    version: str
    offers: tuple[Offer, ...]
    products: dict[str, Product]
    #: SKU variant -> product id, for context SKUs and cart lines.
    product_of_sku: dict[str, str]

    @cached_property
    def rules_read_features(self) -> bool:
        """Whether any offer's rule may read `customer.features` (else a decision's facts leave them out)."""
        return any(rule.reads_features for offer in self.offers for rule in offer.rules)

    def offer(self, offer_id: str) -> Offer | None:
        return next((o for o in self.offers if o.id == offer_id), None)

    def variants_of(self, offer: Offer) -> tuple[Variant, ...]:
        """The SKU variants the offer covers: its `skus`, else every variant of its product (none without one)."""
        if offer.product_id is None:
            return ()
        variants = self.products[offer.product_id].variants
        return tuple(v for v in variants if v.sku in offer.skus) if offer.skus else variants


def _require(entry: dict, key: str, where: str, kind: type | tuple[type, ...]):
    if key not in entry:
        raise CatalogueError(f"{where}.{key}: required")
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CatalogueError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _parse_time(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise CatalogueError(f"{where}: not an ISO-8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise CatalogueError(f"{where}: needs a timezone offset: {value!r}")
    return parsed


def _parse_skus(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(sku, str) and sku for sku in value):
        raise CatalogueError(f"{where}: expected a list of SKU variant ids")
    return frozenset(value)


def _parse_placements(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise CatalogueError(f"{where}: expected a list of placement names")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not PLACEMENT_NAME.fullmatch(name):
            raise CatalogueError(f"{where}[{i}]: a placement is lower-case letters, digits, '_' or '-', got {name!r}")
    return frozenset(value)


def parse_offer(entry: object, where: str) -> Offer:
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where}: expected an object")
    offer_type = _require(entry, "type", where, str)
    if offer_type not in OFFER_TYPES:
        raise CatalogueError(f"{where}.type: unknown offer type {offer_type!r} (one of {', '.join(OFFER_TYPES)})")
    channels = tuple(_require(entry, "channels", where, list))
    for i, channel in enumerate(channels):
        if channel not in CHANNELS:
            raise CatalogueError(f"{where}.channels[{i}]: unknown channel {channel!r} (one of {', '.join(CHANNELS)})")
    if not channels:
        raise CatalogueError(f"{where}.channels: at least one channel")
    rules = entry.get("eligibility", {}) or {}
    if not isinstance(rules, dict):
        raise CatalogueError(f"{where}.eligibility: expected an object")
    unknown_rules = set(rules) - set(Eligibility.__dataclass_fields__)
    if unknown_rules:
        raise CatalogueError(f"{where}.eligibility: unknown rule(s) {sorted(unknown_rules)}")
    if rules.get("min_tier", "none") not in TIERS:
        raise CatalogueError(f"{where}.eligibility.min_tier: unknown tier {rules['min_tier']!r}")
    eligibility = Eligibility(**{k: tuple(v) if isinstance(v, list) else v for k, v in rules.items()})
    base = float(_require(entry, "base_propensity", where, (int, float)))
    if not 0.0 <= base <= 1.0:
        raise CatalogueError(f"{where}.base_propensity: must be within [0, 1], got {base}")
    lever = float(entry.get("lever", 1.0))
    if lever < 0:
        raise CatalogueError(f"{where}.lever: must not be negative, got {lever}")
    offer_id = _require(entry, "id", where, str)
    offer = Offer(
        id=offer_id,
        name=_require(entry, "name", where, str),
        type=offer_type,
        channels=channels,
        marketing=bool(entry.get("marketing", offer_type != "service_action")),
        value=float(_require(entry, "value", where, (int, float))),
        lever=lever,
        base_propensity=base,
        discount_pct=float(entry.get("discount_pct", 0.0)),
        product_id=entry.get("product_id"),
        skus=_parse_skus(entry.get("skus", []), f"{where}.skus"),
        valid_from=_parse_time(entry.get("valid_from"), f"{where}.valid_from"),
        valid_to=_parse_time(entry.get("valid_to"), f"{where}.valid_to"),
        eligibility=eligibility,
        script=str(entry.get("script", "")),
        rules=_parse_rules(entry.get("rules", []), where, offer_id),
        allow_same_type=_flag(entry, "allow_same_type", where),
        placements=_parse_placements(entry.get("placements", []), f"{where}.placements"),
        contact=_parse_contact(entry.get("contact_policy"), f"{where}.contact_policy"),
        budget=_parse_budget(entry.get("budget"), f"{where}.budget"),
        scarcity=_parse_scarcity(entry.get("scarcity"), f"{where}.scarcity"),
    )
    if offer.scarcity is not None and offer.product_id is None:
        raise CatalogueError(f"{where}.scarcity: needs the offer's product_id (stock is counted per product)")
    return offer


def _flag(entry: dict, key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise CatalogueError(f"{where}.{key}: expected true or false, got {value!r}")
    return value


def _parse_rules(doc: object, where: str, offer_id: str) -> tuple[Rule, ...]:
    """`[{"id", "stage", "when", "why"?}]`, compiled now; returned in stage order (then catalogue order)."""
    if not isinstance(doc, list):
        raise CatalogueError(f"{where}.rules: expected a list")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(doc):
        at = f"{where}.rules[{i}]"
        if not isinstance(item, dict):
            raise CatalogueError(f"{at}: expected an object")
        unknown = set(item) - {"id", "stage", "when", "why"}
        if unknown:
            raise CatalogueError(f"{at}: unknown key(s) {sorted(unknown)}")
        rule_id = _require(item, "id", at, str)
        if rule_id in seen:
            raise CatalogueError(f"{at}.id: duplicate rule {rule_id!r} in offer {offer_id!r}")
        seen.add(rule_id)
        stage = item.get("stage", "eligibility")
        if stage not in STAGES:
            raise CatalogueError(f"{at}.stage: unknown stage {stage!r} (one of {', '.join(STAGES)})")
        expression = _require(item, "when", at, str)
        try:
            rules.append(compile_rule(rule_id, stage, expression, str(item.get("why", ""))))
        except RuleError as exc:
            raise CatalogueError(f"{at}.when: offer {offer_id!r} rule {rule_id!r}: {exc}") from None
    return tuple(sorted(rules, key=lambda r: STAGES.index(r.stage)))


def _positive(doc: dict, key: str, where: str, kind: type) -> int | float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or kind is int and not isinstance(value, int):
        raise CatalogueError(f"{where}.{key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if value < (1 if kind is int else 0) or value != value:
        raise CatalogueError(f"{where}.{key}: must be {'at least 1' if kind is int else 'positive'}, got {value!r}")
    return kind(value)


def _parse_contact(doc: object, where: str) -> ContactPolicy | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise CatalogueError(f"{where}: expected an object")
    unknown = set(doc) - set(ContactPolicy.__dataclass_fields__)
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s) {sorted(unknown)}")
    return ContactPolicy(
        max_per_day=_positive(doc, "max_per_day", where, int),
        max_per_week=_positive(doc, "max_per_week", where, int),
        decline_cooldown_days=_positive(doc, "decline_cooldown_days", where, float),
        max_ignores=_positive(doc, "max_ignores", where, int),
    )


def _parse_budget(doc: object, where: str) -> BudgetCap | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise CatalogueError(f"{where}: expected an object")
    unknown = set(doc) - set(BudgetCap.__dataclass_fields__)
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s) {sorted(unknown)}")
    cap = BudgetCap(_positive(doc, "max_accepts", where, int), _positive(doc, "max_spend", where, float))
    if cap.max_accepts is None and cap.max_spend is None:
        raise CatalogueError(f"{where}: set max_accepts and/or max_spend")
    return cap


def _parse_scarcity(doc: object, where: str) -> Scarcity | None:
    """`{"below_units", "min_value_percentile", "value_percentiles": {"80": 1200, ...}, "loyal_tiers"?}`."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise CatalogueError(f"{where}: expected an object")
    unknown = set(doc) - set(Scarcity.__dataclass_fields__)
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s) {sorted(unknown)}")
    below_units = _positive(doc, "below_units", where, int)
    if below_units is None:
        raise CatalogueError(f"{where}.below_units: required")
    minimum = doc.get("min_value_percentile")
    if isinstance(minimum, bool) or not isinstance(minimum, (int, float)) or not 0 < minimum <= 100:
        raise CatalogueError(f"{where}.min_value_percentile: expected a number in (0, 100], got {minimum!r}")
    table = doc.get("value_percentiles")
    if not isinstance(table, dict) or not table:
        raise CatalogueError(f"{where}.value_percentiles: expected an object percentile -> net value")
    percentiles: list[tuple[float, float]] = []
    for key, value in table.items():
        try:
            percentile = float(key)
        except ValueError:
            raise CatalogueError(f"{where}.value_percentiles[{key!r}]: not a percentile") from None
        if not 0 < percentile <= 100:
            raise CatalogueError(f"{where}.value_percentiles[{key!r}]: percentile must be in (0, 100]")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CatalogueError(f"{where}.value_percentiles[{key!r}]: expected a net value, got {value!r}")
        percentiles.append((percentile, float(value)))
    percentiles.sort()
    for (low, low_value), (high, high_value) in zip(percentiles, percentiles[1:], strict=False):
        if high_value < low_value:
            raise CatalogueError(
                f"{where}.value_percentiles: net value must not fall as the percentile rises ({low:g} -> {high:g})"
            )
    if percentiles[-1][0] < minimum:
        raise CatalogueError(
            f"{where}.value_percentiles: no listed percentile reaches min_value_percentile {minimum:g}"
        )
    tiers = doc.get("loyal_tiers", ["gold", "platinum"])
    if not isinstance(tiers, list) or any(t not in TIERS for t in tiers):
        raise CatalogueError(f"{where}.loyal_tiers: expected a list of tiers ({', '.join(TIERS)}), got {tiers!r}")
    return Scarcity(below_units, float(minimum), tuple(percentiles), tuple(tiers))


def parse_catalogue(offers_doc: object, products_doc: object) -> Catalogue:
    """Validate both documents and build the catalogue; the version combines the operator's label and a digest."""
    if not isinstance(offers_doc, dict) or not isinstance(offers_doc.get("offers"), list):
        raise CatalogueError("offers.json: expected an object with an 'offers' list")
    if not isinstance(products_doc, dict) or not isinstance(products_doc.get("products"), list):
        raise CatalogueError("products.json: expected an object with a 'products' list")
    products: dict[str, Product] = {}
    product_of_sku: dict[str, str] = {}
    for i, entry in enumerate(products_doc["products"]):
        where = f"products[{i}]"
        pid = _require(entry, "product_id", where, str)
        if pid in products:
            raise CatalogueError(f"{where}.product_id: duplicate {pid!r}")
        variants = []
        for j, v in enumerate(_require(entry, "variants", where, list)):
            sku = _require(v, "sku", f"{where}.variants[{j}]", str)
            if sku in product_of_sku:
                raise CatalogueError(f"{where}.variants[{j}].sku: duplicate {sku!r}")
            product_of_sku[sku] = pid
            variants.append(Variant(sku, str(v.get("size", "")), str(v.get("colour", ""))))
        products[pid] = Product(
            product_id=pid,
            name=_require(entry, "name", where, str),
            category=str(entry.get("category", "")),
            brand=str(entry.get("brand", "")),
            price=float(_require(entry, "price", where, (int, float))),
            variants=tuple(variants),
        )
    offers: list[Offer] = []
    seen: set[str] = set()
    for i, entry in enumerate(offers_doc["offers"]):
        offer = parse_offer(entry, f"offers[{i}]")
        if offer.id in seen:
            raise CatalogueError(f"offers[{i}].id: duplicate {offer.id!r}")
        if offer.product_id is not None and offer.product_id not in products:
            raise CatalogueError(f"offers[{i}].product_id: unknown product {offer.product_id!r}")
        if offer.skus and offer.product_id is None:
            raise CatalogueError(f"offers[{i}].skus: needs the offer's product_id (the variants are the product's)")
        for sku in sorted(offer.skus):
            if product_of_sku.get(sku) != offer.product_id:
                raise CatalogueError(f"offers[{i}].skus: {sku!r} is not a variant of product {offer.product_id!r}")
        seen.add(offer.id)
        offers.append(offer)
    digest = hashlib.sha256(orjson.dumps([offers_doc, products_doc], option=orjson.OPT_SORT_KEYS)).hexdigest()[:8]
    label = str(offers_doc.get("version", "unversioned"))
    return Catalogue(f"{label}+{digest}", tuple(offers), products, product_of_sku)


def load_catalogue(folder: Path) -> Catalogue:
    """Read and validate `offers.json` and `products.json` from the catalogue folder."""
    docs = []
    for name in CATALOGUE_FILES:
        path = folder / name
        try:
            docs.append(orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            raise CatalogueError(f"{path}: missing (run `nextbest demo seed` or write the catalogue)") from None
        except orjson.JSONDecodeError as exc:
            raise CatalogueError(f"{path}: not valid JSON: {exc}") from None
    return parse_catalogue(docs[0], docs[1])
