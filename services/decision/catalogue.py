"""The offer catalogue: a versioned folder the operator edits (offers.json + products.json), validated on load.

Pure domain code (no gRPC, no SQL). A malformed catalogue raises `CatalogueError` naming the exact entry and
field, e.g. `offers[3].type: unknown offer type 'coupon'`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson

OFFER_TYPES = ("discount", "free_shipping", "loyalty_perk", "pre_order", "cross_sell", "service_action")
CHANNELS = ("web", "pos", "call_center")
TIERS = ("none", "bronze", "silver", "gold", "platinum")


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
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    eligibility: Eligibility = field(default_factory=Eligibility)
    #: What the associate or agent says (POS, call centre).
    script: str = ""


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

    def offer(self, offer_id: str) -> Offer | None:
        return next((o for o in self.offers if o.id == offer_id), None)


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
    offer = Offer(
        id=_require(entry, "id", where, str),
        name=_require(entry, "name", where, str),
        type=offer_type,
        channels=channels,
        marketing=bool(entry.get("marketing", offer_type != "service_action")),
        value=float(_require(entry, "value", where, (int, float))),
        lever=lever,
        base_propensity=base,
        discount_pct=float(entry.get("discount_pct", 0.0)),
        product_id=entry.get("product_id"),
        valid_from=_parse_time(entry.get("valid_from"), f"{where}.valid_from"),
        valid_to=_parse_time(entry.get("valid_to"), f"{where}.valid_to"),
        eligibility=eligibility,
        script=str(entry.get("script", "")),
    )
    return offer


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
        seen.add(offer.id)
        offers.append(offer)
    digest = hashlib.sha256(orjson.dumps([offers_doc, products_doc], option=orjson.OPT_SORT_KEYS)).hexdigest()[:8]
    label = str(offers_doc.get("version", "unversioned"))
    return Catalogue(f"{label}+{digest}", tuple(offers), products, product_of_sku)


def load_catalogue(folder: Path) -> Catalogue:
    """Read and validate `offers.json` and `products.json` from the catalogue folder."""
    docs = []
    for name in ("offers.json", "products.json"):
        path = folder / name
        try:
            docs.append(orjson.loads(path.read_bytes()))
        except FileNotFoundError:
            raise CatalogueError(f"{path}: missing (run `nextbest demo seed` or write the catalogue)") from None
        except orjson.JSONDecodeError as exc:
            raise CatalogueError(f"{path}: not valid JSON: {exc}") from None
    return parse_catalogue(docs[0], docs[1])
