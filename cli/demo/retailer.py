"""The demo retailer: a deterministic synthetic fashion retailer (catalogue, stores, stock, offers, customers).

Pure and seeded: `generate(customers, seed, now)` always returns the same retailer for the same arguments, and
`Retailer.events(customer)` always returns the same history for a customer (each customer has its own random
stream derived from the seed and its index, so histories can be generated lazily, in any order, in any process).

`now` anchors time: histories cover the ~6 months before it and seasonal offers are valid around it. The seeder
passes the current day; tests pass a fixed instant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

import phonenumbers
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from nextbest.common.v1 import common_pb2
from nextbest.profile.v1 import profile_service_pb2 as ppb

HISTORY_DAYS = 182
FREE_SHIPPING_THRESHOLD = 100.0
SHIPPING_FEES = (4.95, 5.95, 7.95)

# --------------------------------------------------------------------------------------------------- catalogue

#: category -> (number of products, sizes, price range, product nouns)
CATEGORIES: dict[str, tuple[int, tuple[str, ...], tuple[float, float], tuple[str, ...]]] = {
    "shoes": (18, ("6", "7", "8", "9", "10", "11", "12"), (59.0, 179.0),
              ("Sneaker", "Runner", "Chelsea Boot", "Loafer", "Ankle Boot", "Sandal", "Court Shoe")),
    "tops": (18, ("XS", "S", "M", "L", "XL"), (15.0, 59.0),
             ("Crew Tee", "Oxford Shirt", "Linen Shirt", "Polo", "Tank Top", "Henley", "Blouse")),
    "jeans": (14, ("28", "30", "32", "34", "36"), (49.0, 139.0),
              ("Slim Jeans", "Straight Jeans", "Wide-Leg Jeans", "Bootcut Jeans", "Mom Jeans", "Skinny Jeans")),
    "dresses": (12, ("XS", "S", "M", "L"), (39.0, 159.0),
                ("Wrap Dress", "Midi Dress", "Slip Dress", "Shirt Dress", "Maxi Dress", "Knit Dress")),
    "outerwear": (12, ("S", "M", "L", "XL"), (89.0, 319.0),
                  ("Trench Coat", "Puffer Jacket", "Denim Jacket", "Wool Coat", "Parka", "Rain Jacket")),
    "knitwear": (10, ("XS", "S", "M", "L", "XL"), (39.0, 119.0),
                 ("Crewneck Sweater", "Cardigan", "Turtleneck", "Cable Knit", "Hoodie")),
    "accessories": (16, ("ONE",), (15.0, 89.0),
                    ("Leather Belt", "Wool Scarf", "Beanie", "Tote Bag", "Crossbody Bag", "Sunglasses",
                     "Cap", "Gloves")),
}
COLOURS: dict[str, str] = {
    "black": "BLK", "white": "WHT", "navy": "NVY", "grey": "GRY", "beige": "BEI", "brown": "BRN",
    "red": "RED", "green": "GRN", "blue": "BLU", "pink": "PNK",
}
BRANDS = ("Northwind", "Atelier Nova", "Urban Thread", "Bluecoast", "Maison Lark", "Trailhead", "Copper & Co",
          "Sundial")
ADJECTIVES = ("Classic", "Essential", "Relaxed", "Tailored", "Vintage", "Everyday", "Premium", "Organic", "Studio",
              "Weekend", "Heritage", "Soft")
#: Number of scarce, much-wanted products (tiny stock everywhere).
VIRAL_PRODUCTS = 3


@dataclass(frozen=True)
class Location:
    location_id: str
    name: str
    kind: str  # "store" | "warehouse"


LOCATIONS: tuple[Location, ...] = (
    Location("S1", "Store 1 — Downtown", "store"),
    Location("S2", "Store 2 — Riverside Mall", "store"),
    Location("S3", "Store 3 — Airport", "store"),
    Location("S4", "Store 4 — Uptown", "store"),
    Location("S5", "Store 5 — Harbour Outlet", "store"),
    Location("DC1", "Distribution Centre 1", "warehouse"),
)
STORE_IDS = tuple(loc.location_id for loc in LOCATIONS if loc.kind == "store")
WAREHOUSE_ID = "DC1"


@dataclass(frozen=True)
class DemoVariant:
    sku: str
    size: str
    colour: str


@dataclass(frozen=True)
class DemoProduct:
    product_id: str
    name: str
    category: str
    brand: str
    price: float
    variants: tuple[DemoVariant, ...]
    viral: bool = False

    def as_json(self) -> dict:
        """The products.json entry (services.decision.catalogue format)."""
        return {
            "product_id": self.product_id,
            "name": self.name,
            "category": self.category,
            "brand": self.brand,
            "price": self.price,
            "variants": [{"sku": v.sku, "size": v.size, "colour": v.colour} for v in self.variants],
        }


@dataclass(frozen=True)
class StockRow:
    """One line of the inventory import CSV."""

    sku: str
    product_id: str
    size: str
    colour: str
    location_id: str
    location_kind: str
    on_hand: int


STOCK_CSV_HEADER = ("sku", "product_id", "size", "colour", "location_id", "location_kind", "on_hand")

# --------------------------------------------------------------------------------------------------- customers


@dataclass(frozen=True)
class Persona:
    """How a kind of customer behaves; every number is a probability or a range used by the history generator."""

    weight: float
    sessions: tuple[int, int]
    #: Share of sessions that end in a purchase.
    purchase_rate: float
    #: Chance that a bought line was on discount.
    discount_affinity: float
    #: Chance that an order is (partly) returned.
    return_rate: float
    #: Chance of paying a fee on a shipped order below the free-shipping threshold (shipping payers: on any order).
    pays_shipping: float
    #: Share of purchases made in a store.
    store_share: float
    tiers: tuple[int, ...]
    #: Active part of the history window, as fractions of HISTORY_DAYS (0 = oldest, 1 = now).
    window: tuple[float, float]
    service_contacts: tuple[int, int]
    mean_dwell: float
    return_methods: tuple[float, float, float]  # store, mail, courier


T_NONE, T_BRONZE, T_SILVER, T_GOLD, T_PLATINUM = range(5)
PERSONAS: dict[str, Persona] = {
    "loyal_high_value": Persona(0.12, (7, 11), 0.45, 0.15, 0.08, 0.05, 0.5, (T_GOLD, T_GOLD, T_PLATINUM),
                                (0.0, 1.0), (0, 1), 70.0, (0.6, 0.3, 0.1)),
    "bargain_hunter": Persona(0.20, (6, 9), 0.3, 0.85, 0.12, 0.35, 0.25, (T_NONE, T_BRONZE, T_SILVER),
                              (0.0, 1.0), (0, 1), 35.0, (0.3, 0.6, 0.1)),
    "serial_returner": Persona(0.08, (6, 9), 0.45, 0.4, 0.65, 0.4, 0.2, (T_BRONZE, T_SILVER),
                               (0.0, 1.0), (1, 3), 40.0, (0.2, 0.5, 0.3)),
    "new": Persona(0.15, (2, 4), 0.3, 0.5, 0.1, 0.5, 0.3, (T_NONE, T_NONE, T_BRONZE),
                   (0.84, 1.0), (0, 1), 45.0, (0.4, 0.5, 0.1)),
    "lapsed": Persona(0.13, (4, 7), 0.3, 0.4, 0.15, 0.5, 0.3, (T_BRONZE, T_SILVER),
                      (0.0, 0.45), (0, 1), 30.0, (0.4, 0.5, 0.1)),
    "shipping_payer": Persona(0.12, (6, 9), 0.35, 0.2, 0.1, 0.97, 0.05, (T_NONE, T_BRONZE, T_SILVER, T_GOLD),
                              (0.0, 1.0), (0, 1), 45.0, (0.1, 0.7, 0.2)),
    "regular": Persona(0.20, (5, 8), 0.3, 0.4, 0.15, 0.5, 0.35, (T_NONE, T_BRONZE, T_SILVER),
                       (0.0, 1.0), (0, 1), 40.0, (0.4, 0.5, 0.1)),
}
#: The offer whose product the web showcase customer is looking at.
WEB_SHOWCASE_OFFER = "WEB-SHOES-15"
#: The first customers are a fixed cast so the showcase exists at any scale.
CAST = ("loyal_high_value", "shipping_payer", "serial_returner", "new", "bargain_hunter")

FIRST_NAMES = ("James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth",
               "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Chris", "Karen",
               "Daniel", "Lisa", "Matthew", "Nancy", "Anthony", "Sandra", "Mark", "Ashley", "Steven", "Emily",
               "Paul", "Donna", "Andrew", "Michelle", "Joshua", "Carol", "Kevin", "Amanda", "Brian", "Melissa",
               "Olivia", "Noah", "Emma", "Liam", "Sophia", "Mason", "Ava", "Lucas", "Mia", "Ethan", "Zoe", "Leo")
LAST_NAMES = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
              "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore",
              "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez",
              "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen",
              "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell")
#: Real US area codes; the rest of the number is drawn and checked with phonenumbers.
AREA_CODES = (212, 213, 206, 214, 303, 305, 312, 404, 415, 480, 503, 512, 617, 619, 646, 702, 704, 713, 718, 919)
SHIPPING_METHODS = ("standard", "express", "click_and_collect")
RETURN_REASONS = ("size", "fit", "changed_mind", "colour", "damaged", "not_as_described")
CONTACT_REASONS = ("order_status", "delivery_issue", "return", "complaint", "product_question", "loyalty")
CONSENT_PURPOSES = ("marketing", "personalization", "analytics")
CONSENT_CHANNELS = ("web", "email", "pos", "call_center")


@dataclass(frozen=True)
class ConsentGrant:
    purpose: str  # one of CONSENT_PURPOSES
    channel: str  # one of CONSENT_CHANNELS
    granted: bool
    source: str


@dataclass(frozen=True)
class DemoCustomer:
    index: int
    persona: str
    first_name: str
    last_name: str
    email: str
    phone: str | None
    loyalty_card: str | None
    account_id: str | None
    cookie_id: str
    device_id: str | None
    home_store: str
    #: Loyalty tier 0 (none) .. 4 (platinum); card holders are at least bronze.
    tier: int
    sizes: tuple[str, ...]
    colours: tuple[str, ...]
    shipping_method: str
    consents: tuple[ConsentGrant, ...]
    joined_at: datetime

    def identifiers(self) -> list[common_pb2.Identifier]:
        """Every identifier the customer is known by, strongest first."""
        kinds = (
            (common_pb2.IDENTIFIER_TYPE_ACCOUNT_ID, self.account_id),
            (common_pb2.IDENTIFIER_TYPE_LOYALTY_CARD, self.loyalty_card),
            (common_pb2.IDENTIFIER_TYPE_EMAIL, self.email),
            (common_pb2.IDENTIFIER_TYPE_PHONE, self.phone),
            (common_pb2.IDENTIFIER_TYPE_DEVICE_ID, self.device_id),
            (common_pb2.IDENTIFIER_TYPE_COOKIE_ID, self.cookie_id),
        )
        return [common_pb2.Identifier(type=kind, value=value) for kind, value in kinds if value]


# --------------------------------------------------------------------------------------------------- retailer


@dataclass(frozen=True)
class Retailer:
    seed: int
    now: datetime
    products: tuple[DemoProduct, ...]
    stock: tuple[StockRow, ...]
    offers: tuple[dict, ...]
    customers: tuple[DemoCustomer, ...]
    catalogue_label: str

    def products_doc(self) -> dict:
        return {"products": [p.as_json() for p in self.products]}

    def offers_doc(self) -> dict:
        return {"version": self.catalogue_label, "offers": list(self.offers)}

    def stock_at(self, location_id: str) -> dict[str, int]:
        return {row.sku: row.on_hand for row in self.stock if row.location_id == location_id}

    def events(self, customer: DemoCustomer) -> list[ppb.Event]:
        """The customer's history in event-time order, ids `demo-{index}-{n}`, customer_id left for the seeder."""
        return _History(self, customer).build()

    def showcase(self) -> dict:
        """Customers and situations that demonstrate each channel (identifiers only; ids are assigned by identity)."""
        web, pos, call = (self.customers[i] for i in (1, 0, 2))
        return {
            "web": {"email": web.email, "page": "product", "sku": self.showcase_web_sku(), "dwell_seconds": 95},
            "pos": {"loyalty_card": pos.loyalty_card, "store_id": "S1", "sku": self.showcase_sku("S1")},
            "call_center": {"phone": call.phone, "call_reason": "complaint"},
            "loyal_customer_index": 0,
            "new_customer_index": 3,
        }

    def showcase_web_sku(self) -> str:
        """The shoe the web showcase customer looked at long and put in the cart: the product of the web shoe
        discount, in stock at the warehouse, in the customer's size when there is one."""
        product_id = next(o["product_id"] for o in self.offers if o["id"] == WEB_SHOWCASE_OFFER)
        product = next(p for p in self.products if p.product_id == product_id)
        warehouse = self.stock_at(WAREHOUSE_ID)
        in_stock = [v for v in product.variants if warehouse[v.sku] > 0] or list(product.variants)
        return next((v for v in in_stock if v.size in self.customers[1].sizes), in_stock[0]).sku

    def showcase_sku(self, store_id: str) -> str:
        """A popular SKU that is sold out at `store_id` but in stock at another store and at the warehouse."""
        by_location: dict[str, dict[str, int]] = {loc.location_id: self.stock_at(loc.location_id) for loc in LOCATIONS}
        for product in self.products:
            if product.viral or product.category == "accessories":
                continue
            for variant in product.variants:
                stock = {loc: by_location[loc][variant.sku] for loc in by_location}
                elsewhere = any(stock[s] > 0 for s in STORE_IDS if s != store_id)
                if stock[store_id] == 0 and elsewhere and stock[WAREHOUSE_ID] > 0:
                    return variant.sku
        raise ValueError(f"no SKU is sold out at {store_id} only")

    @cached_property
    def by_category(self) -> dict[str, tuple[DemoProduct, ...]]:
        return {c: tuple(p for p in self.products if p.category == c) for c in CATEGORIES}


def generate(customers: int = 10_000, seed: int = 42, now: datetime | None = None) -> Retailer:
    """The whole retailer for this seed; histories are produced on demand by `Retailer.events`."""
    if now is None or now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime (the end of the generated history)")
    if customers < len(CAST):
        raise ValueError(f"at least {len(CAST)} customers are needed for the showcase")
    rng = random.Random(f"retailer:{seed}")
    products = _products(rng)
    stock = _stock(rng, products)
    offers, stock = _offers(rng, products, stock, now)
    people = tuple(_customer(seed, i, now) for i in range(customers))
    return Retailer(seed, now, products, stock, offers, people, f"demo-seed{seed}-{now:%Y%m%d}")


def _price(rng: random.Random, low: float, high: float) -> float:
    """A shelf price such as 49.99 or 129.95."""
    return round(int(rng.uniform(low, high)) + (0.99 if rng.random() < 0.7 else 0.95), 2)


def _products(rng: random.Random) -> tuple[DemoProduct, ...]:
    products: list[DemoProduct] = []
    for category, (count, sizes, (low, high), nouns) in CATEGORIES.items():
        for _ in range(count):
            number = len(products) + 1
            pid = f"P{number:04d}"
            colours = rng.sample(list(COLOURS), rng.choice((1, 2, 2, 3)))
            if len(sizes) == 1:
                chosen_sizes = list(sizes)
            else:
                start = rng.randrange(0, max(1, len(sizes) - 3))
                chosen_sizes = list(sizes[start:start + rng.choice((2, 3, 3, 3, 4))])
            variants = tuple(
                DemoVariant(f"{pid}-{COLOURS[colour]}-{size}", size, colour)
                for colour in colours
                for size in chosen_sizes
            )
            name = f"{rng.choice(BRANDS)} {rng.choice(ADJECTIVES)} {rng.choice(nouns)}"
            products.append(DemoProduct(pid, name, category, _brand_of(name), _price(rng, low, high), variants))
    # A few much-wanted items from the apparel ranges become "viral": tiny stock everywhere.
    apparel = [i for i, p in enumerate(products) if p.category in ("shoes", "outerwear", "dresses")]
    for i in rng.sample(apparel, VIRAL_PRODUCTS):
        p = products[i]
        products[i] = DemoProduct(p.product_id, p.name.replace(p.brand, f"{p.brand} Limited", 1), p.category,
                                  p.brand, p.price, p.variants, viral=True)
    return tuple(products)


def _brand_of(name: str) -> str:
    return next(b for b in BRANDS if name.startswith(b))


def _stock(rng: random.Random, products: tuple[DemoProduct, ...]) -> tuple[StockRow, ...]:
    rows: list[StockRow] = []
    for product in products:
        # Some colours of a product sell out at a store all at once (the colour is "gone" there).
        for variant in product.variants:
            for loc in LOCATIONS:
                if product.viral:
                    on_hand = rng.choice((0, 0, 0, 1, 2)) if loc.kind == "store" else rng.choice((0, 1, 3))
                elif loc.kind == "warehouse":
                    on_hand = 0 if rng.random() < 0.06 else rng.randint(15, 220)
                else:
                    on_hand = 0 if rng.random() < 0.22 else rng.randint(1, 14)
                rows.append(StockRow(variant.sku, product.product_id, variant.size, variant.colour,
                                     loc.location_id, loc.kind, on_hand))
    return tuple(rows)


# --------------------------------------------------------------------------------------------------- offers

# (id, name, type, channels, discount_pct, value, lever, base_propensity, product selector, eligibility, script)
# product selector: None, a category ("shoes"), "viral", or "preorder:<category>" (a product whose warehouse
# stock is sold out in some variants).
_OFFER_TEMPLATES: tuple[tuple, ...] = (
    ("WEB-WELCOME-10", "10% off your first order", "discount", ("web",), 10, 8.0, 1.0, 0.06, None,
     {"pages": ["home", "product"]}, ""),
    ("WEB-SHOES-15", "15% off this pair", "discount", ("web",), 15, 14.0, 1.0, 0.07, "shoes",
     {"pages": ["product", "category"]}, ""),
    ("WEB-DENIM-20", "20% off these jeans", "discount", ("web",), 20, 12.0, 1.0, 0.08, "jeans",
     {"pages": ["product", "category"]}, ""),
    ("WEB-DRESS-15", "15% off this dress", "discount", ("web",), 15, 13.0, 1.0, 0.06, "dresses",
     {"pages": ["product"]}, ""),
    ("WEB-CART-10", "Save 10% on your basket today", "discount", ("web",), 10, 9.0, 1.0, 0.09, None,
     {"pages": ["cart", "checkout"], "requires_cart": True}, ""),
    ("WEB-KNIT-25", "25% off knitwear this week", "discount", ("web",), 25, 10.0, 0.9, 0.07, "knitwear",
     {"pages": ["product", "category", "home"]}, ""),
    ("WEB-FREESHIP-CART", "Free shipping on this order", "free_shipping", ("web",), 0, 6.0, 1.0, 0.1, None,
     {"pages": ["cart", "checkout"], "requires_cart": True, "min_shipping_paid_share": 0.5}, ""),
    ("WEB-FREESHIP-PDP", "Free shipping when you buy today", "free_shipping", ("web",), 0, 5.0, 1.0, 0.06, None,
     {"pages": ["product"], "min_shipping_paid_share": 0.3}, ""),
    ("WEB-EARLY-ACCESS", "Gold members: early access to the new collection", "loyalty_perk", ("web",), 0, 11.0,
     1.1, 0.08, None, {"min_tier": "gold", "pages": ["home", "category"]}, ""),
    ("WEB-DOUBLE-POINTS", "Double points on today's order", "loyalty_perk", ("web",), 0, 7.0, 1.0, 0.07, None,
     {"min_tier": "bronze", "requires_cart": True}, ""),
    ("WEB-JOIN-CLUB", "Join the club: 500 welcome points", "loyalty_perk", ("web",), 0, 4.0, 0.8, 0.04, None,
     {"pages": ["home", "checkout"]}, ""),
    ("WEB-PREORDER-VIRAL", "Pre-order: be first when it is back", "pre_order", ("web",), 0, 30.0, 1.2, 0.05,
     "viral", {"pages": ["product"]}, ""),
    ("WEB-PREORDER-SHOES", "Pre-order your size", "pre_order", ("web",), 0, 22.0, 1.0, 0.04, "preorder:shoes",
     {"pages": ["product"]}, ""),
    ("WEB-XSELL-BELT", "Complete the look", "cross_sell", ("web",), 0, 12.0, 1.0, 0.05,
     "accessories", {"requires_cart": True}, ""),
    ("WEB-XSELL-SCARF", "Add a finishing touch", "cross_sell", ("web",), 0, 10.0, 1.0, 0.04, "accessories",
     {"pages": ["cart", "product"]}, ""),
    ("WEB-XSELL-TEE", "Pair it with a top", "cross_sell", ("web",), 0, 9.0, 1.0, 0.05, "tops",
     {"pages": ["product", "cart"]}, ""),
    ("WEB-FIT-ADVISOR", "Not sure about the size? Ask our fit advisor", "service_action", ("web",), 0, 3.0, 1.0,
     0.12, None, {"pages": ["product"]}, ""),
    ("WEB-ORDER-TRACKING", "Track your order in one click", "service_action", ("web",), 0, 1.0, 0.8, 0.15, None,
     {"pages": ["home", "account"], "min_orders": 1}, ""),
    ("POS-SHIP-TO-HOME", "Free ship-to-home from our warehouse", "free_shipping", ("pos",), 0, 9.0, 1.2, 0.12, None,
     {}, "We can ship it to your home for free from our warehouse; it arrives in 2-3 days."),
    ("POS-MEMBER-10", "Member 10% off today", "discount", ("pos",), 10, 8.0, 1.0, 0.1, None,
     {"min_tier": "silver"}, "As a member you get 10% off everything you buy today."),
    ("POS-OUTERWEAR-20", "20% off this coat", "discount", ("pos",), 20, 25.0, 1.0, 0.06, "outerwear",
     {}, "This coat is 20% off for you today."),
    ("POS-SIGNUP", "Join the loyalty club at the till", "loyalty_perk", ("pos",), 0, 5.0, 0.9, 0.08, None,
     {}, "Join our loyalty club now and earn points on today's purchase."),
    ("POS-VIP-STYLING", "Free personal styling session", "loyalty_perk", ("pos",), 0, 18.0, 1.1, 0.07, None,
     {"min_tier": "gold"}, "As a Gold member you can book a free personal styling session."),
    ("POS-PREORDER", "Reserve it now, collect when it arrives", "pre_order", ("pos",), 0, 28.0, 1.1, 0.06,
     "preorder:outerwear", {}, "It is coming back soon: I can reserve your size and we will call you."),
    ("POS-XSELL-BAG", "A matching accessory at the till", "cross_sell", ("pos",), 0, 15.0, 1.0, 0.05, "accessories",
     {"requires_cart": True}, "This goes perfectly with what you picked; shall I add it?"),
    ("POS-XSELL-KNIT", "A knit to go with it", "cross_sell", ("pos",), 0, 14.0, 1.0, 0.05, "knitwear",
     {}, "Customers who buy this often add this knit; would you like to try it on?"),
    ("POS-ALTERATION", "Free alterations today", "service_action", ("pos",), 0, 4.0, 1.0, 0.14, None,
     {"min_orders": 1}, "We can hem or adjust it for free while you wait."),
    ("CC-APOLOGY-15", "15% apology voucher", "discount", ("call_center",), 15, 6.0, 1.2, 0.2, None,
     {"call_reasons": ["complaint", "delivery_issue"]}, "I'm sorry for the trouble; here is 15% off your next order."),
    ("CC-WINBACK-20", "20% to come back", "discount", ("call_center",), 20, 10.0, 1.0, 0.07, None,
     {"call_reasons": ["cancel", "order_status"], "min_orders": 1},
     "As a thank-you for staying with us, your next order is 20% off."),
    ("CC-FREESHIP-NEXT", "Free shipping on your next three orders", "free_shipping", ("call_center",), 0, 7.0,
     1.0, 0.12, None, {"min_shipping_paid_share": 0.5}, "Your next three orders ship free, no minimum."),
    ("CC-EXPRESS-RESHIP", "Express re-shipment at our cost", "service_action", ("call_center",), 0, 2.0, 1.3,
     0.35, None, {"call_reasons": ["delivery_issue", "order_status"]},
     "I'll re-send your order by express delivery at our cost right now."),
    ("CC-RETURN-PICKUP", "Free courier pick-up for your return", "service_action", ("call_center",), 0, 2.0, 1.1,
     0.3, None, {"call_reasons": ["return", "complaint"]},
     "A courier can pick the parcel up tomorrow, free of charge."),
    ("CC-TIER-BOOST", "Points boost to the next tier", "loyalty_perk", ("call_center",), 0, 9.0, 1.0, 0.15, None,
     {"min_tier": "silver", "call_reasons": ["loyalty", "complaint"]},
     "I've added bonus points; you are now close to the next tier."),
    ("CC-PREORDER", "Pre-order the sold-out item", "pre_order", ("call_center",), 0, 20.0, 1.0, 0.05,
     "preorder:shoes", {"call_reasons": ["product_question", "order_status"]},
     "It is sold out in your size, but I can pre-order it and it ships as soon as it is back."),
    ("CC-XSELL-ADDON", "An add-on for your next order", "cross_sell", ("call_center",), 0, 6.0, 0.9, 0.04,
     "accessories", {"min_orders": 1}, "Customers with orders like yours love this; I can add it to your next one."),
    ("OMNI-SEASON-SALE", "End-of-season sale: 30% off", "discount", ("web", "pos"), 30, 9.0, 1.0, 0.1, None,
     {"min_orders": 1}, "Everything from last season is 30% off today."),
    ("OMNI-LOYALTY-BONUS", "250 bonus points", "loyalty_perk", ("web", "pos", "call_center"), 0, 6.0, 1.0, 0.09,
     None, {"min_tier": "bronze"}, "I've added 250 bonus points to your card."),
    ("OMNI-PLATINUM-GIFT", "A gift for our Platinum members", "loyalty_perk", ("web", "pos", "call_center"), 0, 15.0,
     1.2, 0.12, None, {"min_tier": "platinum", "min_total_spend": 500.0},
     "As one of our Platinum members, please accept this gift with our thanks."),
    ("OMNI-VIRAL-BUYNOW", "Buy now: reserved for our best customers", "pre_order", ("web", "pos", "call_center"), 0,
     35.0, 1.3, 0.1, "viral", {}, "We've held one back for you: shall I reserve it now?"),
    ("OMNI-FREESHIP-WEEKEND", "Free shipping this weekend", "free_shipping", ("web", "call_center"), 0, 4.0, 0.9,
     0.08, None, {"min_shipping_paid_share": 0.2}, "This weekend all orders ship free."),
    ("OMNI-CALLBACK", "Priority call-back from a stylist", "service_action", ("pos", "call_center"), 0, 3.0, 1.0,
     0.2, None, {"max_return_rate": 0.4}, "A stylist will call you back today to help you choose."),
)


_NO_UPSELL_DURING_COMPLAINT = {
    "id": "no_open_complaint", "stage": "suitability", "when": "!('open_issue' in customer.segments)",
    "why": "do not upsell while the customer has an open service issue",
}
#: CEL rules (services/decision/domain/rules.py) added to the templates' offers, by offer id.
_OFFER_RULES: dict[str, list[dict]] = {
    "WEB-WELCOME-10": [{"id": "first_order", "stage": "eligibility", "when": "customer.order_count == 0",
                        "why": "the welcome discount is for a customer's first order"}],
    "WEB-EARLY-ACCESS": [{"id": "gold_or_better", "stage": "eligibility", "when": "customer.tier_rank >= 3",
                          "why": "early access is a Gold and Platinum perk"}],
    "WEB-XSELL-BELT": [{"id": "few_returns", "stage": "suitability", "when": "customer.return_rate <= 0.5",
                        "why": "cross-selling to frequent returners adds returns, not margin"},
                       _NO_UPSELL_DURING_COMPLAINT],
    "WEB-XSELL-SCARF": [_NO_UPSELL_DURING_COMPLAINT],
    "WEB-XSELL-TEE": [_NO_UPSELL_DURING_COMPLAINT],
    "POS-OUTERWEAR-20": [{"id": "spent_200", "stage": "eligibility", "when": "customer.total_spend >= 200.0",
                          "why": "the coat discount rewards customers who spent 200 or more"}],
    "POS-XSELL-BAG": [_NO_UPSELL_DURING_COMPLAINT],
    "POS-XSELL-KNIT": [_NO_UPSELL_DURING_COMPLAINT],
    "CC-XSELL-ADDON": [_NO_UPSELL_DURING_COMPLAINT,
                       {"id": "not_a_complaint_call", "stage": "applicability",
                        "when": "!(request.call_reason in ['complaint', 'cancel'])",
                        "why": "no add-on sale on a complaint or cancellation call"}],
    "OMNI-VIRAL-BUYNOW": [{"id": "loyal_first", "stage": "eligibility", "when": "'loyal' in customer.segments",
                           "why": "the scarce item is held back for loyal (Gold/Platinum) customers"}],
    "OMNI-FREESHIP-WEEKEND": [{"id": "weekend", "stage": "applicability", "when": "request.weekday >= 5",
                               "why": "the weekend offer runs Friday to Sunday"}],
}
#: Offers that may share the answer with another offer of their type (diversity): the service helpers.
_SAME_TYPE_ALLOWED = frozenset({"WEB-FIT-ADVISOR", "WEB-ORDER-TRACKING", "POS-ALTERATION", "OMNI-CALLBACK",
                                "CC-EXPRESS-RESHIP", "CC-RETURN-PICKUP"})

#: Offers with a validity window around `now`.
SEASONAL_OFFERS = frozenset({"OMNI-SEASON-SALE", "WEB-KNIT-25"})


def _offers(rng: random.Random, products: tuple[DemoProduct, ...], stock: tuple[StockRow, ...],
            now: datetime) -> tuple[tuple[dict, ...], tuple[StockRow, ...]]:
    """offers.json entries, and the stock after pre-order products have been sold out at the warehouse."""
    stock_by_key = {(r.sku, r.location_id): r for r in stock}
    offers: list[dict] = []
    used: set[str] = set()
    for oid, name, otype, channels, pct, value, lever, base, selector, rules, script in _OFFER_TEMPLATES:
        entry: dict = {
            "id": oid, "name": name, "type": otype, "channels": list(channels), "value": value, "lever": lever,
            "base_propensity": base,
        }
        if pct:
            entry["discount_pct"] = float(pct)
        if selector is not None:
            product = _pick_product(rng, products, selector, used)
            used.add(product.product_id)
            entry["product_id"] = product.product_id
            entry["name"] = f"{name} — {product.name}"
            if selector.startswith("preorder:"):
                _sell_out_at_warehouse(rng, product, stock_by_key)
        if rules:
            entry["eligibility"] = dict(rules)
        if script:
            entry["script"] = script
        if oid in _OFFER_RULES:
            entry["rules"] = [dict(rule) for rule in _OFFER_RULES[oid]]
        if oid in _SAME_TYPE_ALLOWED:
            entry["allow_same_type"] = True
        if oid in SEASONAL_OFFERS:
            entry["valid_from"] = (now - timedelta(days=30)).isoformat()
            entry["valid_to"] = (now + timedelta(days=90)).isoformat()
        offers.append(entry)
    return tuple(offers), tuple(stock_by_key[(r.sku, r.location_id)] for r in stock)



def _pick_product(rng: random.Random, products: tuple[DemoProduct, ...], selector: str,
                  used: set[str]) -> DemoProduct:
    if selector == "viral":
        pool = [p for p in products if p.viral]
    else:
        category = selector.removeprefix("preorder:")
        pool = [p for p in products if p.category == category and not p.viral and len(p.variants) > 1]
    fresh = [p for p in pool if p.product_id not in used]
    return rng.choice(fresh or pool)


def _sell_out_at_warehouse(rng: random.Random, product: DemoProduct, stock: dict[tuple[str, str], StockRow]) -> None:
    """Sell out every other variant at the warehouse and at most stores: pre-order territory."""
    for variant in product.variants[::2]:
        for loc in LOCATIONS:
            if loc.kind == "warehouse" or rng.random() < 0.8:
                row = stock[(variant.sku, loc.location_id)]
                stock[(variant.sku, loc.location_id)] = StockRow(
                    row.sku, row.product_id, row.size, row.colour, row.location_id, row.location_kind, 0
                )


# --------------------------------------------------------------------------------------------------- people

#: Multiplier of a bijection on [0, 8,000,000) (odd, not a multiple of 5): spreads customer indices over
#: exchange/line numbers so every customer gets a distinct, random-looking phone number.
_PHONE_MULTIPLIER = 7_368_787
_PHONE_SPACE = 800 * 10_000
_PERSONA_NAMES = tuple(PERSONAS)
_PERSONA_WEIGHTS = tuple(p.weight for p in PERSONAS.values())
LETTER_SIZES = ("XS", "S", "M", "L", "XL")


def _phone(rng: random.Random, index: int) -> str | None:
    x = (index * _PHONE_MULTIPLIER + 1_234_567) % _PHONE_SPACE
    exchange, line = 200 + x // 10_000, x % 10_000
    for area in rng.sample(AREA_CODES, len(AREA_CODES)):
        number = f"+1{area}{exchange}{line:04d}"
        if phonenumbers.is_valid_number(phonenumbers.parse(number)):
            return number
    return None


def _customer(seed: int, index: int, now: datetime) -> DemoCustomer:
    rng = random.Random(f"customer:{seed}:{index}")
    cast = index < len(CAST)
    persona_name = CAST[index] if cast else rng.choices(_PERSONA_NAMES, _PERSONA_WEIGHTS)[0]
    persona = PERSONAS[persona_name]
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    tier = rng.choice(persona.tiers)
    if index == 0:
        tier = T_PLATINUM
    has_card = cast or tier > T_NONE or rng.random() < 0.25
    letter = rng.choice(LETTER_SIZES[1:4])
    sizes = (letter, rng.choice(CATEGORIES["jeans"][1][1:4]), rng.choice(CATEGORIES["shoes"][1][1:6]))
    colours = tuple(rng.sample(list(COLOURS), 2))
    if persona_name == "shipping_payer":
        shipping = "express" if rng.random() < 0.7 else "standard"
    else:
        shipping = rng.choice(SHIPPING_METHODS)
    joined = now - timedelta(days=HISTORY_DAYS * (1 - persona.window[0]))
    return DemoCustomer(
        index=index,
        persona=persona_name,
        first_name=first,
        last_name=last,
        email=f"{first}.{last}{index}@example.com".lower(),
        phone=_phone(rng, index) if cast or rng.random() < 0.85 else None,
        loyalty_card=f"LC{index + 1:08d}" if has_card else None,
        account_id=f"AC{index + 1:07d}" if cast or rng.random() < 0.8 else None,
        cookie_id=f"ck-{rng.getrandbits(64):016x}",
        device_id=f"dev-{rng.getrandbits(48):012x}" if rng.random() < 0.35 else None,
        home_store="S1" if index == 0 else rng.choice(STORE_IDS),
        tier=max(tier, T_BRONZE) if has_card else T_NONE,
        sizes=sizes,
        colours=colours,
        shipping_method=shipping,
        consents=_consents(rng, cast, has_card, joined),
        joined_at=joined,
    )


def _consents(rng: random.Random, cast: bool, has_card: bool, joined: datetime) -> tuple[ConsentGrant, ...]:
    """Most customers allow marketing on web and e-mail; a realistic minority says no; fewer opt in elsewhere."""
    grants = []
    web_yes = cast or rng.random() < 0.85
    for channel in ("web", "email"):
        grants.append(ConsentGrant("marketing", channel, web_yes and (channel == "web" or rng.random() < 0.9 or cast),
                                   "web-signup"))
    grants.append(ConsentGrant("personalization", "web", cast or rng.random() < 0.9, "web-signup"))
    grants.append(ConsentGrant("analytics", "web", cast or rng.random() < 0.8, "web-signup"))
    if has_card:
        grants.append(ConsentGrant("marketing", "pos", cast or rng.random() < 0.7, "pos"))
    if cast or rng.random() < 0.4:
        grants.append(ConsentGrant("marketing", "call_center", cast or rng.random() < 0.75, "call-centre"))
    return tuple(grants)


# --------------------------------------------------------------------------------------------------- histories

_TIERS = (ppb.LOYALTY_TIER_UNSPECIFIED, ppb.LOYALTY_TIER_BRONZE, ppb.LOYALTY_TIER_SILVER, ppb.LOYALTY_TIER_GOLD,
          ppb.LOYALTY_TIER_PLATINUM)
_RETURN_METHODS = (ppb.RETURN_METHOD_STORE, ppb.RETURN_METHOD_MAIL, ppb.RETURN_METHOD_COURIER)
_DAY = 86_400


class _History:
    """Builds one customer's events; times are epoch seconds, sorted at the end (stable) before ids are given."""

    def __init__(self, retailer: Retailer, customer: DemoCustomer) -> None:
        self.retailer = retailer
        self.customer = customer
        self.persona = PERSONAS[customer.persona]
        self.rng = random.Random(f"history:{retailer.seed}:{customer.index}")
        self.now = int(retailer.now.timestamp())
        self.items: list[tuple[int, str, str, object]] = []  # (time, source, payload field, payload)
        self.orders = 0
        self.points = 0

    def add(self, t: int, source: str, kind: str, payload: object) -> None:
        self.items.append((t, source, kind, payload))

    def build(self) -> list[ppb.Event]:
        c, p, rng = self.customer, self.persona, self.rng
        start = int(c.joined_at.timestamp())
        end = self.now - int(HISTORY_DAYS * _DAY * (1 - p.window[1])) - 3_600
        if c.account_id:
            self.add(start, "web", "preference_update", ppb.PreferenceUpdate(
                sizes=list(c.sizes), colours=list(c.colours), shipping_method=c.shipping_method))
        sessions = sorted(rng.randint(start + 60, end) for _ in range(rng.randint(*p.sessions)))
        if c.loyalty_card:
            self.loyalty(start, end, sessions)
        for t in sessions:
            if rng.random() < p.store_share:
                self.store_visit(t)
            else:
                self.web_session(t)
        for _ in range(rng.randint(*p.service_contacts)):
            reason = rng.choice(CONTACT_REASONS)
            self.add(rng.randint(start + 60, end), "call_center", "service_contact",
                     ppb.ServiceContact(reason=reason, resolved=rng.random() < 0.75))
        self.cast_extras(end)
        self.items.sort(key=lambda item: item[0])
        events = []
        for n, (t, source, kind, payload) in enumerate(self.items):
            event = ppb.Event(event_id=f"demo-{c.index}-{n}", occurred_at=Timestamp(seconds=t), source=source)
            getattr(event, kind).CopyFrom(payload)
            events.append(event)
        return events

    def loyalty(self, start: int, end: int, sessions: list[int]) -> None:
        """Welcome points and the starting tier; half of the silver-and-above members earned their tier later."""
        tier = self.customer.tier
        upgraded = tier >= T_SILVER and self.rng.random() < 0.5
        self.add(start, "loyalty", "loyalty_change",
                 ppb.LoyaltyChange(points_delta=100, tier=_TIERS[tier - 1 if upgraded else tier]))
        self.points = 100
        if upgraded:
            when = self.rng.choice(sessions) + 5 if sessions else end
            self.add(when, "loyalty", "loyalty_change", ppb.LoyaltyChange(tier=_TIERS[tier]))

    # -- sessions -------------------------------------------------------------------------------------------

    def pick_variant(self, category: str | None = None) -> tuple[DemoProduct, DemoVariant]:
        """A product (of `category`, else of a category drawn by range size), in the customer's size and often
        their colour when the product has them."""
        rng, c = self.rng, self.customer
        if category is None:
            category = rng.choice(_CATEGORY_CHOICES)
        product = rng.choice(self.retailer.by_category[category])
        variants = [v for v in product.variants if v.size in c.sizes or v.size == "ONE"] or list(product.variants)
        liked = [v for v in variants if v.colour in c.colours]
        return product, rng.choice(liked if liked and rng.random() < 0.6 else variants)

    def line(self, product: DemoProduct, variant: DemoVariant) -> ppb.OrderLine:
        price = product.price
        if self.rng.random() < self.persona.discount_affinity:
            price = round(price * (1 - self.rng.choice((0.1, 0.15, 0.2, 0.25, 0.3))), 2)
        quantity = 1 if self.rng.random() < 0.9 else 2
        return ppb.OrderLine(sku=variant.sku, quantity=quantity, unit_price=price, list_price=product.price)

    def web_session(self, t: int) -> None:
        rng, p = self.rng, self.persona
        self.add(t, "web", "page_view", ppb.PageView(page="home"))
        t += rng.randint(5, 40)
        category = rng.choice(_CATEGORY_CHOICES)
        if rng.random() < 0.5:
            self.add(t, "web", "page_view", ppb.PageView(page=f"category/{category}"))
            t += rng.randint(5, 60)
        viewed = []
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            product, variant = self.pick_variant(category if rng.random() < 0.7 else None)
            dwell = min(600, max(2, int(rng.expovariate(1 / p.mean_dwell))))
            self.add(t, "web", "product_view", ppb.ProductView(sku=variant.sku, dwell=Duration(seconds=dwell)))
            viewed.append((product, variant))
            t += dwell + rng.randint(2, 20)
        if rng.random() < p.purchase_rate:
            basket = viewed[: rng.randint(1, len(viewed))]
            lines = [self.line(product, variant) for product, variant in basket]
            for line in lines:
                self.add(t, "web", "cart_change", ppb.CartChange(
                    action=ppb.CART_ACTION_ADD, sku=line.sku, quantity=line.quantity, unit_price=line.unit_price))
                t += rng.randint(5, 30)
            self.purchase(t + rng.randint(30, 300), lines, web=True)
        elif rng.random() < 0.3:
            product, variant = viewed[-1]
            self.add(t, "web", "cart_change", ppb.CartChange(
                action=ppb.CART_ACTION_ADD, sku=variant.sku, quantity=1, unit_price=product.price))
            if rng.random() < 0.5:
                self.add(t + rng.randint(20, 600), "web", "cart_change", ppb.CartChange(
                    action=ppb.CART_ACTION_REMOVE, sku=variant.sku, quantity=1, unit_price=product.price))

    def store_visit(self, t: int) -> None:
        store = self.customer.home_store if self.rng.random() < 0.8 else self.rng.choice(STORE_IDS)
        lines = [self.line(*self.pick_variant()) for _ in range(self.rng.choice((1, 1, 2, 3)))]
        self.purchase(t, lines, web=False, store=store)

    def purchase(self, t: int, lines: list[ppb.OrderLine], *, web: bool, store: str = "") -> None:
        rng, c, p = self.rng, self.customer, self.persona
        self.orders += 1
        order_id = f"O{c.index + 1:07d}-{self.orders:03d}"
        subtotal = sum(line.unit_price * line.quantity for line in lines)
        shipped = web and c.shipping_method != "click_and_collect"
        fee = 0.0
        if shipped:
            # Shipping payers choose paid (often express) delivery even above the free-shipping threshold.
            below_threshold = subtotal < FREE_SHIPPING_THRESHOLD or c.persona == "shipping_payer"
            if below_threshold and c.tier < T_GOLD and rng.random() < p.pays_shipping:
                fee = 9.95 if c.shipping_method == "express" else rng.choice(SHIPPING_FEES)
        if web and not shipped:
            store = c.home_store
        self.add(t, "web" if web else "pos", "purchase", ppb.Purchase(
            order_id=order_id, lines=lines, shipping_fee=fee, shipped=shipped,
            channel=common_pb2.CHANNEL_WEB if web else common_pb2.CHANNEL_POS, store_id=store))
        if web:
            self.add(t + 1, "web", "cart_change", ppb.CartChange(action=ppb.CART_ACTION_CLEAR))
        if c.loyalty_card:
            self.add(t + 2, "loyalty", "loyalty_change", ppb.LoyaltyChange(points_delta=int(subtotal)))
            self.points += int(subtotal)
            if self.points >= 600 and rng.random() < 0.2:
                # Points are redeemed for a voucher now and then.
                self.add(t + 3, "loyalty", "loyalty_change", ppb.LoyaltyChange(points_delta=-500))
                self.points -= 500
        if rng.random() < p.return_rate:
            when = t + rng.randint(3, 25) * _DAY
            if when < self.now:
                self.product_return(when, order_id, lines)

    def product_return(self, t: int, order_id: str, lines: list[ppb.OrderLine]) -> None:
        rng, p = self.rng, self.persona
        returned = rng.sample(lines, rng.randint(1, len(lines)))
        method = rng.choices(_RETURN_METHODS, p.return_methods)[0]
        self.add(t, "pos" if method == ppb.RETURN_METHOD_STORE else "erp", "product_return", ppb.ProductReturn(
            order_id=order_id,
            lines=[ppb.ReturnLine(sku=line.sku, quantity=line.quantity,
                                  refund_amount=round(line.unit_price * line.quantity, 2)) for line in returned],
            method=method,
            reason=rng.choice(RETURN_REASONS),
        ))

    def cast_extras(self, end: int) -> None:
        """Make the showcase situations certain: a waiting cart, an open complaint, a recent store visit."""
        index, rng = self.customer.index, self.rng
        if index == 0:
            self.store_visit(end - 3 * _DAY)
        elif index == 1:
            sku = self.retailer.showcase_web_sku()
            price = next(p.price for p in self.retailer.products if any(v.sku == sku for v in p.variants))
            self.add(end - 600, "web", "product_view", ppb.ProductView(sku=sku, dwell=Duration(seconds=95)))
            self.add(end - 400, "web", "cart_change", ppb.CartChange(
                action=ppb.CART_ACTION_ADD, sku=sku, quantity=1, unit_price=price))
        elif index == 2:
            self.add(end - 2 * _DAY, "call_center", "service_contact",
                     ppb.ServiceContact(reason="complaint", resolved=False))
        elif index == 3 and self.orders == 0:
            self.web_session(end - rng.randint(2, 10) * _DAY)


_CATEGORY_CHOICES = tuple(c for c, spec in CATEGORIES.items() for _ in range(spec[0]))

