"""Wiring of the decision service: settings -> engine, repository, gateways, orchestrator, outbox, lineage follower,
servicer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from nextbest.decision.v1 import decision_service_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.cancellation import stop_task
from libs.clients import peer_credentials
from libs.customer_cache import ChangeSubscription
from libs.db import create_engine, migrate
from libs.metrics import meter
from libs.server import Registration, ServiceApp
from services.decision.catalogue import CatalogueError, load_catalogue
from services.decision.catalogue_watch import CatalogueWatcher, signature
from services.decision.domain.arbitration import ArbitrationPolicy
from services.decision.domain.lineage import LineageFollower
from services.decision.gateways import Gateways
from services.decision.metrics import DecisionMetrics
from services.decision.orchestrator import CustomerCaches, DecisionPolicy, DecisionService
from services.decision.outbox import OutcomeForwarder
from services.decision.servicer import DecisionServicer
from services.decision.settings import DecisionSettings, StrategyOverrides
from services.decision.stock import StockReader, stock_cache
from services.decision.storage import DecisionRepository

FULL_NAME = "nextbest.decision.v1.DecisionService"
_log = logging.getLogger(__name__)


async def migrate_schema(engine: AsyncEngine) -> None:
    """Upgrade this service's tables to the newest revision: at start-up, or from `nextbest migrate`."""
    await migrate(engine, Path(__file__).parent / "migrations", "alembic_version_decision")


def strategy_b_policy(strategy_a: ArbitrationPolicy, overrides: StrategyOverrides) -> ArbitrationPolicy:
    """Strategy B of the A/B test: strategy A with the operator's overrides applied."""
    names = {
        "exploration_policy": "exploration",
        "exploration_epsilon": "epsilon",
        "exploration_top": "explore_top",
        "min_priority": "min_priority",
        "thompson_strength": "thompson_strength",
    }
    changed = {names[key]: value for key, value in overrides.model_dump(exclude={"weights"}).items() if value is not None}
    return replace(strategy_a, **changed, weights=replace(strategy_a.weights, **overrides.weights))


def _report_stopped(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("the lineage follower stopped: erasures no longer reach the decision log", exc_info=task.exception())


def build(settings: DecisionSettings) -> ServiceApp:
    engine = create_engine(settings.resolved_database_url, **settings.common.db_pool)
    repository = DecisionRepository(engine)
    gateways = Gateways(
        settings.identity_target,
        settings.profile_target,
        settings.scoring_target,
        settings.inventory_target,
        credentials=peer_credentials(settings.common),
    )
    forwarder = OutcomeForwarder(
        repository, gateways.profile, settings.outbox_batch_size, settings.outbox_interval_seconds
    )
    lineage = LineageFollower(repository, gateways.identity, settings.lineage_poll_seconds)
    lineage_task: list[asyncio.Task[None]] = []
    strategy_a = ArbitrationPolicy(
        long_dwell_seconds=settings.long_dwell_seconds,
        min_priority=settings.min_priority,
        epsilon=settings.exploration_epsilon,
        explore_top=settings.exploration_top,
        exploration=settings.exploration_policy,
        thompson_strength=settings.thompson_strength,
    )
    policy = DecisionPolicy(
        arbitration=strategy_a,
        warehouse_id=settings.warehouse_location_id,
        default_max_offers={
            "web": settings.max_offers_web,
            "pos": settings.max_offers_pos,
            "call_center": settings.max_offers_call_center,
        },
        reserve_seconds=settings.reserve_ms / 1000,
        ignore_after=timedelta(seconds=settings.contact_ignore_after_seconds),
        attribution_window=timedelta(seconds=settings.attribution_window_seconds),
        control_share=settings.control_share,
        control_offer=settings.control_offer,
        control_salt=settings.control_salt,
        strategy_b=(
            strategy_b_policy(strategy_a, settings.strategy_b or StrategyOverrides())
            if settings.strategy_b_share > 0
            else None
        ),
        strategy_b_share=settings.strategy_b_share,
        strategy_salt=settings.strategy_salt,
        returned_within=timedelta(days=settings.returned_within_days),
        buy_now_hold=timedelta(seconds=settings.buy_now_hold_seconds),
    )
    caches = CustomerCaches(settings.cache_max_customers, settings.cache_max_age_seconds)
    stock = StockReader(
        gateways.inventory, stock_cache(settings.stock_cache_max_entries, settings.stock_cache_max_age_seconds)
    )
    metrics = DecisionMetrics(
        meter("nextbest.decision"), [caches.resolutions, caches.consents, caches.profiles, stock.cache]
    )
    service = DecisionService(
        gateways, repository, policy, on_new_outcome=forwarder.wake, caches=caches, metrics=metrics, stock=stock
    )
    watcher = CatalogueWatcher(service, settings.resolved_catalogue_dir, settings.catalogue_poll_seconds)
    # Each owner's change feed keeps its caches exact; with caching off there is nothing to subscribe to.
    subscriptions = (
        [
            ChangeSubscription("identity", gateways.identity.watch_changes, [caches.resolutions, caches.consents]),
            ChangeSubscription("profile", gateways.profile.watch_changes, [caches.profiles]),
        ]
        if settings.cache_max_customers
        else []
    )
    if settings.stock_cache_max_entries:
        subscriptions.append(ChangeSubscription("inventory", gateways.inventory.watch_changes, [stock.cache]))
    servicer = DecisionServicer(
        service,
        {
            "web": settings.budget_web_ms / 1000,
            "pos": settings.budget_pos_ms / 1000,
            "call_center": settings.budget_call_center_ms / 1000,
        },
    )

    async def on_start() -> None:
        loaded = signature(settings.resolved_catalogue_dir)  # before reading: an edit during the load is seen later
        try:
            service.use_catalogue(load_catalogue(settings.resolved_catalogue_dir))
        except CatalogueError as exc:
            raise SystemExit(f"decision: invalid offer catalogue: {exc}") from exc
        if settings.common.migrate_on_start:
            await migrate_schema(engine)
        await service.load_budgets()
        gateways.open()  # channels belong to the serving event loop, so they open here, not in build
        for subscription in subscriptions:
            subscription.start()
        forwarder.start()
        if settings.lineage_poll_seconds:  # erasures reach the log in the background; serving never waits for it
            lineage_task.append(asyncio.create_task(lineage.run(), name="decision-lineage-follower"))
            lineage_task[0].add_done_callback(_report_stopped)
        if settings.catalogue_poll_seconds:
            watcher.start(loaded)

    async def on_stop() -> None:
        await watcher.stop()
        await forwarder.stop()
        await stop_task(lineage_task.pop() if lineage_task else None)
        for subscription in subscriptions:
            await subscription.stop()
        await gateways.close()
        await engine.dispose()

    return ServiceApp(
        "decision",
        [Registration(pb_grpc.add_DecisionServiceServicer_to_server, servicer, FULL_NAME)],
        on_start=on_start,
        on_stop=on_stop,
        parts={
            "engine": engine,
            "repository": repository,
            "service": service,
            "gateways": gateways,
            "forwarder": forwarder,
            "lineage": lineage,
            "catalogue_watcher": watcher,
            "caches": caches,
            "subscriptions": subscriptions,
            "settings": settings,
        },
    )
