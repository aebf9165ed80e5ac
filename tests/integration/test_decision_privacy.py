"""Channel responses carry only what the channel needs: no decision answer echoes the customer's PII.

The real identity service holds a customer with a name, an address, a date of birth, an e-mail address, a phone
number and a loyalty card; the decision service resolves that customer for every channel (profile, scoring and
inventory are the fakes). Each channel's serialized response must contain none of those values.

Decided: no channel is sent any PII, not even the given name. The web never gets what it did not send; the POS
associate and the call-centre agent already have the person in front of them or on the line, and the scripts
are written to work without a name, so the decision service never reads names at all (data minimisation).
"""

from __future__ import annotations

import pytest
from nextbest.common.v1 import common_pb2 as common
from nextbest.decision.v1 import decision_service_pb2 as pb
from nextbest.decision.v1 import decision_service_pb2_grpc as pb_grpc
from nextbest.identity.v1 import identity_service_pb2 as identity_pb
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc

from libs.server import Registration, ServiceApp
from libs.settings import CommonSettings
from services.decision.app import build as build_decision
from services.decision.settings import DecisionSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from tests.integration.decision_fakes import (
    CALL_CENTER,
    POS,
    WEB,
    FakeInventory,
    FakeProfile,
    FakeScoring,
    gold_profile,
    write_catalogue,
)

pytestmark = pytest.mark.integration

EMAIL, PHONE, CARD = common.IDENTIFIER_TYPE_EMAIL, common.IDENTIFIER_TYPE_PHONE, common.IDENTIFIER_TYPE_LOYALTY_CARD
TRAITS = identity_pb.PersonTraits(
    given_name="Annabel",
    surname="Quixote-Lindqvist",
    date_of_birth="1987-06-05",
    street_number="221B",
    address_line="Baker Street",
    city="Springfield",
    postcode="94110",
    state="Vermont",
)
IDENTIFIERS = {EMAIL: "annabel.quixote@example.com", PHONE: "+14155550123", CARD: "LC-99887766"}
#: Every PII value as seeded, plus the forms identity normalises them to (and bare digits of the phone number).
PII = sorted(
    {
        *(value for _, value in TRAITS.ListFields()),
        *IDENTIFIERS.values(),
        "4155550123",
        "lc-99887766",
        "LC99887766",
    }
)


#: The channel-specific parts of a RankedOffer each channel may receive.
CHANNEL_PARTS = {WEB: {"prefill"}, POS: {"script", "stock"}, CALL_CENTER: {"script"}}


def channel_parts(reply: pb.DecideResponse) -> set[str]:
    """Which channel-specific parts any offer of the reply carries."""
    return {
        part
        for offer in reply.offers
        for part, present in (("prefill", offer.HasField("prefill")), ("script", offer.script), ("stock", offer.stock))
        if present
    }


def ident(kind: int) -> common.Identifier:
    return common.Identifier(type=kind, value=IDENTIFIERS[kind])


def leaked(response) -> list[str]:
    """The PII values found anywhere in the serialized response (as UTF-8, any case)."""
    raw = response.SerializeToString().decode("utf-8", errors="replace").lower()
    return [value for value in PII if value.lower() in raw]


@pytest.fixture
async def mesh(serve, database_url, tmp_path):
    """The decision service wired to the REAL identity service holding the PII, and to fakes for the rest."""
    identity_server, identity_channel = await serve(
        build_identity(IdentitySettings(database_url=database_url, port=0, common=CommonSettings(data_dir=tmp_path)))
    )
    identity = identity_grpc.IdentityServiceStub(identity_channel)
    customer_id = (
        await identity.Resolve(
            identity_pb.ResolveRequest(identifiers=[ident(k) for k in IDENTIFIERS], create_if_missing=True, traits=TRAITS),
            timeout=5,
        )
    ).customer_id
    await identity.SetConsent(
        identity_pb.SetConsentRequest(
            customer_id=customer_id,
            consents=[
                identity_pb.Consent(purpose=identity_pb.CONSENT_PURPOSE_MARKETING, channel=c, granted=True, source="t")
                for c in (WEB, POS, CALL_CENTER)
            ],
        ),
        timeout=5,
    )
    profile = FakeProfile()
    seeded, features = gold_profile()
    seeded.customer_id = customer_id
    profile.profiles = {customer_id: (seeded, features)}
    targets = {}
    for name, fake, add, full_name in (
        ("profile", profile, profile_grpc.add_ProfileServiceServicer_to_server, "nextbest.profile.v1.ProfileService"),
        ("scoring", FakeScoring(), scoring_grpc.add_ScoringServiceServicer_to_server, "nextbest.scoring.v1.ScoringService"),
        (
            "inventory",
            FakeInventory(),
            inventory_grpc.add_InventoryServiceServicer_to_server,
            "nextbest.inventory.v1.InventoryService",
        ),
    ):
        server, _ = await serve(ServiceApp(f"fake-{name}", [Registration(add, fake, full_name)]))
        targets[f"{name}_target"] = f"127.0.0.1:{server.port}"
    settings = DecisionSettings(
        database_url=database_url,
        port=0,
        common=CommonSettings(data_dir=tmp_path),
        identity_target=f"127.0.0.1:{identity_server.port}",
        catalogue_dir=write_catalogue(tmp_path / "catalogue"),
        budget_web_ms=2000,
        budget_pos_ms=2000,
        budget_call_center_ms=2000,
        **targets,
    )
    _, channel = await serve(build_decision(settings))
    return pb_grpc.DecisionServiceStub(channel), customer_id


@pytest.mark.parametrize(
    ("channel", "identified_by", "context"),
    [
        pytest.param(WEB, EMAIL, pb.DecisionContext(page="product", sku="TEE-M-WHT"), id="web"),
        pytest.param(POS, CARD, pb.DecisionContext(store_id="S1"), id="pos"),
        pytest.param(CALL_CENTER, PHONE, pb.DecisionContext(call_reason="complaint"), id="call_centre"),
    ],
)
async def test_decide_response_carries_no_pii_to_any_channel(mesh, channel, identified_by, context):
    stub, customer_id = mesh
    reply = await stub.Decide(
        pb.DecideRequest(
            channel=channel, customer=common.CustomerRef(identifiers=[ident(identified_by)]), context=context, max_offers=10
        ),
        timeout=5,
    )
    assert reply.customer_id == customer_id and reply.offers  # the PII customer really was decided for
    assert not reply.degraded, reply.degraded_reasons
    assert leaked(reply) == []
    # Each channel gets only its own parts: the web a cart pre-fill (the customer's saved size, colour and shipping
    # choice, for their own one-click cart), POS a script and shelf stock, the call centre a script.
    assert channel_parts(reply) == CHANNEL_PARTS[channel]


async def test_prioritize_call_and_explain_carry_no_pii(mesh):
    stub, customer_id = mesh
    call = await stub.PrioritizeCall(
        pb.PrioritizeCallRequest(customer=common.CustomerRef(identifiers=[ident(PHONE)]), call_reason="cancel"),
        timeout=5,
    )
    assert call.customer_id == customer_id and call.HasField("next_best_action")
    assert leaked(call) == []
    assert channel_parts(pb.DecideResponse(offers=[call.next_best_action])) == CHANNEL_PARTS[CALL_CENTER]
    explained = await stub.Explain(pb.ExplainRequest(decision_id=call.decision_id), timeout=5)
    assert explained.customer_id == customer_id and explained.considered
    assert leaked(explained) == []


def test_the_leak_check_finds_a_planted_name():
    planted = pb.DecideResponse(offers=[pb.RankedOffer(script=f"Say hello to {TRAITS.given_name.upper()}!")])
    assert leaked(planted) == ["Annabel"]
