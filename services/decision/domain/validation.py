"""Request validation: every rejection names the request field exactly as the contract spells it."""

from __future__ import annotations

from datetime import timedelta

from libs.errors import InvalidArgument
from services.decision.catalogue import CHANNELS, PLACEMENT_NAME
from services.decision.domain.model import OUTCOME_TYPES, CustomerRef, DecideInput, OutcomeInput
from services.decision.domain.report import DIMENSIONS, MIN_BUCKET, ReportQuery

MAX_OFFERS_LIMIT = 20
MAX_ID_LENGTH = 128
#: A report's window holds at most this many time buckets (a chart's worth; bounds the rows one request returns).
MAX_BUCKETS = 2000


def validate_customer(ref: CustomerRef, field: str = "customer") -> None:
    if not ref.customer_id and not ref.identifiers:
        raise InvalidArgument(field, "a customer_id or at least one identifier is required")
    if len(ref.customer_id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"{field}.customer_id", f"at most {MAX_ID_LENGTH} characters")


def validate_decide(request: DecideInput) -> None:
    if request.channel not in CHANNELS:
        raise InvalidArgument("channel", f"must be one of web, pos, call_center (got {request.channel})")
    validate_customer(request.customer)
    if not 0 <= request.max_offers <= MAX_OFFERS_LIMIT:
        raise InvalidArgument("max_offers", f"must be within [0, {MAX_OFFERS_LIMIT}]")
    if request.channel == "pos" and not request.context.store_id:
        raise InvalidArgument("context.store_id", "required for the POS channel")
    placement = request.context.placement
    if placement and not PLACEMENT_NAME.fullmatch(placement):
        raise InvalidArgument("context.placement", "lower-case letters, digits, '_' or '-', at most 64 characters")


def validate_outcome(outcome: OutcomeInput) -> None:
    for name in ("outcome_id", "decision_id", "offer_id"):
        value = getattr(outcome, name)
        if not value:
            raise InvalidArgument(name, "required")
        if len(value) > MAX_ID_LENGTH:
            raise InvalidArgument(name, f"at most {MAX_ID_LENGTH} characters")
    if outcome.type not in OUTCOME_TYPES:
        raise InvalidArgument("type", "must be one of IMPRESSION, CLICK, ACCEPT, DECLINE, PURCHASE")
    if not outcome.revenue >= 0:  # also rejects NaN
        raise InvalidArgument("revenue", "must not be negative")


def validate_report(query: ReportQuery) -> None:
    """Unknown dimensions arrive as "unknown" from the servicer; the window is already resolved to datetimes."""
    if query.start >= query.end:
        raise InvalidArgument("end_time", "must be after start_time")
    for index, dimension in enumerate(query.group_by):
        if dimension not in DIMENSIONS:
            raise InvalidArgument(f"group_by[{index}]", "unknown dimension")
        if dimension in query.group_by[:index]:
            raise InvalidArgument(f"group_by[{index}]", f"{dimension} is already grouped by")
    if query.channel and query.channel not in CHANNELS:
        raise InvalidArgument("channel", f"must be one of web, pos, call_center (got {query.channel})")
    if len(query.offer_id) > MAX_ID_LENGTH:
        raise InvalidArgument("offer_id", f"at most {MAX_ID_LENGTH} characters")
    if query.min_sample < 0:
        raise InvalidArgument("min_sample", "must not be negative")
    if query.attribution_window <= timedelta(0):
        raise InvalidArgument("attribution_window", "must be positive")
    if (width := query.bucket_width) is not None:
        if width < MIN_BUCKET or width.microseconds:
            raise InvalidArgument("bucket_width", "must be a whole number of seconds, at least 60")
        if (query.end - query.start) / width > MAX_BUCKETS:
            raise InvalidArgument("bucket_width", f"too narrow: the window would hold more than {MAX_BUCKETS} buckets")
