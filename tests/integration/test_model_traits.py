"""Nightly rescoring end to end on real SQLite and PostgreSQL: a real profile and a real scoring service in
process, a lifetime-value model trained and promoted, `rescore` pages through ListFeatures, scores with ScoreBatch
and writes model traits back; GetProfile shows them with version and time; a re-run changes nothing; a newer
champion version replaces them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from nextbest.profile.v1 import profile_service_pb2 as pb
from nextbest.profile.v1 import profile_service_pb2_grpc as pb_grpc
from nextbest.scoring.v1 import scoring_service_pb2 as spb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as spb_grpc

from libs.protoconv import from_timestamp, to_timestamp
from libs.settings import CommonSettings
from services.identity.app import build as build_identity
from services.identity.settings import IdentitySettings
from services.profile.app import build as build_profile
from services.profile.domain import FEATURE_NAMES
from services.profile.settings import ProfileSettings
from services.scoring.app import build as build_scoring
from services.scoring.lifetime_value import LTV_FEATURES
from services.scoring.offline import train_lifetime_value_candidate
from services.scoring.rescore import event_id, rescore
from services.scoring.settings import ScoringSettings
from tests.unit.test_scoring_lifetime_value import synthetic_history

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
#: host:port of the services the current test's `mesh` started (for the CLI).
TARGETS: dict[str, str] = {}
#: Customers with orders (frequent ones first), and one who only browsed: the LTV model cannot score them.
FREQUENT, LAPSED, BROWSER = [f"c-{i:02d}" for i in range(6)], [f"c-{i:02d}" for i in range(6, 12)], "c-browse"


def purchase(customer_id: str, n: int, days_ago: float, amount: float) -> pb.Event:
    return pb.Event(
        event_id=f"buy-{customer_id}-{n}", customer_id=customer_id, source="test",
        occurred_at=to_timestamp(NOW - timedelta(days=days_ago)),
        purchase=pb.Purchase(order_id=f"o-{customer_id}-{n}",
                             lines=[pb.OrderLine(sku="SKU-1", quantity=1, unit_price=amount)]),
    )


def history() -> list[pb.Event]:
    events = []
    for customer_id in FREQUENT:  # a big order every month for two years
        events += [purchase(customer_id, n, days_ago=5 + 30 * n, amount=150.0) for n in range(24)]
    for customer_id in LAPSED:  # one small order long ago
        events.append(purchase(customer_id, 0, days_ago=700, amount=20.0))
    events.append(pb.Event(event_id="view-1", customer_id=BROWSER, source="test",
                           occurred_at=to_timestamp(NOW - timedelta(days=1)), page_view=pb.PageView(page="home")))
    return events


@pytest.fixture
async def mesh(serve, database_url, tmp_path):
    """(profile stub, scoring stub, scoring settings): the two services on one database, their own tables."""
    common = CommonSettings(data_dir=tmp_path)
    identity, _ = await serve(build_identity(IdentitySettings(database_url=database_url, port=0, common=common)))
    profile_server, profile_channel = await serve(build_profile(ProfileSettings(
        database_url=database_url, port=0, identity_target=f"127.0.0.1:{identity.port}", common=common)))
    scoring_settings = ScoringSettings(database_url=database_url, port=0, models_dir=tmp_path / "models",
                                       registry_poll_seconds=0.2, common=common)
    scoring_server, scoring_channel = await serve(build_scoring(scoring_settings))
    TARGETS["profile"], TARGETS["scoring"] = f"127.0.0.1:{profile_server.port}", f"127.0.0.1:{scoring_server.port}"
    profile = pb_grpc.ProfileServiceStub(profile_channel)
    events = history()
    for start in range(0, len(events), 500):
        reply = await profile.IngestEvents(pb.IngestEventsRequest(events=events[start:start + 500]), timeout=30)
        assert not reply.rejected
    return profile, spb_grpc.ScoringServiceStub(scoring_channel), scoring_settings


async def champion_from_history(scoring, settings: ScoringSettings, seed: int) -> str:
    trained = await train_lifetime_value_candidate(settings, "lifetime_value", synthetic_history(400, seed=seed),
                                                   seed=seed)
    version = trained.metadata.version
    await scoring.PromoteModel(spb.PromoteModelRequest(use_case="lifetime_value", version=version,
                                                       target=spb.MODEL_STATUS_CHAMPION), timeout=30)
    return version


async def model_trait(profile, customer_id: str) -> pb.ModelTrait | None:
    reply = await profile.GetProfile(pb.GetProfileRequest(customer_id=customer_id), timeout=10)
    return reply.profile.model_traits.get("lifetime_value")


async def test_rescoring_writes_model_traits_idempotently_and_a_newer_version_replaces_them(mesh):
    profile, scoring, settings = mesh
    first = await champion_from_history(scoring, settings, seed=1)
    scored_at = NOW - timedelta(minutes=1)

    report = await rescore(profile, scoring, "lifetime_value", page_size=5, clock=lambda: scored_at)

    scorable = len(FREQUENT) + len(LAPSED)
    assert (report.model_version, report.customers, report.scored, report.skipped) == (first, scorable + 1, scorable, 1)
    assert (report.accepted, report.duplicates, report.rejected) == (scorable, 0, 0)
    trait = await model_trait(profile, FREQUENT[0])
    assert trait.model_version == first and trait.model_name == "lifetime-value-xgb"
    assert from_timestamp(trait.scored_at) == scored_at
    lapsed = await model_trait(profile, LAPSED[0])
    assert trait.value > lapsed.value >= 0  # a monthly big spender is predicted to spend more than a lapsed one
    assert await model_trait(profile, BROWSER) is None  # never ordered: outside what the model knows
    # The prediction is not fed back into the features the propensity models read.
    features = await profile.GetFeatures(pb.GetFeaturesRequest(customer_id=FREQUENT[0]), timeout=10)
    assert set(features.features) == set(FEATURE_NAMES)

    again = await rescore(profile, scoring, "lifetime_value", page_size=7, clock=lambda: NOW)
    assert (again.accepted, again.duplicates, again.model_version) == (0, scorable, first)
    unchanged = await model_trait(profile, FREQUENT[0])
    assert unchanged == trait  # same version: same event ids, nothing applied, not even the later time

    second = await champion_from_history(scoring, settings, seed=2)
    assert second != first
    newer = await rescore(profile, scoring, "lifetime_value", page_size=1000, clock=lambda: NOW)
    assert (newer.model_version, newer.accepted, newer.duplicates) == (second, scorable, 0)
    replaced = await model_trait(profile, FREQUENT[0])
    assert replaced.model_version == second and from_timestamp(replaced.scored_at) == NOW


async def test_rescoring_a_use_case_without_champion_or_with_inputs_the_profile_lacks_fails_precisely(mesh):
    profile, scoring, settings = mesh
    from libs.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="no champion"):
        await rescore(profile, scoring, "churn_risk")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await profile.ListFeatures(pb.ListFeaturesRequest(names=["total_spend", "discount"]), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "names[1]: unknown feature 'discount'"


async def test_list_features_pages_every_customer_in_id_order_as_a_dense_matrix(mesh):
    profile, _, _ = mesh
    names = ["order_count", "spend_365d", "tenure_days", "net_spend_365d"]
    seen, rows, token = [], [], ""
    while True:
        page = await profile.ListFeatures(pb.ListFeaturesRequest(names=names, page_size=5, page_token=token),
                                          timeout=10)
        assert list(page.names) == names and len(page.values) == len(names) * len(page.customer_ids)
        assert len(page.customer_ids) <= 5
        seen += page.customer_ids
        rows += [page.values[i:i + len(names)] for i in range(0, len(page.values), len(names))]
        if not (token := page.next_page_token):
            break
    assert seen == sorted([*FREQUENT, *LAPSED, BROWSER])
    by_id = dict(zip(seen, rows, strict=True))
    assert by_id[FREQUENT[0]][0] == 24 and by_id[FREQUENT[0]][1] == 150.0 * 12  # orders 5..335 days ago: 12 in a year
    assert by_id[FREQUENT[0]][3] == by_id[FREQUENT[0]][1]  # a trait column; nothing refunded: net is gross
    assert by_id[LAPSED[0]][:2] == [1, 0.0]
    everything = await profile.ListFeatures(pb.ListFeaturesRequest(), timeout=10)
    assert list(everything.names) == list(FEATURE_NAMES) and len(everything.customer_ids) == len(seen)
    for bad, details in ((pb.ListFeaturesRequest(page_token="nope"), "page_token: "),
                         (pb.ListFeaturesRequest(page_size=-1), "page_size: ")):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await profile.ListFeatures(bad, timeout=10)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(details)


def test_event_ids_are_readable_and_stay_within_the_profile_limit():
    assert event_id("lifetime_value", "v1", "c-1") == "model:lifetime_value:v1:c-1"
    long = event_id("lifetime_value", "v1", "c" * 128)
    assert len(long) <= 128 and long != event_id("lifetime_value", "v2", "c" * 128)



async def test_the_cli_rescores_against_running_services_and_reports_rows_per_second(mesh, capsys):
    from cli.main import build_parser

    profile, scoring, settings = mesh
    version = await champion_from_history(scoring, settings, seed=1)
    argv = ["model", "rescore", "lifetime_value", "--batch", "4", "--target", TARGETS["scoring"],
            "--profile-target", TARGETS["profile"]]
    args = build_parser().parse_args(argv)
    assert await args.func(args) == 0
    out = capsys.readouterr().out
    assert f"rescored lifetime_value with lifetime-value-xgb {version}: 13 customers read, 12 scored" in out, out
    assert "12 traits written, 0 already written" in out and "rows/s" in out
    assert (await model_trait(profile, LAPSED[-1])).model_version == version

    args = build_parser().parse_args(["model", "rescore", "churn_risk", "--target", TARGETS["scoring"],
                                      "--profile-target", TARGETS["profile"]])
    assert await args.func(args) == 1
    assert "use case 'churn_risk' has no champion" in capsys.readouterr().err


async def test_churn_risk_is_trained_from_transactions_and_rescored_into_the_profile(mesh, monkeypatch, tmp_path,
                                                                                     database_url, capsys):
    from cli.main import build_parser

    profile, scoring, settings = mesh
    monkeypatch.setenv("NEXTBEST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEXTBEST_SCORING_DATABASE_URL", database_url)
    monkeypatch.setenv("NEXTBEST_SCORING_MODELS_DIR", str(settings.models_dir))
    path = tmp_path / "transactions.csv"
    lines = ["customer_id,occurred_at,amount,type"]
    lines += [f"{t.customer_id},{t.occurred_at.isoformat()},{t.amount:.2f},{t.kind}" for t in synthetic_history()]
    path.write_text("\n".join(lines) + "\n")

    args = build_parser().parse_args(["model", "train", "churn_risk", "--transactions", str(path),
                                      "--churn-days", "90"])
    assert await args.func(args) == 0
    out = capsys.readouterr().out
    assert "the model beats the recency baseline on hold-out AUC" in out, out
    [model] = (await scoring.ListModels(spb.ListModelsRequest(use_case="churn_risk"), timeout=10)).models
    assert list(model.feature_names) == list(LTV_FEATURES) and model.metrics["auc"] > model.metrics["baseline_auc"]
    await scoring.PromoteModel(spb.PromoteModelRequest(use_case="churn_risk", version=model.version,
                                                       target=spb.MODEL_STATUS_CHAMPION), timeout=30)

    report = await rescore(profile, scoring, "churn_risk", clock=lambda: NOW)
    assert (report.accepted, report.skipped) == (len(FREQUENT) + len(LAPSED), 1)
    traits = [(await profile.GetProfile(pb.GetProfileRequest(customer_id=c), timeout=10)).profile.model_traits
              for c in (FREQUENT[0], LAPSED[0])]
    frequent, lapsed = (t["churn_risk"] for t in traits)
    assert 0 <= frequent.value < lapsed.value <= 1  # a probability: the lapsed customer is the likelier churner
    assert frequent.model_version == model.version and "lifetime_value" not in traits[0]


async def test_a_champion_whose_inputs_the_profile_lacks_fails_with_the_profiles_answer(mesh, tmp_path):
    from services.scoring.offline import train_from_dataset
    from services.scoring.tabular import load_csv

    profile, scoring, settings = mesh
    path = tmp_path / "offers.csv"
    rows = ["order_count,discount,accepted"] + [f"{i % 7},{i % 3},{'yes' if i % 7 > 3 else 'no'}" for i in range(400)]
    path.write_text("\n".join(rows) + "\n")
    trained = await train_from_dataset(settings, "offer_propensity", load_csv(path, "accepted"), seed=1)
    await scoring.PromoteModel(spb.PromoteModelRequest(use_case="offer_propensity", version=trained.metadata.version,
                                                       target=spb.MODEL_STATUS_CHAMPION), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await rescore(profile, scoring, "offer_propensity")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "names[1]: unknown feature 'discount'"
