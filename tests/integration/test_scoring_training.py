"""`nextbest model train|compare` against real registries (SQLite and PostgreSQL), a real decision log and the
served result: a CSV-trained model with categorical features scores and explains through the contract."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from nextbest.scoring.v1 import scoring_service_pb2 as pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as pb_grpc
from sqlalchemy import insert

from cli.main import build_parser
from libs.db import create_engine, migrate
from libs.settings import CommonSettings
from services.decision.storage import decisions as decision_table
from services.decision.storage import outcomes as outcome_table
from services.scoring.app import build
from services.scoring.artifacts import ModelStatus
from services.scoring.offline import registry_for
from services.scoring.settings import ScoringSettings
from tests.integration.decision_fakes import write_catalogue

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
#: The shared development data sits beside the repository (../shared), as on every dev machine and in CI.
BANK = Path(__file__).resolve().parents[3] / "shared" / "data" / "bank-marketing" / "bank-full.csv"


def cli_env(monkeypatch, database_url: str, tmp_path: Path) -> ScoringSettings:
    """The CLI's environment: this test's registry database and a fresh models folder."""
    monkeypatch.setenv("NEXTBEST_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEXTBEST_SCORING_DATABASE_URL", database_url)
    monkeypatch.setenv("NEXTBEST_SCORING_MODELS_DIR", str(tmp_path / "models"))
    return ScoringSettings(database_url=database_url, port=0, models_dir=tmp_path / "models",
                           common=CommonSettings(data_dir=tmp_path))


@pytest.fixture
def scoring_env(monkeypatch, database_url, tmp_path) -> ScoringSettings:
    return cli_env(monkeypatch, database_url, tmp_path)


async def run_cli(*argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return await args.func(args)


async def registered(settings: ScoringSettings, use_case: str):
    async with registry_for(settings) as (registry, _):
        return await registry.models(use_case)


def write_offers_csv(path: Path, rows: int = 1500, seed: int = 4) -> None:
    """Acceptance depends on the segment (categorical), the discount (numeric) and leaks through `call_seconds`."""
    rng = np.random.default_rng(seed)
    segments = ["bargain", "loyal", "new"]
    lines = ["segment,discount,visits,call_seconds,accepted"]
    for _ in range(rows):
        segment = segments[int(rng.integers(3))]
        discount = float(rng.uniform(0, 30))
        visits = "" if rng.random() < 0.1 else str(int(rng.integers(0, 20)))
        z = {"bargain": 1.0, "loyal": 0.2, "new": -1.0}[segment] + 0.08 * discount - 1.5
        accepted = rng.random() < 1 / (1 + np.exp(-z))
        call = rng.uniform(200, 400) if accepted else rng.uniform(0, 200)
        lines.append(f"{segment},{discount:.2f},{visits},{call:.0f},{'Y' if accepted else 'N'}")
    path.write_text("\n".join(lines) + "\n")


async def test_a_csv_trained_candidate_is_registered_then_served_with_categories_and_explained(
    serve, scoring_env, tmp_path, capsys
):
    csv = tmp_path / "offers.csv"
    write_offers_csv(csv)
    code = await run_cli("model", "train", "offer_response", "--csv", str(csv), "--label", "accepted",
                         "--drop", "call_seconds", "--positive", "Y")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "registered offer_response/" in out and "reliability" in out and "lift by decile" in out
    [model] = await registered(scoring_env, "offer_response")
    assert model.status is ModelStatus.CANDIDATE and model.parent_version is None
    assert [(f.name, sorted(f.levels)) for f in model.features] == [
        ("segment", ["bargain", "loyal", "new"]), ("discount", []), ("visits", [])]
    assert "call_seconds" not in model.feature_names
    assert model.row_counts["test"] == 300 and model.metrics["auc"] > 0.65
    assert model.card["data"]["dropped"] == ["call_seconds"] and model.card["split"] == "stratified_random"
    assert len(model.card["reliability"]) == 10 and len(model.card["lift_by_decile"]) == 10
    assert "baseline_auc" in model.metrics

    _, channel = await serve(build(scoring_env))
    stub = pb_grpc.ScoringServiceStub(channel)
    await stub.PromoteModel(pb.PromoteModelRequest(use_case="offer_response", version=model.version,
                                                   target=pb.MODEL_STATUS_CHAMPION), timeout=10)
    score = pb.ScoreRequest(
        use_case="offer_response", customer_id="c-1", customer_categories={"segment": "bargain"},
        customer_features={"visits": 3},
        candidates=[pb.Candidate(offer_id="d25", offer_features={"discount": 25}),
                    pb.Candidate(offer_id="d0-new", offer_features={"discount": 0},
                                 offer_categories={"segment": "new"})],
    )
    reply = await stub.Score(score, timeout=5)
    high, low = (s.probability for s in reply.scores)
    assert reply.model_version == model.version and high > low
    explained = await stub.Explain(pb.ExplainRequest(
        use_case="offer_response", customer_categories=score.customer_categories,
        customer_features=score.customer_features, candidates=score.candidates, top_k=3), timeout=5)
    segment = {c.feature: c for c in explained.explanations[1].contributions}["segment"]
    assert (segment.value, segment.direction) == ("new", pb.DIRECTION_LOWERS)

    # Scheduled retraining: the candidate names the champion as its parent, is compared with it on the same
    # hold-out rows, and is promoted only if it beats it by the margin.
    retrain = ("model", "train", "offer_response", "--csv", str(csv), "--label", "accepted", "--drop", "call_seconds",
               "--positive", "Y", "--auto-promote")
    assert await run_cli(*retrain, "--margin", "0.5") == 0
    assert "kept the champion" in capsys.readouterr().out
    kept = (await registered(scoring_env, "offer_response"))[0]
    assert kept.parent_version == model.version and kept.status is ModelStatus.CANDIDATE
    comparison = kept.card["champion_comparison"]
    # Same data and seed: the same hold-out, the same trees, the same AUC for both.
    assert comparison["champion_version"] == model.version
    assert comparison["champion_auc"] == pytest.approx(comparison["candidate_auc"], abs=1e-9)
    assert (await stub.Score(score, timeout=5)).model_version == model.version

    assert await run_cli(*retrain, "--margin", "0") == 0
    assert "promoted offer_response/" in capsys.readouterr().out
    newest = (await registered(scoring_env, "offer_response"))[0]
    assert newest.status is ModelStatus.CHAMPION
    statuses = {m.version: m.status for m in await registered(scoring_env, "offer_response")}
    assert statuses[model.version] is ModelStatus.RETIRED and statuses[kept.version] is ModelStatus.CANDIDATE
    # The running service was not told: it notices the CLI's promotion on its next registry poll.
    for _ in range(100):
        if (await stub.Score(score, timeout=5)).model_version == newest.version:
            break
        await asyncio.sleep(0.1)
    assert (await stub.Score(score, timeout=5)).model_version == newest.version


async def test_bank_marketing_without_duration_reaches_auc_080_and_beats_the_logistic_baseline(
    monkeypatch, sqlite_url, tmp_path, capsys
):
    # One run on SQLite is enough (~10 s of training); the registry on PostgreSQL is covered by the CSV test.
    assert BANK.is_file(), f"the shared development data is missing: {BANK}"
    scoring_env = cli_env(monkeypatch, sqlite_url, tmp_path)
    code = await run_cli("model", "train", "bank_term_deposit", "--csv", str(BANK), "--label", "Output",
                         "--drop", "Duration", "--positive", "yes")
    out = capsys.readouterr().out
    assert code == 0, out
    [model] = await registered(scoring_env, "bank_term_deposit")
    assert "Duration" not in {f.name for f in model.features}
    assert {"Job", "Month", "Poutcome"} <= {f.name for f in model.features if f.levels}
    assert model.metrics["auc"] >= 0.80, out
    assert model.metrics["auc"] > model.metrics["baseline_auc"]
    assert 0 < model.metrics["pr_auc"] < 1 and model.metrics["logloss"] < model.metrics["baseline_logloss"]
    assert "beats the logistic-regression baseline" in out


async def seed_decision_log(url: str, *, snapshots: bool, now: datetime) -> None:
    """Forty days of web decisions showing two offers; `tee-discount` is accepted by big spenders only."""
    engine = create_engine(url)
    try:
        await migrate(engine, ROOT / "services" / "decision" / "migrations", "alembic_version_decision")
        rng = np.random.default_rng(2)
        decisions, outcomes = [], []
        for i in range(400):
            decided = now - timedelta(days=40) + timedelta(hours=2.3 * i)
            spend = float(rng.uniform(0, 1000))
            request = {"rpc": "Decide", "request_context": {"channel": "web", "sku": "", "dwell_seconds": 0.0,
                                                             "cart_value": 0.0, "cart_items": 0}}
            if snapshots:
                request["customer_features"] = {"total_spend": spend, "order_count": float(rng.integers(0, 9))}
            decision_id = uuid.uuid4().hex
            version = "v-champ" if i % 4 else "v-chall"
            decisions.append({
                "decision_id": decision_id, "customer_id": f"c{i}", "channel": "web", "created_at": decided,
                "request": request, "degraded": False, "degraded_reasons": [], "catalogue_version": "test-1",
                "model_version": version, "trace": {},
                "offers": [{"offer_id": "tee-discount", "propensity": 0.3}, {"offer_id": "free-shipping", "propensity": 0.1}],
            })
            if spend > 500 and rng.random() < 0.8:
                occurred = decided + timedelta(hours=5)
                outcomes.append({"outcome_id": uuid.uuid4().hex, "decision_id": decision_id, "offer_id": "tee-discount",
                                 "type": "accept", "occurred_at": occurred, "recorded_at": occurred,
                                 "revenue": 25.5, "customer_id": f"c{i}"})
            if rng.random() < 0.1:  # a late "accept", outside any attribution window: must never be a positive
                occurred = decided + timedelta(days=20)
                outcomes.append({"outcome_id": uuid.uuid4().hex, "decision_id": decision_id, "offer_id": "free-shipping",
                                 "type": "accept", "occurred_at": occurred, "recorded_at": occurred,
                                 "revenue": 999.0, "customer_id": f"c{i}"})
        async with engine.begin() as connection:
            await connection.execute(insert(decision_table), decisions)
            await connection.execute(insert(outcome_table), outcomes)
    finally:
        await engine.dispose()


async def test_training_from_the_decision_log_uses_the_snapshot_and_a_time_split(
    scoring_env, database_url, postgres_or_sqlite_decision_url, monkeypatch, tmp_path, capsys
):
    now = datetime.now(UTC)
    decision_url = postgres_or_sqlite_decision_url
    await seed_decision_log(decision_url, snapshots=True, now=now)
    monkeypatch.setenv("NEXTBEST_DECISION_DATABASE_URL", decision_url)
    monkeypatch.setenv("NEXTBEST_DECISION_CATALOGUE_DIR", str(write_catalogue(tmp_path / "catalogue")))

    assert await run_cli("model", "train", "offer_propensity", "--window-days", "7") == 0
    out = capsys.readouterr().out
    [model] = await registered(scoring_env, "offer_propensity")
    assert model.card["split"] == "time" and model.card["data"]["source"] == "decision log"
    # 400 decisions x 2 offers, minus the last 7 days' decisions (window still open).
    open_window = sum(1 for i in range(400) if timedelta(days=40) - timedelta(hours=2.3 * i) < timedelta(days=7))
    assert sum(model.row_counts.values()) == 2 * (400 - open_window), out
    assert model.card["data"]["skipped"] == {"window_still_open": open_window}
    assert {"total_spend", "offer_type_discount"} <= set(model.feature_names)
    start, end = model.training_window
    assert end - start < timedelta(days=34) and end <= now - timedelta(days=7)
    assert model.metrics["auc"] > 0.8

    assert await run_cli("model", "compare", "--window-days", "7") == 0
    table = capsys.readouterr().out
    assert "v-champ" in table and "v-chall" in table and "acceptance (95% CI)" in table


async def test_training_from_a_log_without_feature_snapshots_refuses_and_names_the_missing_field(
    scoring_env, postgres_or_sqlite_decision_url, monkeypatch, tmp_path, capsys
):
    await seed_decision_log(postgres_or_sqlite_decision_url, snapshots=False, now=datetime.now(UTC))
    monkeypatch.setenv("NEXTBEST_DECISION_DATABASE_URL", postgres_or_sqlite_decision_url)
    monkeypatch.setenv("NEXTBEST_DECISION_CATALOGUE_DIR", str(write_catalogue(tmp_path / "catalogue")))
    assert await run_cli("model", "train", "offer_propensity") == 1
    assert "decision_decisions.request has no 'customer_features'" in capsys.readouterr().err
    assert await registered(scoring_env, "offer_propensity") == []


@pytest.fixture
def postgres_or_sqlite_decision_url(database_url, request, tmp_path):
    """The decision log on the same kind of database as the registry (a separate SQLite file, or the same PG db)."""
    if database_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_path / 'decision.db'}"
    return database_url


async def test_lifetime_value_from_transactions_is_registered_and_served_as_a_regression(
    serve, scoring_env, tmp_path, capsys
):
    from tests.unit.test_scoring_lifetime_value import synthetic_history

    path = tmp_path / "transactions.csv"
    lines = ["customer_id,occurred_at,amount,type"]
    lines += [f"{t.customer_id},{t.occurred_at.isoformat()},{t.amount:.2f},{t.kind}" for t in synthetic_history()]
    path.write_text("\n".join(lines) + "\n")
    assert await run_cli("model", "train", "lifetime_value", "--transactions", str(path)) == 0
    out = capsys.readouterr().out
    assert "beats the RFM baseline" in out, out
    [model] = await registered(scoring_env, "lifetime_value")
    assert model.status is ModelStatus.CANDIDATE and model.card["split"] == "time"
    assert model.metrics["rmse"] < model.metrics["baseline_rmse"]
    assert model.training_window is not None and model.card["train_cutoff"] < model.card["evaluation_cutoff"]

    _, channel = await serve(build(scoring_env))
    stub = pb_grpc.ScoringServiceStub(channel)
    await stub.PromoteModel(pb.PromoteModelRequest(use_case="lifetime_value", version=model.version,
                                                   target=pb.MODEL_STATUS_CHAMPION), timeout=10)
    columns = ["recency_days", "order_count", "net_spend", "spend_365d", "orders_365d"]
    frequent = [5.0, 30.0, 3000.0, 1200.0, 12.0]
    lapsed = [700.0, 1.0, 40.0, 0.0, 0.0]
    chunks = [c async for c in stub.ScoreBatch(pb.ScoreBatchRequest(
        use_case="lifetime_value", columns=columns, values=frequent + lapsed), timeout=10)]
    high, low = chunks[0].predictions
    assert high > low >= 0  # predicted 12-month net spend, not a probability
