"""One Decide through the five real services is one connected trace, its logs carry its ids, and it is measured.

The services run in this process on port 0 with in-memory span and metric exporters (`telemetry_support`), so
every span of every hop lands in one list: the test follows the parent links from the client's call down to each
dependency's server span.
"""

from __future__ import annotations

import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as dpb
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from libs.metrics import metrics_active
from libs.telemetry import tracing_active
from tests.integration.telemetry_support import (
    EMAIL,
    WEB,
    Person,
    enrol,
    installed_telemetry,
    log_entries,
    start_mesh,
)

pytestmark = pytest.mark.integration

ANN = Person("ann.trace@example.com", "+1 415 555 0101", "LC-4400-1001", "Annabel", "Tracewell", "Elm Street",
             "94110", "Springfield")
STAGES = ("resolve", "customer", "eligibility", "contact_policies", "scoring", "inventory", "arbitration", "persist")
#: (stage span, service, method): each dependency call is made inside its stage.
CALLS = [
    ("decision.resolve", "nextbest.identity.v1.IdentityService", "Resolve"),
    ("decision.customer", "nextbest.identity.v1.IdentityService", "GetConsent"),
    ("decision.customer", "nextbest.profile.v1.ProfileService", "GetProfile"),
    ("decision.scoring", "nextbest.scoring.v1.ScoringService", "Score"),
    ("decision.inventory", "nextbest.inventory.v1.InventoryService", "CheckAvailability"),
]


def decide_request(email: str) -> dpb.DecideRequest:
    ref = common_pb2.CustomerRef(identifiers=[common_pb2.Identifier(type=EMAIL, value=email)])
    return dpb.DecideRequest(channel=WEB, customer=ref, context=dpb.DecisionContext(page="product", sku="TEE-M-WHT"))


def one(spans: list[ReadableSpan], name: str, kind: SpanKind | None = None) -> ReadableSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, f"{name}: {[(s.name, s.kind) for s in spans]}"
    return found[0]


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


async def test_one_decide_is_one_connected_trace_across_all_services(telemetry, serve, tmp_path, mesh_database):
    mesh = await start_mesh(serve, tmp_path, mesh_database)
    customer_id = await enrol(mesh, ANN)
    telemetry.spans.clear()

    answer = await mesh.decision.Decide(decide_request(ANN.email), timeout=10)
    assert answer.customer_id == customer_id and not answer.degraded, answer.degraded_reasons
    assert answer.offers and answer.model_version == "v1"

    spans = telemetry.finished_spans()
    client = one(spans, "/nextbest.decision.v1.DecisionService/Decide", SpanKind.CLIENT)
    trace_id = client.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    decide = one(in_trace, "/nextbest.decision.v1.DecisionService/Decide", SpanKind.SERVER)
    assert parent_of(decide) == client.context.span_id

    stages = {name: one(in_trace, f"decision.{name}") for name in STAGES}
    for stage in stages.values():
        assert parent_of(stage) == decide.context.span_id, stage.name
    for stage_name, service, method in CALLS:
        call = one(in_trace, f"/{service}/{method}", SpanKind.CLIENT)
        served = one(in_trace, f"/{service}/{method}", SpanKind.SERVER)
        assert parent_of(call) == stages[stage_name.removeprefix("decision.")].context.span_id, (stage_name, method)
        assert parent_of(served) == call.context.span_id, method
    # Nothing in the trace dangles: every span but the client's root hangs off another span of the same trace.
    ids = {s.context.span_id for s in in_trace}
    assert all(s is client or parent_of(s) in ids for s in in_trace)

    assert decide.attributes["nextbest.decision_id"] == answer.decision_id
    assert decide.attributes["nextbest.channel"] == "web"
    assert decide.attributes["nextbest.model_version"] == "v1"
    assert decide.attributes["nextbest.offers.returned"] == len(answer.offers)
    assert stages["eligibility"].attributes["nextbest.offers.eligible"] >= len(answer.offers)
    assert stages["eligibility"].attributes["nextbest.catalogue_version"] == answer.catalogue_version
    assert stages["scoring"].attributes["nextbest.candidates"] >= len(answer.offers)
    assert stages["arbitration"].attributes["nextbest.model_version"] == "v1"
    assert stages["resolve"].attributes["nextbest.cache_misses"] == ("resolutions",)
    assert stages["customer"].attributes["nextbest.known"] is True
    assert set(stages["customer"].attributes["nextbest.cache_misses"]) == {"profiles", "consents"}
    score_server = one(in_trace, "/nextbest.scoring.v1.ScoringService/Score", SpanKind.SERVER)
    assert score_server.attributes["nextbest.model_version"] == "v1"


async def test_logs_during_a_decide_carry_its_trace_and_stage_span_ids(telemetry, json_logs, serve, tmp_path):
    mesh = await start_mesh(serve, tmp_path, None)
    await enrol(mesh, ANN)
    await mesh.servers["inventory"].stop()  # the decision degrades, and says so in a log line
    telemetry.spans.clear()

    answer = await mesh.decision.Decide(decide_request(ANN.email), timeout=10)
    assert "inventory_unavailable" in answer.degraded_reasons

    spans = telemetry.finished_spans()
    inventory_stage = one(spans, "decision.inventory")
    assert [e.attributes["nextbest.reason"] for e in inventory_stage.events] == ["inventory_unavailable"]
    warnings = [e for e in log_entries(json_logs) if e.get("reason") == "inventory_unavailable"]
    assert warnings, json_logs.getvalue()[-2000:]
    assert warnings[0]["service"] == "test" and warnings[0]["level"] == "WARNING"
    assert warnings[0]["trace_id"] == format(inventory_stage.context.trace_id, "032x")
    assert warnings[0]["span_id"] == format(inventory_stage.context.span_id, "016x")


def test_telemetry_is_off_again_after_a_test_that_installed_it():
    before = tracing_active(), metrics_active()
    with installed_telemetry():
        assert tracing_active() and metrics_active()
    assert (tracing_active(), metrics_active()) == before == (False, False)
