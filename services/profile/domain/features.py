"""The customer feature vector the scoring models are trained on.

The names and their meaning are FIXED: a trained model depends on them. Add new features at the end and never
rename or redefine one. Every value is a float.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from services.profile.domain.state import ProfileState, Traits

#: Days since last purchase for a customer who never bought (a large value rather than -1, so that trees see
#: "never" as "very long ago").
NEVER_PURCHASED_DAYS = 9999.0
#: How far back the browsing features look.
BROWSING_WINDOW = timedelta(days=7)

FEATURE_NAMES: tuple[str, ...] = (
    "total_spend",
    "order_count",
    "average_order_value",
    "days_since_last_purchase",
    "return_rate",
    "return_count",
    "recent_returns",
    "return_share_store",
    "return_share_mail",
    "return_share_courier",
    "full_price_share",
    "shipping_paid_share",
    "loyalty_tier",
    "loyalty_points",
    "open_service_issues",
    "service_contacts",
    "net_value",
    "cart_value",
    "cart_items",
    "viewed_skus_7d",
    "max_dwell_seconds_7d",
    "offer_accepts",
    "offer_declines",
    "offer_impressions",
    "tenure_days",
)


#: Numeric traits a batch job may read beside the features (ListFeatures), e.g. the lifetime-value model's
#: spend windows. They are not in FEATURE_NAMES: the online vector stays what the served models were trained on.
TRAIT_COLUMNS: tuple[str, ...] = (
    "spend_30d",
    "spend_90d",
    "spend_365d",
    "orders_30d",
    "orders_90d",
    "orders_365d",
    "return_rate_by_count",
    "purchase_intent",
    "purchase_frequency",
    "net_spend_30d",
    "net_spend_90d",
    "net_spend_365d",
)
#: Every name ListFeatures answers: the features, then the trait columns.
COLUMN_NAMES: tuple[str, ...] = FEATURE_NAMES + TRAIT_COLUMNS


def compute_columns(state: ProfileState, now: datetime) -> dict[str, float]:
    """The features and the trait columns of one customer as of `now`, in COLUMN_NAMES order (traits read once)."""
    traits = state.traits(now)
    columns = compute_features(state, now, traits)
    columns.update((name, float(getattr(traits, name))) for name in TRAIT_COLUMNS)
    return columns


def compute_features(state: ProfileState, now: datetime, traits: Traits | None = None) -> dict[str, float]:
    """The named features of one customer as of `now`, in FEATURE_NAMES order (`traits`: the state's traits as of
    `now`, when the caller already has them).

    cart_items counts units (not lines); the browsing features look at last_viewed entries viewed within
    BROWSING_WINDOW; tenure_days counts whole days since the customer's earliest event. Model traits (batch
    predictions) are deliberately not features: a model must not learn from another model's output by accident.
    """
    traits = traits or state.traits(now)
    recent_views = [view for view in traits.last_viewed if view.viewed_at >= now - BROWSING_WINDOW]
    mix = traits.return_method_mix
    days_since = traits.days_since_last_purchase
    tenure = max(0, (now - state.first_seen_at).days) if state.first_seen_at else 0
    return {
        "total_spend": float(traits.total_spend),
        "order_count": float(traits.order_count),
        "average_order_value": float(traits.average_order_value),
        "days_since_last_purchase": NEVER_PURCHASED_DAYS if days_since < 0 else float(days_since),
        "return_rate": float(traits.return_rate),
        "return_count": float(traits.return_count),
        "recent_returns": float(traits.recent_returns),
        "return_share_store": mix.get("store", 0.0),
        "return_share_mail": mix.get("mail", 0.0),
        "return_share_courier": mix.get("courier", 0.0),
        "full_price_share": float(traits.full_price_share),
        "shipping_paid_share": float(traits.shipping_paid_share),
        "loyalty_tier": float(traits.loyalty_tier),
        "loyalty_points": float(traits.loyalty_points),
        "open_service_issues": float(traits.open_service_issues),
        "service_contacts": float(traits.service_contacts),
        "net_value": float(traits.net_value),
        "cart_value": float(sum(line.quantity * line.unit_price for line in traits.cart)),
        "cart_items": float(sum(line.quantity for line in traits.cart)),
        "viewed_skus_7d": float(len({view.sku for view in recent_views})),
        "max_dwell_seconds_7d": float(max((view.dwell_seconds for view in recent_views), default=0.0)),
        "offer_accepts": float(state.offer_responses.get("accept", 0)),
        "offer_declines": float(state.offer_responses.get("decline", 0)),
        "offer_impressions": float(state.offer_responses.get("impression", 0)),
        "tenure_days": float(tenure),
    }
