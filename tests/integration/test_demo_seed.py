"""`nextbest demo seed` end to end into temporary data dirs, checked through the services' own RPCs.

Runs on the embedded default (one SQLite file per service in the data dir) and on PostgreSQL (NEXTBEST_DATABASE_URL
set, as the benchmark seeds it).
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import orjson
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.identity.v1 import identity_service_pb2 as ipb
from nextbest.identity.v1 import identity_service_pb2_grpc as ipb_grpc
from nextbest.inventory.v1 import inventory_service_pb2 as invpb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as invpb_grpc
from nextbest.profile.v1 import profile_service_pb2 as ppb
from nextbest.profile.v1 import profile_service_pb2_grpc as ppb_grpc
from nextbest.scoring.v1 import scoring_service_pb2 as spb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as spb_grpc

from cli.demo.retailer import generate
from cli.demo.seed import MARKER, SHOWCASE, SeedConflict, seed
from cli.demo.training import MODEL_FEATURE_NAMES
from libs.settings import CommonSettings
from services.decision.catalogue import load_catalogue
from services.decision.features import RequestContext, offer_features
from services.decision.settings import DecisionSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.inventory.app import build as build_inventory
from services.inventory.settings import InventorySettings
from services.profile.app import build as build_profile
from services.profile.domain.state import FOLD_VERSION
from services.profile.settings import ProfileSettings
from services.scoring.app import build as build_scoring
from services.scoring.settings import ScoringSettings

pytestmark = pytest.mark.integration

EMAIL = common_pb2.IDENTIFIER_TYPE_EMAIL
LOYALTY_CARD = common_pb2.IDENTIFIER_TYPE_LOYALTY_CARD
PHONE = common_pb2.IDENTIFIER_TYPE_PHONE


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, monkeypatch) -> str:
    """The seeder and the services read NEXTBEST_DATABASE_URL: unset means SQLite files in the data dir."""
    monkeypatch.delenv("NEXTBEST_DATABASE_URL", raising=False)
    if request.param == "postgres":
        monkeypatch.setenv("NEXTBEST_DATABASE_URL", request.getfixturevalue("postgres_url"))
    return request.param


async def _resolve(identity, kind: int, value: str) -> str:
    answer = await identity.Resolve(ipb.ResolveRequest(identifiers=[common_pb2.Identifier(type=kind, value=value)]))
    return answer.customer_id


async def test_seed_loads_every_service_through_its_contract(backend, tmp_path, serve):
    lines: list[str] = []
    report = await seed(customers=200, seed=5, data_dir=tmp_path, impressions=4000, out=lines.append)
    assert not report.skipped
    assert report.events_rejected == 0 and report.events_duplicate == 0
    assert report.events_accepted > 200 * 20
    assert report.offers == 41 and report.stock_rows > 2500
    assert report.model_auc > 0.6
    assert any("AUC" in line for line in lines)

    common = CommonSettings(data_dir=tmp_path)
    people = generate(200, seed=5, now=datetime.now(UTC)).customers
    showcase = orjson.loads((tmp_path / SHOWCASE).read_bytes())
    assert showcase == report.showcase

    identity_server, identity_channel = await serve(build_identity(IdentitySettings(common=common)))
    identity = ipb_grpc.IdentityServiceStub(identity_channel)
    loyal_id = await _resolve(identity, EMAIL, people[0].email)
    assert loyal_id == showcase["loyal_customer_id"]
    assert await _resolve(identity, LOYALTY_CARD, showcase["pos"]["loyalty_card"]) == loyal_id
    assert await _resolve(identity, PHONE, people[0].phone) == loyal_id
    assert await _resolve(identity, EMAIL, showcase["web"]["email"]) not in ("", loyal_id)
    assert await _resolve(identity, PHONE, showcase["call_center"]["phone"]) not in ("", loyal_id)
    consents = (await identity.GetConsent(ipb.GetConsentRequest(customer_id=loyal_id))).consents
    assert any(c.purpose == ipb.CONSENT_PURPOSE_MARKETING and c.channel == common_pb2.CHANNEL_WEB and c.granted
               for c in consents)

    profile_settings = ProfileSettings(common=common, identity_target=f"127.0.0.1:{identity_server.port}")
    _, profile_channel = await serve(build_profile(profile_settings))
    profile = ppb_grpc.ProfileServiceStub(profile_channel)
    answer = await profile.GetProfile(ppb.GetProfileRequest(customer_id=loyal_id, include_features=True))
    traits = answer.profile.traits
    assert traits.order_count >= 1 and traits.total_spend > 0
    assert traits.loyalty_tier == ppb.LOYALTY_TIER_PLATINUM
    assert list(traits.preferences.sizes) == list(people[0].sizes)
    assert answer.features["order_count"] == traits.order_count

    _, inventory_channel = await serve(build_inventory(InventorySettings(common=common)))
    inventory = invpb_grpc.InventoryServiceStub(inventory_channel)
    sku = showcase["pos"]["sku"]
    stock = await inventory.CheckAvailability(invpb.CheckAvailabilityRequest(skus=[sku]))
    on_hand = {a.location_id: a.on_hand for a in stock.availability}
    assert set(on_hand) == {"S1", "S2", "S3", "S4", "S5", "DC1"}
    assert on_hand["S1"] == 0 and on_hand["DC1"] > 0

    catalogue = load_catalogue(DecisionSettings(common=common).resolved_catalogue_dir)
    assert len(catalogue.offers) == 41 and sku in catalogue.product_of_sku

    _, scoring_channel = await serve(build_scoring(ScoringSettings(common=common)))
    scoring = spb_grpc.ScoringServiceStub(scoring_channel)
    models = (await scoring.ListModels(spb.ListModelsRequest(use_case="offer_propensity"))).models
    assert [m.version for m in models] == [report.model_version]
    assert list(models[0].feature_names) == list(MODEL_FEATURE_NAMES)
    web_offers = [o for o in catalogue.offers if "web" in o.channels]
    scores = await scoring.Score(spb.ScoreRequest(
        customer_id=loyal_id,
        customer_features=answer.features,
        candidates=[spb.Candidate(offer_id=o.id, offer_features=offer_features(o, RequestContext("web"), catalogue))
                    for o in web_offers],
    ))
    assert scores.model_version == report.model_version
    probabilities = [s.probability for s in scores.scores]
    assert len(probabilities) == len(web_offers) and all(0 < p < 1 for p in probabilities)
    assert len(set(probabilities)) > 1

    # The marker makes the same run a no-op, and refuses other parameters without --force.
    marker = orjson.loads((tmp_path / MARKER).read_bytes())
    assert marker["parameters"] == {"customers": 200, "seed": 5}
    assert marker["fold_version"] == FOLD_VERSION  # the bench seeds again when the profile's fold changes
    assert marker["summary"]["events_accepted"] == report.events_accepted
    lines.clear()
    again = await seed(customers=200, seed=5, data_dir=tmp_path, out=lines.append)
    assert again.skipped and "already seeded" in lines[0] and len(lines) == 1
    assert again.showcase == showcase
    assert len(list((tmp_path / "models" / "offer_propensity").iterdir())) == 1
    with pytest.raises(SeedConflict, match="--force"):
        await seed(customers=300, seed=5, data_dir=tmp_path, out=lines.append)


async def test_force_starts_from_empty_databases(backend, tmp_path, serve):
    first = await seed(customers=30, seed=1, data_dir=tmp_path, impressions=2000, out=lambda _: None)
    second = await seed(customers=20, seed=2, force=True, data_dir=tmp_path, impressions=2000, out=lambda _: None)
    # Event ids repeat between runs ("demo-{index}-{n}"): none is a duplicate, so the profile store was emptied.
    assert second.events_duplicate == 0 and second.events_accepted > 0
    assert second.model_version != first.model_version
    assert [p.name for p in (tmp_path / "models" / "offer_propensity").iterdir()] == [second.model_version]
    assert orjson.loads((tmp_path / MARKER).read_bytes())["parameters"] == {"customers": 20, "seed": 2}

    _, channel = await serve(build_identity(IdentitySettings(common=CommonSettings(data_dir=tmp_path))))
    identity = ipb_grpc.IdentityServiceStub(channel)
    old = generate(30, seed=1, now=datetime.now(UTC)).customers
    new = generate(20, seed=2, now=datetime.now(UTC)).customers
    assert await _resolve(identity, EMAIL, new[0].email) == second.showcase["loyal_customer_id"]
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await _resolve(identity, EMAIL, old[25].email)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
