"""Auto-promotion of the purchase-history models on real registries (SQLite and PostgreSQL): each use case is judged
on its own metric on the candidate's hold-out — churn risk by AUC points, lifetime value by a relative RMSE
reduction — and promoted only when it beats the champion by the margin."""

from __future__ import annotations

import pytest

from services.scoring.artifacts import ModelStatus
from services.scoring.offline import registry_for, train_churn_candidate, train_lifetime_value_candidate
from services.scoring.settings import ScoringSettings
from tests.integration.test_scoring_training import cli_env, run_cli
from tests.unit.test_scoring_lifetime_value import synthetic_history

pytestmark = pytest.mark.integration


@pytest.fixture
def scoring_env(monkeypatch, database_url, tmp_path) -> ScoringSettings:
    return cli_env(monkeypatch, database_url, tmp_path)


async def statuses(settings: ScoringSettings, use_case: str) -> dict[str, ModelStatus]:
    async with registry_for(settings) as (registry, _):
        return {m.version: m.status for m in await registry.models(use_case)}


async def test_lifetime_value_is_promoted_only_when_its_rmse_falls_by_the_margin(scoring_env, tmp_path, capsys):
    history = synthetic_history(1200, seed=1)
    # A weak champion: trained on a small, different population.
    weak = await train_lifetime_value_candidate(
        scoring_env, "lifetime_value", synthetic_history(200, seed=5), auto_promote_margin=0.01
    )
    assert weak.promoted and weak.comparison is None  # no champion yet: the first candidate is promoted

    better = await train_lifetime_value_candidate(scoring_env, "lifetime_value", history, auto_promote_margin=0.01)
    comparison = better.comparison
    assert comparison["metric"] == "rmse" and comparison["lower_is_better"] is True
    assert comparison["champion_version"] == weak.metadata.version
    assert comparison["candidate_rmse"] == pytest.approx(better.result.metrics["rmse"])
    assert comparison["candidate_rmse"] <= comparison["champion_rmse"] * 0.99
    assert better.promoted and better.metadata.card["champion_comparison"]["champion_rmse"] == pytest.approx(
        comparison["champion_rmse"]
    )
    assert (await statuses(scoring_env, "lifetime_value"))[better.metadata.version] is ModelStatus.CHAMPION

    # Retrained on the same data and seed: the same trees, so the same RMSE on the same hold-out rows. A 0.5% margin
    # is not met (a tie is no reduction); a zero margin promotes on a tie.
    path = tmp_path / "transactions.csv"
    lines = ["customer_id,occurred_at,amount,type"]
    lines += [f"{t.customer_id},{t.occurred_at.isoformat()},{t.amount!r},{t.kind}" for t in history]
    path.write_text("\n".join(lines) + "\n")
    train = ("model", "train", "lifetime_value", "--transactions", str(path), "--auto-promote")
    assert await run_cli(*train, "--margin", "0.005") == 0
    out = capsys.readouterr().out
    assert "kept the champion: the candidate does not beat it by 0.5% lower RMSE" in out, out
    found = await statuses(scoring_env, "lifetime_value")
    assert found[better.metadata.version] is ModelStatus.CHAMPION
    assert list(found.values()).count(ModelStatus.CANDIDATE) == 1
    assert await run_cli(*train, "--margin", "0") == 0
    assert "promoted lifetime_value/" in capsys.readouterr().out
    assert (await statuses(scoring_env, "lifetime_value"))[better.metadata.version] is ModelStatus.RETIRED


async def test_churn_risk_is_promoted_only_when_its_auc_rises_by_the_margin(scoring_env):
    history = synthetic_history(1200, seed=1)
    weak = await train_churn_candidate(
        scoring_env, "churn_risk", synthetic_history(200, seed=5), auto_promote_margin=0.005
    )
    assert weak.promoted

    same_as_weak = await train_churn_candidate(
        scoring_env, "churn_risk", synthetic_history(200, seed=5), auto_promote_margin=0.005
    )
    comparison = same_as_weak.comparison
    assert comparison["metric"] == "auc" and comparison["lower_is_better"] is False
    assert comparison["champion_auc"] == pytest.approx(comparison["candidate_auc"], abs=1e-12)  # same hold-out
    assert not same_as_weak.promoted
    assert (await statuses(scoring_env, "churn_risk"))[same_as_weak.metadata.version] is ModelStatus.CANDIDATE

    better = await train_churn_candidate(scoring_env, "churn_risk", history, auto_promote_margin=0.005)
    assert better.comparison["champion_version"] == weak.metadata.version
    assert better.comparison["candidate_auc"] >= better.comparison["champion_auc"] + 0.005
    assert better.promoted
    found = await statuses(scoring_env, "churn_risk")
    assert (found[better.metadata.version], found[weak.metadata.version]) == (ModelStatus.CHAMPION, ModelStatus.RETIRED)

    # Without --auto-promote nothing is promoted, however good the candidate.
    manual = await train_churn_candidate(scoring_env, "churn_risk", history)
    assert not manual.promoted and manual.comparison["margin"] is None
    assert (await statuses(scoring_env, "churn_risk"))[better.metadata.version] is ModelStatus.CHAMPION
