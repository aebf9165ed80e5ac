"""`nextbest demo seed`: loads the demo retailer into the services through their contracts, then trains the model.

Steps: catalogue files into the decision service's catalogue folder; stock.csv through the inventory importer;
identity and profile started by the seeder on port 0 (`libs.server.GrpcServer`; identity in a child process so
its writes, the heaviest part of seeding, run on the second core) and fed over gRPC: Resolve (create_if_missing)
and SetConsent per customer, IngestEvents in batches, GetFeatures per customer; the offer-propensity model trained
on those real feature vectors into the scoring service's models folder.

Every service's settings come from `load_settings`, so NEXTBEST_DATA_DIR / NEXTBEST_DATABASE_URL (and the
per-service overrides) decide where the data goes, exactly as for the running services.

Idempotent: `{data_dir}/seeded.json` records the parameters and the summary; a second run with the same parameters
does nothing. `--force` starts from empty databases first: SQLite files are deleted; on PostgreSQL the services'
own tables (names starting with the service name, plus its `alembic_version_<service>` table) are dropped; the
demo's model folder (`{models_dir}/offer_propensity`) is deleted. A run interrupted half-way can simply be re-run:
Resolve finds existing customers, event ids are applied once, the stock import sets quantities.
"""

from __future__ import annotations

import asyncio
import csv
import multiprocessing
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import orjson
from nextbest.common.v1 import common_pb2
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.identity.v1 import identity_service_pb2_grpc as ipb_grpc
from nextbest.profile.v1 import profile_service_pb2 as ppb
from nextbest.profile.v1 import profile_service_pb2_grpc as ppb_grpc
from sqlalchemy import text
from sqlalchemy.engine import make_url

from cli.demo.retailer import STOCK_CSV_HEADER, DemoCustomer, Retailer, generate
from cli.demo.training import TrainingReport, train_propensity_model
from libs.clients import open_channel
from libs.db import create_engine, is_sqlite
from libs.protoconv import to_timestamp, utcnow
from libs.server import GrpcServer
from libs.settings import CommonSettings, ServiceSettings, load_settings
from services.decision.catalogue import Catalogue, parse_catalogue
from services.decision.settings import DecisionSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.inventory.importer import import_stock_csv
from services.inventory.settings import InventorySettings
from services.profile.app import build as build_profile
from services.profile.domain.state import FOLD_VERSION
from services.profile.settings import ProfileSettings
from services.scoring.settings import ScoringSettings

MARKER = "seeded.json"
SHOWCASE = "demo-customers.json"
#: Customers resolved (and consented, and their events generated) concurrently.
RESOLVE_CONCURRENCY = 32
#: Events per IngestEvents call (a customer's history is never split) and calls in flight.
INGEST_BATCH = 800
INGEST_MAX_BATCH = 1000
INGEST_CONCURRENCY = 3
#: Simulated offer impressions the propensity model is trained on (fewer make a visibly noisier model).
IMPRESSIONS = 50_000
#: How long the identity child process may take to migrate and bind.
START_TIMEOUT_SECONDS = 60.0
#: Rejections kept verbatim for the report.
REJECTIONS_KEPT = 5

_CONSENT_PURPOSES = {
    "marketing": ipb.CONSENT_PURPOSE_MARKETING,
    "personalization": ipb.CONSENT_PURPOSE_PERSONALIZATION,
    "analytics": ipb.CONSENT_PURPOSE_ANALYTICS,
}
#: Consent channels of the generator (retailer.CONSENT_CHANNELS) as contract enums.
_CHANNELS = {
    "web": common_pb2.CHANNEL_WEB,
    "email": common_pb2.CHANNEL_EMAIL,
    "pos": common_pb2.CHANNEL_POS,
    "call_center": common_pb2.CHANNEL_CALL_CENTER,
}


class SeedConflict(RuntimeError):
    """The data directory was seeded with other parameters; only --force may replace it."""


@dataclass
class SeedReport:
    data_dir: Path
    customers: int
    seed: int
    skipped: bool = False
    products: int = 0
    skus: int = 0
    offers: int = 0
    stock_rows: int = 0
    events_accepted: int = 0
    events_duplicate: int = 0
    events_rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    model_version: str = ""
    model_auc: float = 0.0
    acceptance_rate: float = 0.0
    showcase: dict = field(default_factory=dict)
    #: Step name -> seconds.
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Settings:
    common: CommonSettings
    identity: IdentitySettings
    profile: ProfileSettings
    inventory: InventorySettings
    scoring: ScoringSettings
    decision: DecisionSettings

    @property
    def services(self) -> tuple[ServiceSettings, ...]:
        return self.identity, self.profile, self.inventory, self.scoring, self.decision


def _load(data_dir: Path | None) -> _Settings:
    common = load_settings(CommonSettings, **({"data_dir": data_dir} if data_dir is not None else {}))
    return _Settings(
        common=common,
        identity=load_settings(IdentitySettings, common=common),
        profile=load_settings(ProfileSettings, common=common),
        inventory=load_settings(InventorySettings, common=common),
        scoring=load_settings(ScoringSettings, common=common),
        decision=load_settings(DecisionSettings, common=common),
    )


class _Progress:
    """Prints timed progress lines and records each step's duration."""

    def __init__(self, out: Callable[[str], None], report: SeedReport) -> None:
        self.out = out
        self.report = report
        self.started = time.perf_counter()
        self._step = self.started

    def say(self, message: str) -> None:
        self.out(f"[{time.perf_counter() - self.started:6.1f}s] {message}")

    def done(self, step: str, message: str) -> None:
        """End a step: record how long it took since the previous one and say what it did."""
        now = time.perf_counter()
        took = now - self._step
        self._step = now
        self.report.timings[step] = round(took, 2)
        self.say(f"{message} ({took:.1f}s)")


async def seed(
    customers: int = 10_000,
    seed: int = 42,
    force: bool = False,
    data_dir: Path | None = None,
    *,
    impressions: int = IMPRESSIONS,
    out: Callable[[str], None] = print,
) -> SeedReport:
    """Seed the demo retailer once (see the module docstring); `impressions` is the simulated training set's size."""
    settings = _load(data_dir)
    root = settings.common.data_dir
    report = SeedReport(data_dir=root, customers=customers, seed=seed)
    parameters = {"customers": customers, "seed": seed}
    marker = root / MARKER
    if marker.exists() and not force:
        recorded = orjson.loads(marker.read_bytes())
        if recorded.get("parameters") != parameters:
            raise SeedConflict(
                f"{root} was seeded with {recorded.get('parameters')}, not {parameters}; "
                "re-run with --force to replace it"
            )
        out(f"already seeded ({marker}: {customers} customers, seed {seed}); use --force to seed again")
        report.skipped = True
        report.showcase = recorded.get("showcase", {})
        return report

    progress = _Progress(out, report)
    if force:
        await _reset(settings)
        marker.unlink(missing_ok=True)
        progress.done("reset", "reset: databases emptied")
    root.mkdir(parents=True, exist_ok=True)

    history_end = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    retailer = generate(customers, seed, history_end)
    progress.done("generate", f"generated {len(retailer.products)} products, {len(retailer.offers)} offers, "
                              f"{customers} customers")

    catalogue = _write_catalogue(retailer, settings.decision.resolved_catalogue_dir, report)
    stock_file = root / "stock.csv"
    _write_stock(retailer, stock_file)
    imported = await import_stock_csv(settings.inventory, stock_file)
    report.stock_rows = imported.stock_rows
    progress.done("catalogue_and_stock", f"catalogue ({report.offers} offers, {report.skus} SKUs) and stock "
                                         f"({imported.stock_rows} rows at {imported.locations} locations) written")

    features = await _load_customers(retailer, settings, report, progress)

    training: TrainingReport = await asyncio.to_thread(
        train_propensity_model,
        catalogue,
        features,
        models_dir=settings.scoring.models_dir,
        impressions=impressions,
        seed=seed,
    )
    report.model_version = training.metadata.version
    report.model_auc = training.auc
    report.acceptance_rate = training.acceptance_rate
    progress.done("train", f"model offer_propensity/{training.metadata.version} trained on {training.impressions} "
                           f"simulated impressions (acceptance {training.acceptance_rate:.1%}): validation AUC "
                           f"{training.auc:.3f} (ground truth reaches {training.oracle_auc:.3f})")

    report.timings["total"] = round(time.perf_counter() - progress.started, 2)
    _write_json(root / SHOWCASE, report.showcase)
    summary = {k: v for k, v in asdict(report).items() if k not in ("data_dir", "showcase", "skipped")}
    _write_json(marker, {"parameters": parameters, "fold_version": FOLD_VERSION, "seeded_at": utcnow().isoformat(),
                         "history_end": history_end.isoformat(), "summary": summary, "showcase": report.showcase})
    progress.say(f"seeded {root} in {report.timings['total']:.1f}s")
    return report


# --------------------------------------------------------------------------------------------------- files


def _write_json(path: Path, document: object) -> None:
    """Write atomically: a reader (a running decision service, the mesh banner) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    tmp.replace(path)


def _write_catalogue(retailer: Retailer, folder: Path, report: SeedReport) -> Catalogue:
    offers_doc, products_doc = retailer.offers_doc(), retailer.products_doc()
    catalogue = parse_catalogue(offers_doc, products_doc)  # never write what the decision service would refuse
    _write_json(folder / "offers.json", offers_doc)
    _write_json(folder / "products.json", products_doc)
    report.offers = len(catalogue.offers)
    report.products = len(catalogue.products)
    report.skus = len(catalogue.product_of_sku)
    return catalogue


def _write_stock(retailer: Retailer, path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(STOCK_CSV_HEADER)
        writer.writerows(
            (r.sku, r.product_id, r.size, r.colour, r.location_id, r.location_kind, r.on_hand) for r in retailer.stock
        )


# --------------------------------------------------------------------------------------------------- services


async def _load_customers(retailer: Retailer, settings: _Settings, report: SeedReport,
                          progress: _Progress) -> list[dict[str, float]]:
    """Start identity and profile, push every customer through them, return their feature vectors."""
    identity_server = _IdentityProcess(settings.identity)
    try:
        identity_port = await identity_server.start()
        # The seed's servers live on loopback for this run only and are plaintext, whatever NEXTBEST_TLS_* say.
        plaintext = settings.profile.common.model_copy(
            update={"tls_cert_file": None, "tls_key_file": None, "tls_ca_file": None}
        )
        profile_settings = settings.profile.model_copy(
            update={"identity_target": f"127.0.0.1:{identity_port}", "common": plaintext}
        )
        profile_server = GrpcServer(build_profile(profile_settings), "127.0.0.1", 0, grace=1.0)
        try:
            profile_port = await profile_server.start()
            progress.done("start_services", f"identity (child process, port {identity_port}) and profile "
                                            f"(port {profile_port}) started")
            async with open_channel(f"127.0.0.1:{identity_port}") as identity_channel, \
                    open_channel(f"127.0.0.1:{profile_port}") as profile_channel:
                customer_ids, features = await _resolve_and_ingest(
                    retailer,
                    ipb_grpc.IdentityServiceStub(identity_channel),
                    ppb_grpc.ProfileServiceStub(profile_channel),
                    report,
                    progress,
                )
        finally:
            await profile_server.stop()
    finally:
        await identity_server.stop()
    showcase = retailer.showcase()
    report.showcase = {
        **{k: v for k, v in showcase.items() if not k.endswith("_index")},
        "loyal_customer_id": customer_ids[showcase["loyal_customer_index"]],
        "new_customer_id": customer_ids[showcase["new_customer_index"]],
    }
    return features


async def _resolve_and_ingest(retailer: Retailer, identity: ipb_grpc.IdentityServiceStub,
                              profile: ppb_grpc.ProfileServiceStub, report: SeedReport,
                              progress: _Progress) -> tuple[list[str], list[dict[str, float]]]:
    """Push every customer through identity and profile; returns their ids and feature vectors, in customer order.

    A pipeline with bounded concurrency: workers Resolve (create_if_missing) and SetConsent each customer and queue
    their history; ingesters send whole histories in IngestEvents batches and then fetch those customers'
    GetFeatures, so the profile's reads overlap the identity writes (which run in the other process).
    """
    total = len(retailer.customers)
    customer_ids: list[str] = [""] * total
    features: list[dict[str, float]] = [{} for _ in range(total)]
    pending: Iterator[DemoCustomer] = iter(retailer.customers)
    batches: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=2 * INGEST_CONCURRENCY)
    buffer = _Batch()
    resolved = 0
    milestone = max(1, total // 4)

    async def flush() -> None:
        nonlocal buffer
        if buffer.events:
            batch, buffer = buffer, _Batch()
            await batches.put(batch)

    async def onboard() -> None:
        nonlocal resolved
        for customer in pending:  # a shared iterator: each worker takes the next customer
            answer = await identity.Resolve(
                ipb.ResolveRequest(identifiers=customer.identifiers(), create_if_missing=True), timeout=30
            )
            customer_id = answer.customer_id
            customer_ids[customer.index] = customer_id
            await identity.SetConsent(ipb.SetConsentRequest(customer_id=customer_id, consents=[
                ipb.Consent(purpose=_CONSENT_PURPOSES[c.purpose], channel=_CHANNELS[c.channel], granted=c.granted,
                            source=c.source, recorded_at=to_timestamp(customer.joined_at))
                for c in customer.consents
            ]), timeout=30)
            events = retailer.events(customer)
            for event in events:
                event.customer_id = customer_id
            if len(buffer.events) + len(events) > INGEST_MAX_BATCH:
                await flush()
            buffer.events.extend(events)
            buffer.customers.append(customer.index)
            if len(buffer.events) >= INGEST_BATCH:
                await flush()
            resolved += 1
            if resolved % milestone == 0 or resolved == total:
                progress.say(f"customers resolved, consented and queued: {resolved}/{total}")

    async def fetch_features(index: int) -> None:
        answer = await profile.GetFeatures(ppb.GetFeaturesRequest(customer_id=customer_ids[index]), timeout=30)
        features[index] = dict(answer.features)

    async def ingest() -> None:
        while (batch := await batches.get()) is not None:
            answer = await profile.IngestEvents(ppb.IngestEventsRequest(events=batch.events), timeout=120)
            report.events_accepted += answer.accepted
            report.events_duplicate += answer.duplicates
            report.events_rejected += len(answer.rejected)
            for rejection in answer.rejected[: REJECTIONS_KEPT - len(report.rejections)]:
                report.rejections.append(f"{rejection.event_id}: {rejection.field}: {rejection.reason}")
            await asyncio.gather(*(fetch_features(index) for index in batch.customers))

    async def feed() -> None:
        async with asyncio.TaskGroup() as workers:
            for _ in range(RESOLVE_CONCURRENCY):
                workers.create_task(onboard())
        await flush()
        for _ in range(INGEST_CONCURRENCY):
            await batches.put(None)

    # One task group: a failing call cancels every other worker instead of leaving them blocked on the queue.
    async with _first_error(), asyncio.TaskGroup() as group:
        group.create_task(feed())
        for _ in range(INGEST_CONCURRENCY):
            group.create_task(ingest())
    progress.done("identity_and_profile", f"{total} customers resolved; {report.events_accepted} events accepted, "
                                          f"{report.events_duplicate} duplicates, {report.events_rejected} rejected; "
                                          f"{total} feature vectors fetched")
    if report.rejections:
        progress.say("first rejections: " + "; ".join(report.rejections))
    return customer_ids, features


@dataclass
class _Batch:
    """Whole histories of some customers, for one IngestEvents call."""

    events: list[ppb.Event] = field(default_factory=list)
    customers: list[int] = field(default_factory=list)


class _IdentityProcess:
    """The identity service in a child process (GrpcServer on port 0): identity writes are the seeding's heaviest
    CPU load, and a second process puts them on the machine's second core."""

    def __init__(self, settings: IdentitySettings) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_identity_child, args=(settings, child_conn), daemon=True,
                                        name="nextbest-seed-identity")

    async def start(self) -> int:
        """Start the child and return the port it bound; raises RuntimeError with the child's reason if it fails."""
        self._process.start()
        answer = await asyncio.to_thread(self._receive, START_TIMEOUT_SECONDS)
        if not isinstance(answer, int):
            raise RuntimeError(f"identity service did not start: {answer}")
        return answer

    def _receive(self, timeout: float) -> object:
        if not self._conn.poll(timeout):
            return f"no answer within {timeout:.0f}s"
        try:
            return self._conn.recv()
        except EOFError:
            return f"the child process exited with code {self._process.exitcode}"

    async def stop(self) -> None:
        """Ask the child to drain and stop; terminate it if it does not within 10 s."""
        if self._process.is_alive():
            try:
                self._conn.send("stop")
            except OSError:
                pass  # it is exiting already
            await asyncio.to_thread(self._process.join, 10.0)
        if self._process.is_alive():
            self._process.terminate()
            await asyncio.to_thread(self._process.join, 5.0)
        self._conn.close()


def _identity_child(settings: IdentitySettings, conn: Connection) -> None:
    # Ctrl-C reaches the whole process group: the parent decides when to stop (a message, or its end of the pipe
    # closing), so the child shuts down in order instead of dying with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def run() -> None:
        server = GrpcServer(build_identity(settings), "127.0.0.1", 0, grace=1.0)
        try:
            conn.send(await server.start())
            await asyncio.to_thread(_wait_for_stop, conn)
        finally:
            await server.stop()

    try:
        asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(f"{type(exc).__name__}: {exc}")


def _wait_for_stop(conn: Connection) -> None:
    try:
        conn.recv()
    except EOFError:
        pass  # the parent went away: stop too


@asynccontextmanager
async def _first_error() -> AsyncIterator[None]:
    """Re-raise the first failure of a task group by itself (a gRPC error reads better than an ExceptionGroup)."""
    try:
        yield
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


# --------------------------------------------------------------------------------------------------- reset


async def _reset(settings: _Settings) -> None:
    """Empty every service's database and the demo's model folder (see the module docstring)."""
    for service in settings.services:
        url = service.resolved_database_url
        if is_sqlite(url):
            database = Path(make_url(url).database or "")
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
        else:
            await _drop_tables(url, service.service_name)
    shutil.rmtree(settings.scoring.models_dir / "offer_propensity", ignore_errors=True)


async def _drop_tables(url: str, service: str) -> None:
    """Drop one service's tables (prefix `<service>_`) and its Alembic version table from a PostgreSQL database."""
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as connection:
            names = (await connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )).scalars().all()
            doomed = [n for n in names if n.startswith(f"{service}_") or n == f"alembic_version_{service}"]
            for name in doomed:
                await connection.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
    finally:
        await engine.dispose()
