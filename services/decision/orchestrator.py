"""The I/O side of Decide: resolve -> profile + consent -> screen -> scoring + inventory -> conclude -> persist.

Every dependency call gets a deadline carved from the request's budget; a dependency that fails or is slow
becomes a degraded reason and a documented fallback, never an error for the client (the one exception is the
client's own malformed identifier). The decision is persisted before the answer leaves.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Tracer

from libs.clients import Budget
from libs.customer_cache import CustomerCache
from libs.db import as_utc
from libs.errors import FailedPrecondition, InvalidArgument, NextBestError, NotFound, ResourceExhausted
from libs.protoconv import utcnow
from libs.telemetry import tracer
from services.decision.catalogue import BudgetCap, Catalogue
from services.decision.domain import contact
from services.decision.domain.agent import avoid_lines, call_removals
from services.decision.domain.arbitration import ArbitrationPolicy
from services.decision.domain.eligibility import screen, without
from services.decision.domain.experience import DEFAULT_BUY_NOW_HOLD
from services.decision.domain.experiment import TREATMENT, TREATMENT_B, arm_of, strategy_arm
from services.decision.domain.explain import Explanation, explanation
from services.decision.domain.lineage import ERASED_NOTE, is_pseudonym
from services.decision.domain.model import (
    ANONYMOUS,
    CallDecision,
    Context,
    CustomerRef,
    CustomerView,
    DecideInput,
    Decision,
    OutcomeInput,
    StockLevel,
    StockView,
    Traits,
)
from services.decision.domain.pipeline import Conclusion, Scores, conclude, request_context
from services.decision.domain.priority import call_priority
from services.decision.domain.report import DEFAULT_ATTRIBUTION_WINDOW, ReportQuery, ReportRow, report_rows
from services.decision.domain.returns import DEFAULT_RETURNED_WITHIN, recently_returned
from services.decision.domain.stock import products_to_check
from services.decision.domain.validation import (
    validate_customer,
    validate_decide,
    validate_outcome,
    validate_report,
)
from services.decision.features import OFFER_FEATURE_NAMES, offer_feature_values
from services.decision.gateways import DependencyError, Gateways
from services.decision.metrics import DecisionMetrics
from services.decision.stock import StockReader
from services.decision.storage import DecisionRepository

log = logging.getLogger("nextbest.decision")
T = TypeVar("T")

#: The identity stage and the profile stage may each use at most this share of the budget, so one hanging
#: dependency still leaves time for scoring and inventory.
STAGE_SHARE = 0.3
#: The reserve for arbitration and persisting is at most this share of the budget (tiny client deadlines).
RESERVE_SHARE = 0.25
NO_FEATURES: Mapping[str, float] = MappingProxyType({})


class CustomerCaches:
    """What `Decide` reads about a customer, cached: identity's resolutions and consent, profile's profiles.

    Identity's answers change only by events its feed announces, so they stay until changed or evicted; a profile's
    time-relative features drift, so profiles are also re-read after `max_age_seconds`.
    """

    def __init__(self, max_customers: int = 0, max_age_seconds: float = 60.0) -> None:
        self.resolutions: CustomerCache[tuple[tuple[int, str], ...], str | None] = CustomerCache(
            "resolutions", max_customers, None, customer_of=lambda key, customer_id: customer_id
        )
        self.consents: CustomerCache[str, frozenset[tuple[str, str]]] = CustomerCache("consents", max_customers, None)
        # A profile a moment old beats treating a known customer as a stranger when profile cannot answer in time
        # (it is busiest exactly when events pour in); consent is never served stale.
        self.profiles: CustomerCache[str, tuple[Traits, Mapping[str, float]] | None] = CustomerCache(
            "profiles", max_customers, max_age_seconds, keep_last_known=True
        )


@dataclass(frozen=True)
class DecisionPolicy:
    arbitration: ArbitrationPolicy
    warehouse_id: str
    default_max_offers: Mapping[str, int]
    reserve_seconds: float
    #: A shown offer with no response after this long counts as ignored (contact policies).
    ignore_after: timedelta = timedelta(hours=1)
    #: GetReport counts an outcome towards its decision only within this long after it (unless the request says).
    attribution_window: timedelta = DEFAULT_ATTRIBUTION_WINDOW
    #: Share of known customers in the control group, what they get ("random" eligible offer or "none"), and the
    #: salt of the assignment hash.
    control_share: float = 0.0
    control_offer: str = "random"
    control_salt: str = "control-1"
    #: A/B test of arbitration strategies: strategy B's policy (None = no test), the share of treatment customers
    #: it serves, and the salt of that assignment hash.
    strategy_b: ArbitrationPolicy | None = None
    strategy_b_share: float = 0.0
    strategy_salt: str = "strategy-1"
    #: Offers of products / categories the customer returned within this are removed (zero: the filter is off).
    returned_within: timedelta = DEFAULT_RETURNED_WITHIN
    #: How long the web's buy-now express checkout is held for the customer.
    buy_now_hold: timedelta = DEFAULT_BUY_NOW_HOLD

    def strategy(self, customer_id: str) -> tuple[str, ArbitrationPolicy]:
        """The customer's arm and the arbitration policy it runs (control's draw ignores the policy's ranking)."""
        arm = arm_of(customer_id, self.control_share, self.control_salt)
        if arm == TREATMENT and self.strategy_b is not None:
            arm = strategy_arm(customer_id, self.strategy_b_share, self.strategy_salt)
        return arm, self.strategy_b if arm == TREATMENT_B and self.strategy_b is not None else self.arbitration


class _Plan:
    """How one request's budget is spent."""

    def __init__(self, budget: Budget, reserve_seconds: float) -> None:
        total = budget.remaining()
        self.started = time.monotonic()  # for the logged latency
        self.budget = budget
        self.reserve = min(reserve_seconds, RESERVE_SHARE * total)
        self.stage_cap = STAGE_SHARE * total

    def early_timeout(self) -> float:
        """Identity and profile calls: capped, keeping the reserve."""
        return self.budget.timeout(reserve=self.reserve, cap=self.stage_cap)

    def last_timeout(self) -> float:
        """Scoring and inventory: everything left but the reserve."""
        return self.budget.timeout(reserve=self.reserve)


async def _attempt(call: Awaitable[T]) -> tuple[T | None, str | None]:
    """(result, None), or (None, degraded reason) when the dependency failed."""
    try:
        return await call, None
    except DependencyError as exc:
        log.warning("dependency failed: %s", exc, extra={"reason": exc.reason})
        trace.get_current_span().add_event("degraded", {"nextbest.reason": exc.reason})
        return None, exc.reason


async def _skipped() -> tuple[None, None]:
    return None, None


async def _in_span(tracer: Tracer, name: str, call: Awaitable[T], attributes: dict[str, Any]) -> T:
    """Await `call` in its own span, opened inside the task `gather` runs it in, so parallel stages nest under the
    decision and their outbound calls under them."""
    with tracer.start_as_current_span(name, attributes=attributes):
        return await call


def _noting_miss(misses: list[str], cache: str, load: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    """`load`, noting in `misses` that `cache` had to call it (for the stage's span)."""

    def noted() -> Awaitable[T]:
        misses.append(cache)
        return load()

    return noted


def _spent(budget: BudgetCap, accepts: int, spend: float) -> bool:
    return (budget.max_accepts is not None and accepts >= budget.max_accepts) or (
        budget.max_spend is not None and spend >= budget.max_spend
    )


class DecisionService:
    """Decide, PrioritizeCall and RecordOutcome; the catalogue is held in memory (`use_catalogue` on start)."""

    def __init__(
        self,
        gateways: Gateways,
        repository: DecisionRepository,
        policy: DecisionPolicy,
        on_new_outcome: Callable[[], None] = lambda: None,
        caches: CustomerCaches | None = None,
        metrics: DecisionMetrics | None = None,
        stock: StockReader | None = None,
    ) -> None:
        self.gateways = gateways
        self.repository = repository
        self.policy = policy
        self.caches = caches or CustomerCaches()
        self.stock = stock or StockReader(gateways.inventory)
        self.metrics = metrics or DecisionMetrics()
        self._tracer = tracer("nextbest.decision")  # a no-op one unless tracing is active
        self._on_new_outcome = on_new_outcome
        #: The catalogue in use and its contact-history lookback: one reference, swapped whole on reload, so a
        #: decision that took it keeps a consistent pair (see `use_catalogue`).
        self._loaded: tuple[Catalogue, timedelta | None] | None = None
        #: Offers whose budget is spent, as this process last saw the counters (start-up, then every accept it
        #: records). The cap itself is enforced in the database when an accept is recorded, so a stale set can
        #: only show a spent offer a little longer, never let it be accepted beyond its cap.
        self._spent: set[str] = set()
        self._rng = random.Random()  # exploration and control draws (seeded from the OS)

    def use_catalogue(self, catalogue: Catalogue) -> None:
        """Serve `catalogue` from now on (start-up and hot reload): decisions already running keep theirs."""
        self._loaded = (catalogue, contact.lookback(catalogue))

    async def load_budgets(self) -> None:
        """Read the budget counters (start-up, catalogue reload): which offers' budgets are already spent."""
        usage = await self.repository.budget_usage()
        self._spent = {
            offer.id
            for offer in self.catalogue.offers
            if offer.budget is not None and offer.id in usage and _spent(offer.budget, *usage[offer.id])
        }

    @property
    def catalogue(self) -> Catalogue:
        return self._snapshot()[0]

    def _snapshot(self) -> tuple[Catalogue, timedelta | None]:
        """The catalogue and its lookback, read once: a reload mid-decision does not mix two catalogues."""
        if self._loaded is None:
            raise FailedPrecondition("the offer catalogue is not loaded yet")
        return self._loaded

    async def decide(self, request: DecideInput, budget: Budget) -> Decision:
        validate_decide(request)
        plan = _Plan(budget, self.policy.reserve_seconds)
        degraded: list[str] = []
        customer = await self._customer(request.customer, plan, degraded)
        max_offers = request.max_offers or self.policy.default_max_offers[request.channel]
        conclusion, scores = await self._offers(request.channel, request.context, customer, max_offers, plan, degraded)
        summary = {"rpc": "Decide", "max_offers": request.max_offers}
        return await self._persist(
            request.channel, request.customer, request.context, customer, conclusion, scores, degraded, summary,
            plan.started,
        )

    async def prioritize_call(self, ref: CustomerRef, call_reason: str, budget: Budget) -> CallDecision:
        validate_customer(ref)
        plan = _Plan(budget, self.policy.reserve_seconds)
        degraded: list[str] = []
        customer = await self._customer(ref, plan, degraded)
        priority = call_priority(customer, call_reason)
        returned = recently_returned(customer, self.catalogue, utcnow(), self.policy.returned_within)
        avoid = avoid_lines(customer, call_reason, returned)
        ctx = Context(call_reason=call_reason)
        conclusion, scores = await self._offers("call_center", ctx, customer, 1, plan, degraded)
        summary = {"rpc": "PrioritizeCall", "priority": asdict(priority), "avoid": list(avoid)}
        decision = await self._persist(
            "call_center", ref, ctx, customer, conclusion, scores, degraded, summary, plan.started
        )
        return CallDecision(priority, decision, avoid)

    async def record_outcome(self, outcome: OutcomeInput) -> bool:
        """Record an outcome once; True when its id was already recorded (nothing changed)."""
        validate_outcome(outcome)
        found = await self.repository.decision_for_outcome(outcome.decision_id)
        if found is None:
            raise NotFound(f"decision {outcome.decision_id} not found")
        customer_id, channel, offer_ids = found
        if outcome.offer_id not in offer_ids:
            raise InvalidArgument("offer_id", f"decision {outcome.decision_id} did not return offer {outcome.offer_id}")
        now = utcnow()
        # An anonymous visitor has no profile to update, nor has a customer since erased (recorded under the
        # pseudonym, so reports still count it): nothing to forward.
        unforwarded = (
            "anonymous: no profile to update" if not customer_id else ERASED_NOTE if is_pseudonym(customer_id) else None
        )
        row = {
                "outcome_id": outcome.outcome_id,
                "decision_id": outcome.decision_id,
                "offer_id": outcome.offer_id,
                "type": outcome.type,
                "occurred_at": outcome.occurred_at or now,
                "recorded_at": now,
                "revenue": outcome.revenue,
                "customer_id": customer_id,
                "forwarded_at": now if unforwarded else None,
                "forward_note": unforwarded,
            }
        offer = self.catalogue.offer(outcome.offer_id)
        budget = offer.budget if offer is not None else None
        if outcome.type == "accept" and budget is not None:
            status, usage = await self.repository.insert_outcome_within_budget(
                row, budget.max_accepts, budget.max_spend
            )
            if status == "exhausted":
                self._spent.add(outcome.offer_id)
                raise ResourceExhausted(f"offer {outcome.offer_id}: budget spent; the accept was not recorded")
            if usage is not None and _spent(budget, *usage):
                self._spent.add(outcome.offer_id)
            inserted = status == "inserted"
        else:
            inserted = await self.repository.insert_outcome(row)
        if inserted:
            self.metrics.outcome(outcome.offer_id, channel, outcome.type)
        if inserted and not unforwarded:
            self._on_new_outcome()
        return not inserted

    async def explain(self, decision_id: str) -> Explanation:
        """The stored trace of a logged decision (one primary-key read; not on the Decide path)."""
        if not decision_id:
            raise InvalidArgument("decision_id", "required")
        if len(decision_id) > 128:
            raise InvalidArgument("decision_id", "at most 128 characters")
        row = await self.repository.decision(decision_id)
        if row is None:
            raise NotFound(f"decision {decision_id} not found")
        return explanation({**row, "created_at": as_utc(row["created_at"])})

    async def report(self, query: ReportQuery) -> list[ReportRow]:
        """Acceptance, revenue and uplift over control per group (aggregated in SQL; not on the Decide path)."""
        validate_report(query)
        return report_rows(await self.repository.report_totals(query), query.min_sample)

    async def _customer(self, ref: CustomerRef, plan: _Plan, degraded: list[str]) -> CustomerView:
        """Resolve the customer, then read their profile and consent in parallel."""
        customer_id = ref.customer_id
        gateways, caches = self.gateways, self.caches
        if not customer_id:
            key = tuple(sorted(ref.identifiers))
            misses: list[str] = []
            resolve = _noting_miss(
                misses,
                "resolutions",
                lambda: gateways.identity.resolve(ref.identifiers, plan.early_timeout(), field="customer"),
            )
            with self._tracer.start_as_current_span("decision.resolve") as span:
                resolved, failure = await _attempt(caches.resolutions.get(key, resolve))
                span.set_attributes(
                    {
                        "nextbest.identifier_types": [kind for kind, _ in ref.identifiers],
                        "nextbest.resolved": bool(resolved),
                        "nextbest.cache_misses": misses,
                    }
                )
            if failure:
                degraded.append(failure)  # carry on as an anonymous visitor
            customer_id = resolved or ""
        if not customer_id:
            return ANONYMOUS
        timeout = plan.early_timeout()
        misses = []
        read_profile = _noting_miss(misses, "profiles", lambda: gateways.profile.profile(customer_id, timeout))
        read_consents = _noting_miss(misses, "consents", lambda: gateways.identity.consents(customer_id, timeout))
        with self._tracer.start_as_current_span("decision.customer") as span:
            (profile, profile_failure), (consents, consent_failure) = await asyncio.gather(
                _attempt(caches.profiles.get(customer_id, read_profile)),
                _attempt(caches.consents.get(customer_id, read_consents)),
            )
            if profile_failure and (stale := caches.profiles.last_known(customer_id)) is not None:
                profile, profile_failure = stale, "profile_stale"  # still degraded, but still this customer
            span.set_attributes(
                {"nextbest.customer_id": customer_id, "nextbest.known": profile is not None, "nextbest.cache_misses": misses}
            )
        degraded.extend(reason for reason in (profile_failure, consent_failure) if reason)
        traits, features = profile if profile is not None else (Traits(), NO_FEATURES)
        return CustomerView(
            customer_id=customer_id,
            known=profile is not None,
            traits=traits,
            features=features,
            consents=None if consent_failure else consents,
        )

    async def _offers(
        self, channel: str, ctx: Context, customer: CustomerView, max_offers: int, plan: _Plan, degraded: list[str]
    ) -> tuple[Conclusion, Scores | None]:
        """Screen the catalogue, score and check stock in parallel, then conclude (pure)."""
        catalogue, lookback = self._snapshot()
        with self._tracer.start_as_current_span("decision.eligibility") as span:
            screening = screen(catalogue, channel, ctx, customer, utcnow(), self.policy.returned_within)
            product_ids = products_to_check(screening.eligible, channel, ctx, catalogue)
            span.set_attributes(
                {
                    "nextbest.channel": channel,
                    "nextbest.catalogue_version": catalogue.version,
                    "nextbest.offers.catalogue": len(catalogue.offers),
                    "nextbest.offers.eligible": len(screening.eligible),
                    "nextbest.products_to_check": len(product_ids),
                }
            )
        timeout = plan.last_timeout()
        if screening.eligible:
            features = request_context(channel, ctx)
            candidates = [(o.id, offer_feature_values(o, features, catalogue)) for o in screening.eligible]
            score = self.gateways.scoring.score(
                customer.customer_id, customer.features, OFFER_FEATURE_NAMES, candidates, timeout
            )
            scoring = _in_span(
                self._tracer,
                "decision.scoring",
                _attempt(score),
                {"nextbest.candidates": len(candidates)},
            )
        else:
            scoring = _skipped()
        inventory = (
            _in_span(
                self._tracer,
                "decision.inventory",
                _attempt(self._stock(channel, ctx, product_ids, timeout)),
                {"nextbest.products": len(product_ids)},
            )
            if product_ids
            else _skipped()
        )
        now = utcnow()
        policies = self._policy_removals(screening.eligible, channel, customer, now, degraded, lookback)
        (scores, scoring_failure), (levels, inventory_failure), removals = await asyncio.gather(
            scoring, inventory, _in_span(self._tracer, "decision.contact_policies", policies, {})
        )
        degraded.extend(reason for reason in (scoring_failure, inventory_failure) if reason)
        if channel == "call_center":  # the agent's action must not contradict what the agent is told to avoid
            removals = {**call_removals(screening.eligible, customer, ctx.call_reason), **removals}
        arm, strategy = self.policy.strategy(customer.customer_id)
        with self._tracer.start_as_current_span("decision.arbitration") as span:
            conclusion = conclude(
                catalogue=catalogue,
                channel=channel,
                ctx=ctx,
                customer=customer,
                screening=without(screening, removals),
                scores=scores,
                stock=None if inventory_failure else StockView(levels or ()),
                warehouse_id=self.policy.warehouse_id,
                policy=strategy,
                max_offers=max_offers,
                arm=arm,
                control_offer=self.policy.control_offer,
                rng=self._rng,
                buy_now_hold=self.policy.buy_now_hold,
            )
            span.set_attributes(
                {
                    "nextbest.offers.removed_by_policy": len(removals),
                    "nextbest.offers.returned": len(conclusion.offers),
                    "nextbest.no_offer_reason": conclusion.no_offer_reason,
                    "nextbest.model_version": scores.model_version if scores is not None else "",
                }
            )
        return conclusion, scores

    async def _policy_removals(
        self,
        eligible: tuple,
        channel: str,
        customer: CustomerView,
        now: datetime,
        degraded: list[str],
        lookback: timedelta | None,
    ) -> dict[str, tuple[str, str]]:
        """Offers removed by a spent budget or by the customer's contact history.

        The history is one aggregate query of the customer's recent decisions and their outcomes, run in parallel
        with scoring and inventory (so it adds no latency unless the database is the slowest dependency), and only
        when the catalogue has contact policies and the customer is known. Reading the log rather than keeping
        per-customer counters in this process keeps every replica exact and needs no rebuild on start.
        """
        removals = {o.id: ("budget_exhausted", "the offer's budget cap is spent") for o in eligible if o.id in self._spent}
        limited = [o for o in eligible if o.contact is not None and o.id not in removals]
        if lookback is None or not limited or not customer.customer_id:
            return removals
        try:
            history = await self.repository.contacts(
                customer.customer_id, channel, [o.id for o in limited], now, now - lookback, self.policy.ignore_after
            )
        except NextBestError as exc:
            # Without the history the caps cannot be checked: leave the capped offers out (never over-contact).
            log.warning("contact history unavailable: %s", exc)
            trace.get_current_span().add_event("degraded", {"nextbest.reason": "contact_history_unavailable"})
            degraded.append("contact_history_unavailable")
            removals.update({o.id: ("contact_history_unknown", "contact history unreadable") for o in limited})
            return removals
        removals.update(contact.blocked(limited, channel, history, now))
        return removals

    async def _stock(self, channel: str, ctx: Context, product_ids: list[str], timeout: float) -> list[StockLevel]:
        """The stock this decision needs, in as few rows as possible.

        The web and the call centre sell from the warehouse. POS checks its offers and in-store alternatives on this
        store's shelf, and only the viewed SKU everywhere (ship to home, reserve nearby): two small look-ups in
        parallel instead of every variant at every location (6x the rows with six locations).
        """
        stock = self.stock
        if channel != "pos":
            return await stock.at(product_ids, self.policy.warehouse_id, timeout)
        if not ctx.sku:
            return await stock.at(product_ids, ctx.store_id, timeout)
        here, everywhere = await asyncio.gather(
            stock.at(product_ids, ctx.store_id, timeout), stock.everywhere(ctx.sku, timeout)
        )
        return [*here, *everywhere]

    async def _persist(
        self,
        channel: str,
        ref: CustomerRef,
        ctx: Context,
        customer: CustomerView,
        conclusion: Conclusion,
        scores: Scores | None,
        degraded: list[str],
        summary: dict[str, Any],
        started: float,
    ) -> Decision:
        """Persist the decision (one INSERT) and return it."""
        decision = Decision(
            decision_id=uuid.uuid4().hex,
            customer_id=customer.customer_id,
            channel=channel,
            offers=conclusion.offers,
            degraded_reasons=tuple(degraded),
            catalogue_version=conclusion.catalogue_version,
            model_version=scores.model_version if scores is not None else "",
            decided_at=utcnow(),
            no_offer_reason=conclusion.no_offer_reason,
            arm=conclusion.trace.get("arm", "treatment"),
        )
        request = {
            **summary,
            "customer": {"customer_id": ref.customer_id, "identifier_types": [kind for kind, _ in ref.identifiers]},
            "context": asdict(ctx),
            "request_context": asdict(request_context(channel, ctx)),
            "known_customer": customer.known,
            # The feature vector scored, as it was now: training sets are built from it (no later events leak in).
            "customer_features": dict(customer.features),
        }
        offers = [
            {
                "offer_id": o.offer_id,
                "type": o.type,
                "rank": o.rank,
                "score": o.score,
                "propensity": o.propensity,
                "value": o.value,
                "lever": o.lever,
                "reason_codes": list(o.reason_codes),
                "sku": o.prefill.sku if o.prefill else None,
                "probability": o.probability,
            }
            for o in decision.offers
        ]
        with self._tracer.start_as_current_span("decision.persist"):
            await self.repository.save_decision(
                {
                    "decision_id": decision.decision_id,
                    "customer_id": decision.customer_id,
                    "channel": channel,
                    "created_at": decision.decided_at,
                    "request": request,
                    "offers": offers,
                    "degraded": decision.degraded,
                    "degraded_reasons": list(decision.degraded_reasons),
                    "catalogue_version": decision.catalogue_version,
                    "model_version": decision.model_version,
                    "trace": conclusion.trace,
                    # As they were now, so the report can group by segment without reading today's memberships.
                    "segments": list(customer.traits.segments),
                    "latency_ms": (time.monotonic() - started) * 1000.0,
                }
            )
        self.metrics.decided(decision)
        span = trace.get_current_span()  # the RPC's server span: the decision's summary, for finding it in a trace
        if span.is_recording():
            span.set_attributes(
                {
                    "nextbest.decision_id": decision.decision_id,
                    "nextbest.customer_id": decision.customer_id,
                    "nextbest.channel": channel,
                    "nextbest.offers.returned": len(decision.offers),
                    "nextbest.degraded_reasons": decision.degraded_reasons,
                    "nextbest.catalogue_version": decision.catalogue_version,
                    "nextbest.model_version": decision.model_version,
                    "nextbest.arm": decision.arm,
                }
            )
        return decision
