"""The DecisionService gRPC servicer: protobuf -> domain input -> DecisionService -> protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import grpc
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb
from nextbest.decision.v1 import decision_service_pb2_grpc as pb_grpc

from libs.clients import Budget
from libs.errors import InvalidArgument
from libs.protoconv import from_timestamp, to_duration, to_timestamp, utcnow
from services.decision.convert import (
    CALL_TIER_NUMBERS,
    CART_ACTION_NUMBERS,
    CHANNEL_NAMES,
    CHANNEL_NUMBERS,
    OFFER_FATE_NUMBERS,
    OFFER_TYPE_NUMBERS,
    OUTCOME_TYPE_NAMES,
    REPORT_DIMENSION_NAMES,
)
from services.decision.domain.model import (
    CartLine,
    Context,
    CustomerRef,
    DecidedOffer,
    DecideInput,
    OutcomeInput,
)
from services.decision.domain.report import (
    DEFAULT_ATTRIBUTION_WINDOW,
    DEFAULT_MIN_SAMPLE,
    Interval,
    ReportQuery,
    ReportRow,
)
from services.decision.orchestrator import DecisionService


def customer_ref(ref: common_pb2.CustomerRef) -> CustomerRef:
    return CustomerRef(ref.customer_id, tuple((i.type, i.value) for i in ref.identifiers))


def decision_context(ctx: pb.DecisionContext) -> Context:
    return Context(
        page=ctx.page,
        sku=ctx.sku,
        dwell_seconds=ctx.dwell.seconds + ctx.dwell.nanos / 1e9,
        cart=tuple(CartLine(line.sku, line.quantity, line.unit_price) for line in ctx.cart),
        store_id=ctx.store_id,
        call_reason=ctx.call_reason,
        placement=ctx.placement,
    )


def ranked_offer(offer: DecidedOffer) -> pb.RankedOffer:
    message = pb.RankedOffer(
        offer_id=offer.offer_id,
        name=offer.name,
        type=OFFER_TYPE_NUMBERS[offer.type],
        rank=offer.rank,
        score=offer.score,
        propensity=offer.propensity,
        value=offer.value,
        lever=offer.lever,
        reason_codes=offer.reason_codes,
        script=offer.script,
        stock=[pb.StockHint(sku=h.sku, location_id=h.location_id, on_hand=h.on_hand) for h in offer.stock],
        probability=offer.probability,
        headline=offer.headline,
    )
    if offer.prefill is not None:
        p = offer.prefill
        message.prefill.CopyFrom(
            pb.CartPrefill(
                sku=p.sku,
                quantity=p.quantity,
                size=p.size,
                colour=p.colour,
                shipping_method=p.shipping_method,
                action=CART_ACTION_NUMBERS[p.action],
                units_left=p.units_left,
            )
        )
        if p.hold_seconds:
            message.prefill.hold.CopyFrom(to_duration(timedelta(seconds=p.hold_seconds)))
    return message


def _time(request: pb.GetReportRequest | pb.RecordOutcomeRequest, field: str) -> datetime | None:
    if not request.HasField(field):
        return None
    try:
        return from_timestamp(getattr(request, field))
    except (ValueError, OverflowError) as exc:  # seconds beyond what a datetime holds
        raise InvalidArgument(field, "not a valid timestamp") from exc


def report_query(request: pb.GetReportRequest, default_window: timedelta = DEFAULT_ATTRIBUTION_WINDOW) -> ReportQuery:
    start = _time(request, "start_time")
    if start is None:
        raise InvalidArgument("start_time", "required")
    window = _duration(request, "attribution_window")  # a zero one is set, not unset: validation rejects it
    return ReportQuery(
        start=start,
        end=_time(request, "end_time") or utcnow(),
        group_by=tuple(REPORT_DIMENSION_NAMES.get(d, "unknown") for d in request.group_by),
        channel=CHANNEL_NAMES.get(request.channel, "unknown") if request.channel else "",
        offer_id=request.offer_id,
        min_sample=request.min_sample or DEFAULT_MIN_SAMPLE,
        bucket_width=_bucket_width(request),
        attribution_window=default_window if window is None else window,
    )


def _bucket_width(request: pb.GetReportRequest) -> timedelta | None:
    return _duration(request, "bucket_width")


def _duration(request: pb.GetReportRequest, field: str) -> timedelta | None:
    if not request.HasField(field):
        return None
    try:
        return getattr(request, field).ToTimedelta()
    except OverflowError as exc:  # seconds beyond what a timedelta holds
        raise InvalidArgument(field, "not a valid duration") from exc


def estimate(interval: Interval) -> pb.Estimate:
    value, low, high = interval
    return pb.Estimate(value=value, low=low, high=high)


def report_row(row: ReportRow) -> pb.ReportRow:
    key = dict(row.key)
    message = pb.ReportRow(
        key=pb.ReportKey(
            offer_id=key.get("offer", ""),
            channel=CHANNEL_NUMBERS.get(key.get("channel", ""), 0),
            segment=key.get("segment", ""),
            model_version=key.get("model_version", ""),
            arm=key.get("arm", ""),
            catalogue_version=key.get("catalogue_version", ""),
        ),
        decisions=row.units,
        customers=row.customers,
        impressions=row.impressions,
        clicks=row.clicks,
        accepts=row.accepts,
        purchases=row.purchases,
        acceptance_rate=estimate(row.acceptance_rate),
        revenue=row.revenue,
        revenue_per_decision=estimate(row.revenue_per_decision),
        below_min_sample=row.below_min_sample,
        degraded=row.degraded,
    )
    if row.bucket_start is not None:
        message.key.bucket_start.CopyFrom(to_timestamp(row.bucket_start))
    if row.latency is not None:
        latency = row.latency
        message.latency.CopyFrom(
            pb.LatencyPercentiles(
                measured=latency.measured, p50_ms=latency.p50_ms, p95_ms=latency.p95_ms, p99_ms=latency.p99_ms
            )
        )
    if row.uplift is not None:
        u = row.uplift
        message.uplift.CopyFrom(
            pb.Uplift(
                treatment_decisions=u.treatment_units,
                control_decisions=u.control_units,
                acceptance=estimate(u.acceptance),
                revenue_per_decision=estimate(u.revenue_per_decision),
            )
        )
    return message


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    def __init__(self, service: DecisionService, default_budgets: Mapping[str, float]) -> None:
        self._service = service
        self._budgets = default_budgets
        self._fallback_budget = min(default_budgets.values())

    def _budget(self, context: grpc.aio.ServicerContext, channel: str) -> Budget:
        return Budget.from_context(context, self._budgets.get(channel, self._fallback_budget))

    async def Decide(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        channel = CHANNEL_NAMES.get(request.channel, "unknown")
        decision = await self._service.decide(
            DecideInput(channel, customer_ref(request.customer), decision_context(request.context), request.max_offers),
            self._budget(context, channel),
        )
        return pb.DecideResponse(
            decision_id=decision.decision_id,
            customer_id=decision.customer_id,
            offers=[ranked_offer(o) for o in decision.offers],
            degraded=decision.degraded,
            degraded_reasons=decision.degraded_reasons,
            catalogue_version=decision.catalogue_version,
            model_version=decision.model_version,
            decided_at=to_timestamp(decision.decided_at),
            no_offer=not decision.offers,
            no_offer_reason=decision.no_offer_reason,
            arm=decision.arm,
        )

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> pb.ExplainResponse:
        found = await self._service.explain(request.decision_id)
        return pb.ExplainResponse(
            decision_id=found.decision_id,
            customer_id=found.customer_id,
            channel=CHANNEL_NUMBERS.get(found.channel, 0),
            decided_at=to_timestamp(found.decided_at),
            catalogue_version=found.catalogue_version,
            model_version=found.model_version,
            degraded_reasons=found.degraded_reasons,
            considered=[
                pb.ConsideredOffer(
                    offer_id=c.offer_id,
                    fate=OFFER_FATE_NUMBERS[c.fate],
                    removed_by=c.removed_by,
                    stage=c.stage,
                    why=c.why,
                    propensity=c.propensity,
                    propensity_source=c.propensity_source,
                    value=c.value,
                    lever=c.lever,
                    context_weight=c.context_weight,
                    factors=c.factors,
                    score=c.score,
                    rank=c.rank,
                    probability=c.probability,
                    value_factor=c.value_factor,
                    value_factor_source=c.value_factor_source,
                )
                for c in found.considered
            ],
            min_priority=found.min_priority,
            no_offer_reason=found.no_offer_reason,
            arm=found.arm,
        )

    async def GetReport(self, request: pb.GetReportRequest, context: grpc.aio.ServicerContext) -> pb.GetReportResponse:
        query = report_query(request, self._service.policy.attribution_window)
        rows = await self._service.report(query)
        return pb.GetReportResponse(
            rows=[report_row(row) for row in rows],
            start_time=to_timestamp(query.start),
            end_time=to_timestamp(query.end),
            min_sample=query.min_sample,
            attribution_window=to_duration(query.attribution_window),
        )

    async def RecordOutcome(
        self, request: pb.RecordOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOutcomeResponse:
        duplicate = await self._service.record_outcome(
            OutcomeInput(
                outcome_id=request.outcome_id,
                decision_id=request.decision_id,
                offer_id=request.offer_id,
                type=OUTCOME_TYPE_NAMES.get(request.type, "unknown"),
                occurred_at=_time(request, "occurred_at"),  # out of range: INVALID_ARGUMENT naming it
                revenue=request.revenue,
            )
        )
        return pb.RecordOutcomeResponse(duplicate=duplicate)

    async def PrioritizeCall(
        self, request: pb.PrioritizeCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrioritizeCallResponse:
        answer = await self._service.prioritize_call(
            customer_ref(request.customer), request.call_reason, self._budget(context, "call_center")
        )
        decision = answer.decision
        response = pb.PrioritizeCallResponse(
            decision_id=decision.decision_id,
            customer_id=decision.customer_id,
            priority=answer.priority.priority,
            tier=CALL_TIER_NUMBERS[answer.priority.tier],
            reasons=answer.priority.reasons,
            degraded=decision.degraded,
            degraded_reasons=decision.degraded_reasons,
            avoid=answer.avoid,
        )
        if decision.offers:
            response.next_best_action.CopyFrom(ranked_offer(decision.offers[0]))
        return response
