"""What the telemetry tests share: in-memory trace and metric exporters, captured JSON logs, and the whole mesh.

OpenTelemetry lets a process set its tracer and meter providers once. These tests run in the same process as every
other test, so `telemetry` installs in-memory providers for one test only and puts back what was there before
(the reset is what opentelemetry's own test utilities do). Servers, channels and the decision's tracer decide at
wiring time whether telemetry is on, so everything built inside the test is traced and measured, and nothing built
by other tests changes behaviour. Request `telemetry` before `serve`, so the providers outlive the servers.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2_grpc as decision_grpc
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2 as ppb
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc
from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from libs.protoconv import to_timestamp, utcnow
from libs.server import GrpcServer
from libs.settings import CommonSettings
from libs.telemetry import QUIET_LOGGERS, setup_logging
from services.decision.app import build as build_decision
from services.decision.settings import DecisionSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.inventory.app import build as build_inventory
from services.inventory.importer import import_stock_csv
from services.inventory.settings import InventorySettings
from services.profile.app import build as build_profile
from services.profile.settings import ProfileSettings
from services.scoring.app import build as build_scoring
from services.scoring.settings import ScoringSettings
from services.scoring.training import train_binary_model
from tests.integration.decision_fakes import LOCATIONS, PRODUCTS, STOCK, write_catalogue
from tests.unit.test_scoring_training import FEATURES, synthetic_dataset

EMAIL = common_pb2.IDENTIFIER_TYPE_EMAIL
PHONE = common_pb2.IDENTIFIER_TYPE_PHONE
LOYALTY_CARD = common_pb2.IDENTIFIER_TYPE_LOYALTY_CARD
WEB = common_pb2.CHANNEL_WEB


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished_spans(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[tuple[dict, object]]:
        """(attributes, data point) of every point of the metric `name`, across all scopes."""
        data = self.metrics.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend((dict(p.attributes), p) for p in metric.data.data_points)
        return found


def _reset_globals() -> None:
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None


@contextmanager
def installed_telemetry() -> Iterator[Telemetry]:
    """Record every span and metric of this process in memory while the block runs."""
    saved_tracing, saved_metrics = trace._TRACER_PROVIDER, metrics_internal._METER_PROVIDER
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    _reset_globals()
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    try:
        yield Telemetry(exporter, reader)
    finally:
        _reset_globals()
        if saved_tracing is not None:
            trace.set_tracer_provider(saved_tracing)
        if saved_metrics is not None:
            metrics.set_meter_provider(saved_metrics)
        tracer_provider.shutdown()
        meter_provider.shutdown()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    with installed_telemetry() as installed:
        yield installed


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """Every log line of this process, as the services write them (JSON, DEBUG level, all loggers)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    setup_logging("test", CommonSettings(log_level="DEBUG", log_format="json"))
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], level, quiet = saved
        root.setLevel(level)
        for name, quiet_level in quiet.items():
            logging.getLogger(name).setLevel(quiet_level)


def log_entries(buffer: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------------- the mesh


@dataclass
class Person:
    """A customer with distinctive personal data, to be found (or not) in logs and telemetry."""

    email: str
    phone: str
    loyalty_card: str
    given_name: str
    surname: str
    street: str
    postcode: str
    city: str

    def identifiers(self) -> list[common_pb2.Identifier]:
        return [
            common_pb2.Identifier(type=EMAIL, value=self.email),
            common_pb2.Identifier(type=PHONE, value=self.phone),
            common_pb2.Identifier(type=LOYALTY_CARD, value=self.loyalty_card),
        ]

    def traits(self) -> ipb.PersonTraits:
        return ipb.PersonTraits(
            given_name=self.given_name,
            surname=self.surname,
            date_of_birth="1979-03-14",
            street_number="742",
            address_line=self.street,
            city=self.city,
            postcode=self.postcode,
        )

    def secrets(self) -> list[str]:
        """The strings that must never appear: raw and as identity normalises them."""
        return [
            self.email, self.email.lower(), self.phone, self.phone.replace(" ", ""), self.loyalty_card,
            self.given_name, self.surname, self.street, self.postcode, self.city,
        ]


@dataclass
class Mesh:
    identity: identity_grpc.IdentityServiceStub
    profile: profile_grpc.ProfileServiceStub
    scoring: scoring_grpc.ScoringServiceStub
    inventory: inventory_grpc.InventoryServiceStub
    decision: decision_grpc.DecisionServiceStub
    servers: dict[str, GrpcServer]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def mesh_database(request) -> str | None:
    """None: one SQLite file per service (the default); else one PostgreSQL database shared by the five."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def _write_stock(path: Path) -> Path:
    variants = {v["sku"]: (p["product_id"], v["size"], v["colour"]) for p in PRODUCTS for v in p["variants"]}
    kinds = {location: "warehouse" if location.startswith("DC") else "store" for location in LOCATIONS}
    rows = ["sku,product_id,size,colour,location_id,location_kind,on_hand"]
    rows += [f"{sku},{','.join(variants[sku])},{loc},{kinds[loc]},{qty}" for (sku, loc), qty in STOCK.items()]
    path.write_text("\n".join(rows) + "\n")
    return path


async def start_mesh(serve, tmp_path: Path, database_url: str | None) -> Mesh:
    """The five real services in this process on port 0: per-service SQLite files, or one PostgreSQL database.

    Seeded with the decision tests' catalogue and stock and a small real XGBoost model (scoring ignores the
    features it does not know, so the decision's real feature vectors score).
    """
    common = CommonSettings(data_dir=tmp_path, database_url=database_url)
    catalogue_dir = write_catalogue(tmp_path / "catalogue")
    inventory_settings = InventorySettings(common=common)
    await import_stock_csv(inventory_settings, _write_stock(tmp_path / "stock.csv"))
    rows, labels = synthetic_dataset(300)
    train_binary_model(rows, labels, feature_names=FEATURES, models_dir=tmp_path / "models", version="v1")

    identity_server, identity_channel = await serve(build_identity(IdentitySettings(common=common)))
    identity_target = f"127.0.0.1:{identity_server.port}"
    profile_server, profile_channel = await serve(
        build_profile(ProfileSettings(common=common, identity_target=identity_target))
    )
    scoring_server, scoring_channel = await serve(
        build_scoring(ScoringSettings(common=common, models_dir=tmp_path / "models", reject_unknown_features=False))
    )
    inventory_server, inventory_channel = await serve(build_inventory(inventory_settings))
    decision_server, decision_channel = await serve(
        build_decision(
            DecisionSettings(
                common=common,
                catalogue_dir=catalogue_dir,
                identity_target=identity_target,
                profile_target=f"127.0.0.1:{profile_server.port}",
                scoring_target=f"127.0.0.1:{scoring_server.port}",
                inventory_target=f"127.0.0.1:{inventory_server.port}",
            )
        )
    )
    return Mesh(
        identity_grpc.IdentityServiceStub(identity_channel),
        profile_grpc.ProfileServiceStub(profile_channel),
        scoring_grpc.ScoringServiceStub(scoring_channel),
        inventory_grpc.InventoryServiceStub(inventory_channel),
        decision_grpc.DecisionServiceStub(decision_channel),
        {
            "identity": identity_server,
            "profile": profile_server,
            "scoring": scoring_server,
            "inventory": inventory_server,
            "decision": decision_server,
        },
    )


async def enrol(mesh: Mesh, person: Person) -> str:
    """Create the customer in identity (identifiers and traits), grant web marketing consent, and send profile an
    order through the customer's e-mail address (profile resolves it with identity). Returns the customer id."""
    resolved = await mesh.identity.Resolve(
        ipb.ResolveRequest(identifiers=person.identifiers(), create_if_missing=True, traits=person.traits()),
        timeout=10,
    )
    customer_id = resolved.customer_id
    await mesh.identity.SetConsent(
        ipb.SetConsentRequest(
            customer_id=customer_id,
            consents=[
                ipb.Consent(purpose=ipb.CONSENT_PURPOSE_MARKETING, channel=WEB, granted=True, source="web-signup")
            ],
        ),
        timeout=10,
    )
    purchase = ppb.Purchase(
        order_id=f"order-{customer_id}",
        lines=[ppb.OrderLine(sku="TEE-L-BLK", quantity=2, unit_price=30.0, list_price=30.0, category="tops")],
        channel=WEB,
    )
    await mesh.profile.IngestEvents(
        ppb.IngestEventsRequest(
            events=[
                ppb.Event(
                    event_id=f"evt-{customer_id}",
                    identifiers=[common_pb2.Identifier(type=EMAIL, value=person.email)],
                    occurred_at=to_timestamp(utcnow()),
                    source="web",
                    purchase=purchase,
                )
            ]
        ),
        timeout=10,
    )
    return customer_id


async def expect_status(call, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    return error.value
