"""TLS and mutual TLS on real gRPC servers: certificates from `nextbest certs create`, real services on SQLite.

TLS: a client that verifies the server with the CA is answered, a plaintext client is not. Mutual TLS: the CLI's
certificate is accepted; no client certificate, or one from another CA, is refused at the handshake (UNAVAILABLE).
Peer hops (profile → identity, decision's gateway → identity) and the CLI (RPC commands, mesh health checks) use
the same settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.identity.v1 import identity_service_pb2_grpc as ipb_grpc
from nextbest.inventory.v1 import inventory_service_pb2 as inventory_pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2 as ppb
from nextbest.profile.v1 import profile_service_pb2_grpc as ppb_grpc

from cli.certs import create_certificates
from cli.main import build_parser
from cli.mesh import wait_healthy
from libs.clients import PeerCredentials, open_channel
from libs.protoconv import to_timestamp
from libs.server import GrpcServer, ServiceApp
from libs.settings import CommonSettings
from libs.tls import TlsMaterial, load_tls
from services.decision.gateways import IdentityGateway
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.inventory.app import build as build_inventory
from services.inventory.importer import import_stock_csv
from services.inventory.settings import InventorySettings
from services.profile.app import build as build_profile
from services.profile.settings import ProfileSettings

pytestmark = pytest.mark.integration

EMAIL = common.IDENTIFIER_TYPE_EMAIL
STOCK_CSV = "sku,product_id,size,colour,location_id,location_kind,on_hand\nCAP-1,CAP,,navy,dc-1,warehouse,7\n"

StartFn = Callable[[ServiceApp, CommonSettings], Awaitable[str]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    create_certificates(out, days=2)
    return out


@pytest.fixture(scope="module")
def stranger_pki(tmp_path_factory) -> Path:
    """Another development CA with the same names: its certificates must not be trusted by ours."""
    out = tmp_path_factory.mktemp("stranger")
    create_certificates(out, days=2, ca_name="Someone else's CA")
    return out


def settings_as(pki: Path, name: str, data_dir: Path, mutual: bool = True) -> CommonSettings:
    """The common settings of a process presenting `name`'s certificate; with the CA (mutual TLS) if `mutual`."""
    return CommonSettings(
        data_dir=data_dir,
        tls_cert_file=pki / f"{name}.pem",
        tls_key_file=pki / f"{name}.key",
        tls_ca_file=pki / "ca.pem" if mutual else None,
    )


def client(pki: Path, name: str | None = "cli", trust: Path | None = None) -> TlsMaterial:
    """A client's TLS material: `name`'s certificate (None: none) and the CA of `trust` (default: the same PKI)."""
    tls = load_tls(
        CommonSettings(
            tls_cert_file=pki / f"{name}.pem" if name else None,
            tls_key_file=pki / f"{name}.key" if name else None,
            tls_ca_file=(trust or pki) / "ca.pem",
        )
    )
    assert tls is not None
    return tls


@pytest.fixture
async def start() -> AsyncIterator[StartFn]:
    """Start an app on 127.0.0.1, port 0, with the transport its common settings configure; stop them after."""
    servers: list[GrpcServer] = []

    async def run(app: ServiceApp, settings: CommonSettings) -> str:
        server = GrpcServer(app, "127.0.0.1", 0, grace=0.5, tls=load_tls(settings))
        servers.append(server)
        return f"127.0.0.1:{await server.start()}"

    yield run
    for server in reversed(servers):
        await server.stop()


async def inventory(start: StartFn, sqlite_url: str, settings: CommonSettings) -> str:
    stock = settings.data_dir / "stock.csv"
    stock.write_text(STOCK_CSV)
    inventory_settings = InventorySettings(database_url=sqlite_url, port=0, common=settings)
    await import_stock_csv(inventory_settings, stock)
    return await start(build_inventory(inventory_settings), settings)


async def stock_of_cap(target: str, tls: TlsMaterial | None) -> int:
    async with open_channel(target, credentials=PeerCredentials(tls)) as channel:
        reply = await inventory_grpc.InventoryServiceStub(channel).CheckAvailability(
            inventory_pb.CheckAvailabilityRequest(skus=["CAP-1"]), timeout=5
        )
    return reply.availability[0].on_hand


async def refused(target: str, tls: TlsMaterial | None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stock_of_cap(target, tls)
    return error.value


async def test_tls_answers_a_client_that_verifies_the_server_and_refuses_plaintext(start, pki, sqlite_url, tmp_path):
    target = await inventory(start, sqlite_url, settings_as(pki, "inventory", tmp_path, mutual=False))
    assert await stock_of_cap(target, client(pki, name=None)) == 7
    assert (await refused(target, None)).code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_refuses_a_server_whose_certificate_another_ca_signed(
    start, pki, stranger_pki, sqlite_url, tmp_path
):
    target = await inventory(start, sqlite_url, settings_as(pki, "inventory", tmp_path, mutual=False))
    error = await refused(target, client(stranger_pki, name=None))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in error.details()


async def test_mutual_tls_accepts_the_cli_certificate(start, pki, sqlite_url, tmp_path):
    target = await inventory(start, sqlite_url, settings_as(pki, "inventory", tmp_path))
    assert await stock_of_cap(target, client(pki)) == 7
    # Any certificate of the same CA is a valid client: a peer service calling with its own.
    assert await stock_of_cap(target, client(pki, name="decision")) == 7


async def test_mutual_tls_refuses_clients_without_a_trusted_certificate(start, pki, stranger_pki, sqlite_url, tmp_path):
    target = await inventory(start, sqlite_url, settings_as(pki, "inventory", tmp_path))
    assert (await refused(target, client(pki, name=None))).code() == grpc.StatusCode.UNAVAILABLE
    # Signed by another CA, while trusting ours: the server cannot verify it.
    assert (await refused(target, client(stranger_pki, trust=pki))).code() == grpc.StatusCode.UNAVAILABLE
    assert (await refused(target, None)).code() == grpc.StatusCode.UNAVAILABLE
    assert await stock_of_cap(target, client(pki)) == 7  # the refusals did not hurt the server


async def test_peer_hops_run_over_mutual_tls(start, pki, sqlite_url, tmp_path):
    identity = await start(
        build_identity(IdentitySettings(database_url=sqlite_url, port=0, common=settings_as(pki, "identity", tmp_path))),
        settings_as(pki, "identity", tmp_path),
    )
    profile_settings = ProfileSettings(
        database_url=sqlite_url, port=0, identity_target=identity, common=settings_as(pki, "profile", tmp_path)
    )
    profile = await start(build_profile(profile_settings), profile_settings.common)

    # The CLI → profile (mTLS) → identity (mTLS with profile's certificate) to resolve the anonymous visitor.
    visit = ppb.Event(
        event_id="tls-1",
        occurred_at=to_timestamp(datetime.now(UTC) - timedelta(hours=1)),
        source="test",
        page_view=ppb.PageView(page="home"),
    )
    visit.identifiers.append(common.Identifier(type=EMAIL, value="ann@example.com"))
    async with open_channel(profile, credentials=PeerCredentials(client(pki))) as channel:
        answer = await ppb_grpc.ProfileServiceStub(channel).IngestEvents(
            ppb.IngestEventsRequest(events=[visit]), timeout=10
        )
    assert (answer.accepted, list(answer.rejected)) == (1, [])

    async with open_channel(identity, credentials=PeerCredentials(client(pki))) as channel:
        resolved = await ipb_grpc.IdentityServiceStub(channel).Resolve(
            ipb.ResolveRequest(identifiers=[common.Identifier(type=EMAIL, value="ann@example.com")]), timeout=5
        )
    assert resolved.customer_id

    # The decision's gateway, built with decision's certificate, finds the same customer.
    gateway = IdentityGateway(identity, PeerCredentials(load_tls(settings_as(pki, "decision", tmp_path))))
    gateway.open()
    try:
        assert await gateway.resolve([(EMAIL, "ann@example.com")], timeout=5, field="customer") == resolved.customer_id
    finally:
        await gateway.close()


async def test_the_cli_uses_the_tls_settings_for_commands_and_health_checks(
    start, pki, sqlite_url, tmp_path, monkeypatch, capsys
):
    target = await inventory(start, sqlite_url, settings_as(pki, "inventory", tmp_path))
    for variable in ("NEXTBEST_TLS_CERT_FILE", "NEXTBEST_TLS_KEY_FILE", "NEXTBEST_TLS_CA_FILE"):
        monkeypatch.delenv(variable, raising=False)
    assert not await wait_healthy(target, timeout=0.5)  # plaintext: refused

    monkeypatch.setenv("NEXTBEST_TLS_CERT_FILE", str(pki / "cli.pem"))
    monkeypatch.setenv("NEXTBEST_TLS_KEY_FILE", str(pki / "cli.key"))
    monkeypatch.setenv("NEXTBEST_TLS_CA_FILE", str(pki / "ca.pem"))
    assert await wait_healthy(target, timeout=5)
    args = build_parser().parse_args(["availability", "--sku", "CAP-1", "--target", target])
    capsys.readouterr()
    assert await args.func(args) == 0
    assert "CAP-1" in capsys.readouterr().out
