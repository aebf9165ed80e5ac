"""Personal data never reaches logs, traces or metric attributes.

Seeds customers with distinctive e-mail addresses, phone numbers, names, addresses and loyalty cards, drives the real
mesh through every path that handles them (Resolve, SetConsent, IngestEvents by identifier, Decide by identifier,
Merge, GetCustomer, and malformed identifiers that are rejected), with every logger at DEBUG and every span and metric
recorded, then searches everything captured for each seeded string. The client may hear why its identifier was
rejected; the logs and the telemetry may not repeat it.
"""

from __future__ import annotations

import grpc
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as dpb
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.profile.v1 import profile_service_pb2 as ppb
from opentelemetry.sdk.trace import ReadableSpan

from libs.protoconv import to_timestamp, utcnow
from tests.integration.telemetry_support import (
    EMAIL,
    LOYALTY_CARD,
    PHONE,
    WEB,
    Person,
    Telemetry,
    enrol,
    expect_status,
    start_mesh,
)

pytestmark = pytest.mark.integration

CARLA = Person("Carla.Leakproof@example.org", "+1 415 555 0177", "LC-9071-3357", "Carlotta", "Quillfeather",
               "Wisteria Lane", "90210", "Fairview")
#: Created apart (nothing in common with Carla), then merged into her as if an operator found them to be one person.
DUPE = Person("dot.vexley@example.net", "+44 20 7946 0958", "LC-5123-8842", "Dorothea", "Vexleyworth",
              "Marigold Crescent", "SW1A 1AA", "Little Whinging")
#: Malformed identifiers a client might send: rejected, and still personal data.
BAD_EMAIL = "carla..leakproof@@example.org"
BAD_PHONE = "+1 415 LEAK 01"


def identifier(kind: int, value: str) -> common_pb2.Identifier:
    return common_pb2.Identifier(type=kind, value=value)


def decide_by(*identifiers: common_pb2.Identifier) -> dpb.DecideRequest:
    return dpb.DecideRequest(channel=WEB, customer=common_pb2.CustomerRef(identifiers=identifiers))


def span_text(span: ReadableSpan) -> str:
    """Everything a trace backend would store of a span."""
    parts = [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
    parts += [f"{event.name} {dict(event.attributes or {})!r}" for event in span.events]
    parts += [repr(dict(link.attributes or {})) for link in span.links]
    return "\n".join(parts)


def metric_attributes(telemetry: Telemetry) -> str:
    data = telemetry.metrics.get_metrics_data()
    return repr([dict(p.attributes) for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
                 for p in m.data.data_points])


def leaks(text: str, secrets: list[str]) -> list[str]:
    lowered = text.lower()
    return [secret for secret in secrets if secret.lower() in lowered]


async def test_no_personal_data_in_logs_spans_or_metrics(telemetry, json_logs, serve, tmp_path, mesh_database):
    mesh = await start_mesh(serve, tmp_path, mesh_database)
    carla_id = await enrol(mesh, CARLA)
    dupe_id = await enrol(mesh, DUPE)
    assert carla_id != dupe_id

    # Look-ups by each kind of identifier, directly and through the decision.
    for kind, value in ((PHONE, CARLA.phone), (LOYALTY_CARD, CARLA.loyalty_card), (EMAIL, CARLA.email.upper())):
        found = await mesh.identity.Resolve(ipb.ResolveRequest(identifiers=[identifier(kind, value)]), timeout=10)
        assert found.customer_id == carla_id
    decided = await mesh.decision.Decide(decide_by(identifier(EMAIL, CARLA.email)), timeout=10)
    assert decided.customer_id == carla_id and decided.offers
    await mesh.decision.Decide(decide_by(identifier(PHONE, CARLA.phone), identifier(LOYALTY_CARD, CARLA.loyalty_card)),
                               timeout=10)
    await mesh.identity.GetCustomer(ipb.GetCustomerRequest(customer_id=carla_id), timeout=10)
    await mesh.identity.Merge(
        ipb.MergeRequest(survivor_customer_id=carla_id, merged_customer_id=dupe_id, reason="duplicate", actor="ops"),
        timeout=10,
    )

    # Malformed identifiers: the client is told which field is wrong and why.
    for bad in (identifier(EMAIL, BAD_EMAIL), identifier(PHONE, BAD_PHONE)):
        error = await expect_status(
            mesh.identity.Resolve(ipb.ResolveRequest(identifiers=[bad]), timeout=10), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert error.details().startswith("identifiers[0].value")
        error = await expect_status(mesh.decision.Decide(decide_by(bad), timeout=10), grpc.StatusCode.INVALID_ARGUMENT)
        assert error.details().startswith("customer.identifiers[0].value")
    rejected = await mesh.profile.IngestEvents(
        ppb.IngestEventsRequest(
            events=[
                ppb.Event(
                    event_id="evt-bad",
                    identifiers=[identifier(EMAIL, BAD_EMAIL)],
                    occurred_at=to_timestamp(utcnow()),
                    source="web",
                    page_view=ppb.PageView(page="home"),
                )
            ]
        ),
        timeout=10,
    )
    assert rejected.accepted == 0 and len(rejected.rejected) == 1

    secrets = [*CARLA.secrets(), *DUPE.secrets(), BAD_EMAIL, BAD_PHONE]
    logs = json_logs.getvalue()
    spans = telemetry.finished_spans()
    assert logs and len(spans) > 50  # the capture itself worked: DEBUG lines and spans of every hop
    assert leaks(logs, secrets) == [], [line for line in logs.splitlines() if leaks(line, secrets)][:5]
    leaking_spans = {span.name: leaks(span_text(span), secrets) for span in spans if leaks(span_text(span), secrets)}
    assert leaking_spans == {}
    assert leaks(metric_attributes(telemetry), secrets) == []
