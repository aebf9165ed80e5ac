"""The mesh's metrics after real traffic: RPC latency and errors per method and status, the decision's business
counters, customer cache hit rates and the model version in use, read from an in-memory metric reader."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as dpb

from tests.integration.telemetry_support import (
    Person,
    enrol,
    expect_status,
    start_mesh,
)
from tests.integration.test_trace_propagation import decide_request

pytestmark = pytest.mark.integration

BEA = Person("bea.metrics@example.com", "+1 415 555 0102", "LC-4400-1002", "Beatrix", "Metricsson", "Oak Avenue",
             "94117", "Shelbyville")
DECIDE = {"rpc.service": "nextbest.decision.v1.DecisionService", "rpc.method": "Decide"}


async def test_rpcs_and_decisions_are_measured_with_bounded_attributes(telemetry, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, None)
    decision_app = mesh.servers["decision"].app
    for subscription in decision_app.parts["subscriptions"]:  # caches store answers only while their feed is live
        await asyncio.wait_for(subscription.subscribed.wait(), 10)
    customer_id = await enrol(mesh, BEA)

    first = await mesh.decision.Decide(decide_request(BEA.email), timeout=10)
    second = await mesh.decision.Decide(decide_request(BEA.email), timeout=10)
    assert first.offers and second.offers and not first.degraded and not second.degraded
    await mesh.decision.RecordOutcome(
        dpb.RecordOutcomeRequest(
            outcome_id="out-1", decision_id=first.decision_id, offer_id=first.offers[0].offer_id,
            type=dpb.OUTCOME_TYPE_ACCEPT,
        ),
        timeout=10,
    )
    bad = dpb.DecideRequest(channel=common_pb2.CHANNEL_EMAIL, customer=decide_request(BEA.email).customer)
    await expect_status(mesh.decision.Decide(bad, timeout=10), grpc.StatusCode.INVALID_ARGUMENT)

    durations = {tuple(sorted(a.items())): p for a, p in telemetry.points("nextbest.rpc.server.duration")}
    ok = durations[tuple(sorted({**DECIDE, "rpc.grpc.status_code": "OK"}.items()))]
    assert ok.count == 2 and 0 < ok.sum < 20 and sum(ok.bucket_counts) == 2
    invalid = durations[tuple(sorted({**DECIDE, "rpc.grpc.status_code": "INVALID_ARGUMENT"}.items()))]
    assert invalid.count == 1
    # The dependencies' own servers measured the calls the decision made (and the seeding calls).
    methods = {(dict(key)["rpc.service"].split(".")[1], dict(key)["rpc.method"]) for key in durations}
    assert {("identity", "Resolve"), ("identity", "GetConsent"), ("profile", "GetProfile"), ("scoring", "Score"),
            ("inventory", "CheckAvailability"), ("profile", "IngestEvents")} <= methods
    errors = telemetry.points("nextbest.rpc.server.errors")
    assert [(a, p.value) for a, p in errors if a["rpc.method"] == "Decide"] == [
        ({**DECIDE, "rpc.grpc.status_code": "INVALID_ARGUMENT"}, 1)
    ]

    decisions = {tuple(sorted(a.items())): p.value for a, p in telemetry.points("nextbest.decision.decisions")}
    assert decisions == {(("arm", "treatment"), ("channel", "web"), ("degraded", False)): 2}
    offers = {(a["offer_id"], a["channel"]): p.value for a, p in telemetry.points("nextbest.decision.offers")}
    assert sum(offers.values()) == len(first.offers) + len(second.offers)
    assert offers[(first.offers[0].offer_id, "web")] >= 1
    outcomes = [(a, p.value) for a, p in telemetry.points("nextbest.decision.outcomes")]
    assert outcomes == [({"offer_id": first.offers[0].offer_id, "channel": "web", "type": "accept"}, 1)]
    lookups = {(a["cache"], a["result"]): p.value for a, p in telemetry.points("nextbest.decision.cache.lookups")}
    assert lookups[("resolutions", "miss")] == 1 and lookups[("resolutions", "hit")] == 1
    assert lookups[("profiles", "miss")] == 1 and lookups[("profiles", "hit")] == 1
    serving = [(a, p.value) for a, p in telemetry.points("nextbest.scoring.model.serving")]
    assert serving == [({"use_case": "offer_propensity", "version": "v1", "role": "champion"}, 1.0)]

    # Bounded attributes only: no customer id and no decision id on any data point of any metric.
    data = telemetry.metrics.get_metrics_data()
    attributes = repr([p.attributes for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
                       for p in m.data.data_points])
    assert customer_id not in attributes and first.decision_id not in attributes
