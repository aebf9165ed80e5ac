"""Nightly rescoring: every customer's profile features, scored by a use case's champion, written back to the
profile as model traits.

A batch job (`nextbest model rescore`, a CronJob), not a request path: scoring never calls profile while serving.
The job pages through the profile's `ListFeatures`, scores each page with `ScoreBatch` pinned to the champion
version it found at the start (a promotion during the run does not mix versions), and streams one
`model_prediction` event per customer back through `StreamEvents` while it reads the next page.

Idempotent and resumable: the event id is "model:<use_case>:<version>:<customer_id>", so a re-run with the same
version is all duplicates and changes nothing, and an interrupted run is simply run again. A newer version gets
new ids and a later scoring time, and the profile keeps the newest prediction per use case.

How a model's inputs are read from the profile: by name, unless the model is the lifetime-value regression
(`LTV_FEATURES`, trained on transaction histories), whose RFM inputs are derived from the profile's features and
trait columns by `LTV_FROM_PROFILE`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from nextbest.profile.v1 import profile_service_pb2 as profile_pb
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from nextbest.scoring.v1 import scoring_service_pb2 as scoring_pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc

from libs.errors import FailedPrecondition, InvalidArgument
from libs.protoconv import to_timestamp, utcnow
from services.scoring.lifetime_value import LTV_FEATURES

#: Events per StreamEvents message: the profile's default batch limit.
EVENTS_PER_MESSAGE = 1000
#: Scored pages waiting to be written: reading and scoring run ahead of the profile's writes by this much.
PAGES_AHEAD = 2
#: The profile's event id limit (services.profile validation).
MAX_EVENT_ID = 128
SOURCE = "rescore"

Columns = Mapping[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Derived:
    """One model input computed from profile columns (vectorised over a page)."""

    columns: tuple[str, ...]
    compute: Callable[..., np.ndarray]


def _ratio(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return np.divide(part, whole, out=np.zeros_like(part), where=whole > 0)


#: The lifetime-value model's RFM inputs from what the profile keeps. Close, not identical: the profile counts whole
#: days since the last purchase and tenure from the first event of any kind (the trainer: fractional days, first
#: order); net value also subtracts ledger refunds and write-offs.
LTV_FROM_PROFILE: Mapping[str, Derived] = {
    "recency_days": Derived(("days_since_last_purchase",), lambda days: days),
    "tenure_days": Derived(("tenure_days",), lambda days: days),
    "order_count": Derived(("order_count",), lambda orders: orders),
    "net_spend": Derived(("net_value",), lambda value: value),
    "avg_order_value": Derived(("average_order_value",), lambda value: value),
    "return_rate": Derived(("return_count", "order_count"), _ratio),  # returns per order (the profile's is money)
    "returned_share": Derived(("return_rate",), lambda share: share),  # refunded / spend
    "orders_90d": Derived(("orders_90d",), lambda orders: orders),
    "spend_90d": Derived(("spend_90d",), lambda spend: spend),
    "orders_365d": Derived(("orders_365d",), lambda orders: orders),
    "spend_365d": Derived(("spend_365d",), lambda spend: spend),
}


@dataclass(frozen=True, slots=True)
class InputPlan:
    """Which profile columns to read and how to turn them into the model's matrix; `eligible` picks the customers
    the model can score (the lifetime-value model only knows customers who have ordered)."""

    profile_columns: tuple[str, ...]
    inputs: Mapping[str, Derived]
    eligible: Callable[[Columns], np.ndarray]

    def matrix(self, columns: Columns, feature_names: Sequence[str]) -> np.ndarray:
        return np.column_stack(
            [self.inputs[name].compute(*(columns[c] for c in self.inputs[name].columns)) for name in feature_names]
        )


def plan_for(feature_names: Sequence[str]) -> InputPlan:
    """How to feed a model with these input names from the profile."""
    if tuple(feature_names) == LTV_FEATURES:
        needed = tuple(dict.fromkeys(column for derived in LTV_FROM_PROFILE.values() for column in derived.columns))
        return InputPlan(needed, LTV_FROM_PROFILE, lambda columns: columns["order_count"] > 0)
    direct = {name: Derived((name,), lambda value: value) for name in feature_names}
    return InputPlan(tuple(feature_names), direct, lambda columns: np.ones(len(next(iter(columns.values()))), bool))


def event_id(use_case: str, version: str, customer_id: str) -> str:
    """The idempotency key of one prediction; hashed when a long customer id would pass the profile's limit."""
    readable = f"model:{use_case}:{version}:{customer_id}"
    if len(readable) <= MAX_EVENT_ID:
        return readable
    return "model:" + hashlib.sha256(readable.encode()).hexdigest()


@dataclass(slots=True)
class RescoreReport:
    use_case: str
    model_name: str
    model_version: str
    customers: int = 0  # read from the profile
    scored: int = 0
    skipped: int = 0  # not eligible for the model
    accepted: int = 0  # new model traits written
    duplicates: int = 0  # already written by an earlier run of this version
    rejected: int = 0
    first_rejection: str = ""  # field and reason of the first rejected prediction, if any
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0


async def champion(scoring: scoring_grpc.ScoringServiceStub, use_case: str, timeout: float) -> scoring_pb.ModelInfo:
    reply = await scoring.ListModels(
        scoring_pb.ListModelsRequest(use_case=use_case, statuses=[scoring_pb.MODEL_STATUS_CHAMPION]), timeout=timeout
    )
    if not reply.models:
        raise FailedPrecondition(f"use case {use_case!r} has no champion to rescore with")
    return reply.models[0]


async def rescore(
    profile: profile_grpc.ProfileServiceStub,
    scoring: scoring_grpc.ScoringServiceStub,
    use_case: str,
    *,
    page_size: int = 5000,
    call_timeout: float = 60.0,
    run_timeout: float = 3600.0,
    clock: Callable[[], datetime] = utcnow,
) -> RescoreReport:
    """Score every customer with the use case's champion and write the predictions back as model traits."""
    if page_size < 1:
        raise InvalidArgument("page_size", "must be >= 1")
    started = time.perf_counter()
    model = await champion(scoring, use_case, call_timeout)
    plan = plan_for(model.feature_names)
    report = RescoreReport(use_case, model.name, model.version)
    scored_at = to_timestamp(clock())  # one time for the run: its predictions are one snapshot
    pages: asyncio.Queue[list[profile_pb.Event] | None] = asyncio.Queue(PAGES_AHEAD)

    async def read_and_score() -> None:
        # On failure the task group cancels the write stream too: no end marker is needed then.
        token = ""
        while True:
            page = await profile.ListFeatures(
                profile_pb.ListFeaturesRequest(names=plan.profile_columns, page_size=page_size, page_token=token),
                timeout=call_timeout,
            )
            if page.customer_ids:
                await pages.put(await score_page(page))
            token = page.next_page_token
            if not token:
                await pages.put(None)
                return

    async def score_page(page: profile_pb.ListFeaturesResponse) -> list[profile_pb.Event]:
        ids = list(page.customer_ids)
        values = np.asarray(page.values, dtype=np.float64).reshape(len(ids), len(page.names))
        columns = {name: values[:, j] for j, name in enumerate(page.names)}
        keep = plan.eligible(columns)
        report.customers += len(ids)
        report.skipped += int((~keep).sum())
        if not keep.any():
            return []
        matrix = plan.matrix({name: column[keep] for name, column in columns.items()}, model.feature_names)
        request = scoring_pb.ScoreBatchRequest(
            use_case=use_case, version=model.version, columns=model.feature_names, values=matrix.ravel().tolist()
        )
        predictions: list[float] = []
        async for chunk in scoring.ScoreBatch(request, timeout=call_timeout):
            predictions.extend(chunk.predictions)
        kept_ids = [customer_id for customer_id, kept in zip(ids, keep, strict=True) if kept]
        report.scored += len(kept_ids)
        return [
            profile_pb.Event(
                event_id=event_id(use_case, model.version, customer_id),
                customer_id=customer_id,
                occurred_at=scored_at,
                source=SOURCE,
                model_prediction=profile_pb.ModelPrediction(
                    use_case=use_case, model_name=model.name, model_version=model.version, value=value
                ),
            )
            for customer_id, value in zip(kept_ids, predictions, strict=True)
        ]

    async def messages() -> AsyncIterator[profile_pb.StreamEventsRequest]:
        while (events := await pages.get()) is not None:
            for start in range(0, len(events), EVENTS_PER_MESSAGE):
                yield profile_pb.StreamEventsRequest(events=events[start : start + EVENTS_PER_MESSAGE])

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(read_and_score())
            written = await profile.StreamEvents(messages(), timeout=run_timeout)
    except ExceptionGroup as failed:  # the reader's or the writer's error, as the caller would get it from one call
        raise failed.exceptions[0] from None
    report.accepted, report.duplicates, report.rejected = written.accepted, written.duplicates, len(written.rejected)
    if written.rejected:
        first = written.rejected[0]
        report.first_rejection = f"{first.event_id}: {first.field}: {first.reason}"
    report.seconds = time.perf_counter() - started
    return report
