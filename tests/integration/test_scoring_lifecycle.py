"""The model lifecycle through the contract: GetModel/PromoteModel/RetireModel, hot reload under load in two
processes' worth of services, champion/challenger routing, Explain and ScoreBatch — real SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import math
import shutil
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest
from nextbest.scoring.v1 import scoring_service_pb2 as pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as pb_grpc

from libs.db import create_engine, migrate
from libs.settings import CommonSettings
from services.scoring.app import build
from services.scoring.artifacts import ModelStatus, load_booster
from services.scoring.domain import customer_bucket
from services.scoring.settings import ScoringSettings
from services.scoring.storage import SqlModelRegistry
from services.scoring.training import train_binary_model
from tests.unit.test_scoring_training import FEATURES, synthetic_dataset

pytestmark = pytest.mark.integration
USE_CASE = "offer_propensity"
MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "scoring" / "migrations"


@pytest.fixture(scope="module")
def three_versions(tmp_path_factory) -> Path:
    """v1 champion; v2 and v3 candidates trained on different data (so their scores differ)."""
    root = tmp_path_factory.mktemp("models")
    for seed, (version, status) in enumerate((("v1", "champion"), ("v2", "candidate"), ("v3", "candidate"))):
        rows, labels = synthetic_dataset(300, seed=seed + 20)
        train_binary_model(rows, labels, feature_names=FEATURES, models_dir=root, version=version, status=status,
                           parent_version=None if version == "v1" else "v1")
    return root


def settings_for(database_url: str, models_dir: Path, tmp_path: Path, **changes) -> ScoringSettings:
    return ScoringSettings(
        database_url=database_url, port=0, models_dir=models_dir, common=CommonSettings(data_dir=tmp_path), **changes
    )


async def start(serve, settings: ScoringSettings) -> pb_grpc.ScoringServiceStub:
    _, channel = await serve(build(settings))
    return pb_grpc.ScoringServiceStub(channel)


def request(customer_id: str = "c-1", *offer_values: float, loyalty: float = 0.3) -> pb.ScoreRequest:
    return pb.ScoreRequest(
        customer_id=customer_id,
        customer_features={"loyalty": loyalty, "noise": 0.1},
        candidates=[pb.Candidate(offer_id=f"o-{i}", offer_features={"offer_value": v}) for i, v in enumerate(offer_values or (0.5, -0.5))],
    )


async def expect_error(call, code: grpc.StatusCode, details_start: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    assert error.value.details().startswith(details_start), error.value.details()


def promote(version: str, target=pb.MODEL_STATUS_CHAMPION, share: float = 0.0) -> pb.PromoteModelRequest:
    return pb.PromoteModelRequest(use_case=USE_CASE, version=version, target=target, traffic_share=share)


async def test_get_promote_retire_keep_exactly_one_champion(serve, database_url, three_versions, tmp_path):
    stub = await start(serve, settings_for(database_url, three_versions, tmp_path))
    got = await stub.GetModel(pb.GetModelRequest(use_case=USE_CASE, version="v2"), timeout=5)
    assert (got.model.status, got.model.parent_version, got.model.artifact_key) == (
        pb.MODEL_STATUS_CANDIDATE, "v1", f"{USE_CASE}/v2")
    assert [(f.name, f.type) for f in got.model.features] == [(n, pb.FEATURE_TYPE_NUMERIC) for n in FEATURES]
    assert got.model.allows_missing and got.model.row_counts["train"] == 240
    assert orjson.loads(got.model.params_json)["objective"] == "binary:logistic"
    assert isinstance(orjson.loads(got.card_json), dict)
    assert (await stub.Score(request(), timeout=5)).model_version == "v1"

    promoted = await stub.PromoteModel(promote("v2"), timeout=5)
    assert (promoted.model.status, promoted.replaced_version) == (pb.MODEL_STATUS_CHAMPION, "v1")
    # The process that handled the promotion serves the new champion before it answers.
    assert (await stub.Score(request(), timeout=5)).model_version == "v2"
    statuses = {m.version: m.status for m in (await stub.ListModels(pb.ListModelsRequest(), timeout=5)).models}
    assert statuses == {"v1": pb.MODEL_STATUS_RETIRED, "v2": pb.MODEL_STATUS_CHAMPION, "v3": pb.MODEL_STATUS_CANDIDATE}
    only_champions = await stub.ListModels(pb.ListModelsRequest(statuses=[pb.MODEL_STATUS_CHAMPION]), timeout=5)
    assert [m.version for m in only_champions.models] == ["v2"]

    failed, invalid, missing = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
                                grpc.StatusCode.NOT_FOUND)
    await expect_error(stub.RetireModel(pb.RetireModelRequest(use_case=USE_CASE, version="v2"), timeout=5), failed,
                       "model offer_propensity/v2 is the champion")
    await expect_error(stub.PromoteModel(promote("v2", pb.MODEL_STATUS_CHALLENGER, 0.2), timeout=5), failed,
                       "model offer_propensity/v2 is the champion")
    await expect_error(stub.PromoteModel(promote("v9"), timeout=5), missing, "model offer_propensity/v9 is not registered")
    await expect_error(stub.PromoteModel(promote("v3", pb.MODEL_STATUS_CHALLENGER, 0.0), timeout=5), invalid,
                       "traffic_share: must be > 0")
    await expect_error(stub.PromoteModel(promote("v3", pb.MODEL_STATUS_CHALLENGER, 0.9), timeout=5), invalid,
                       "traffic_share")
    await expect_error(stub.PromoteModel(promote("v3", pb.MODEL_STATUS_RETIRED), timeout=5), invalid, "target")
    await expect_error(stub.GetModel(pb.GetModelRequest(use_case=USE_CASE), timeout=5), invalid, "version: is required")

    retired = await stub.RetireModel(pb.RetireModelRequest(use_case=USE_CASE, version="v3"), timeout=5)
    assert retired.model.status == pb.MODEL_STATUS_RETIRED
    # A retired version can be brought back (a rollback): the current champion steps down.
    back = await stub.PromoteModel(promote("v1"), timeout=5)
    assert (back.model.status, back.replaced_version) == (pb.MODEL_STATUS_CHAMPION, "v2")
    assert (await stub.Score(request(), timeout=5)).model_version == "v1"


async def test_concurrent_promotions_serialise_and_leave_one_champion(database_url, three_versions, tmp_path):
    engine = create_engine(database_url)
    try:
        await migrate(engine, MIGRATIONS, "alembic_version_scoring")
        from services.scoring.artifacts import LocalArtifactStore
        from services.scoring.domain import ScoringService

        service = ScoringService(SqlModelRegistry(engine), LocalArtifactStore(three_versions),
                                 default_use_case=USE_CASE, max_candidates=10)
        await service.refresh()
        registry = service.registry
        now = service.clock()
        results = await asyncio.gather(
            *(registry.promote(USE_CASE, v, ModelStatus.CHAMPION, 0.0, now) for v in ("v2", "v3", "v2", "v3"))
        )
        champions = [m for m in await registry.models(USE_CASE) if m.status is ModelStatus.CHAMPION]
        assert len(champions) == 1
        # Each promotion replaced whoever was champion when it ran: the chain of replacements is consistent.
        assert {r[0].version for r in results} == {"v2", "v3"}
    finally:
        await engine.dispose()


async def test_hot_promotion_under_concurrent_score_calls_switches_every_process_without_failures(
    serve, database_url, three_versions, tmp_path
):
    models_dir = tmp_path / "models"
    shutil.copytree(three_versions, models_dir)
    settings = settings_for(database_url, models_dir, tmp_path, registry_poll_seconds=0.05)
    first = await start(serve, settings)
    second = await start(serve, settings)  # another replica on the same registry
    boosters = {v: load_booster(models_dir / USE_CASE / v, FEATURES) for v in ("v1", "v2")}
    matrix = np.array([[0.3, 0.5, 0.1], [0.3, -0.5, 0.1]], dtype=np.float32)
    expected = {v: b.inplace_predict(matrix).tolist() for v, b in boosters.items()}
    assert expected["v1"] != expected["v2"]

    stop = asyncio.Event()
    seen: list[list[str]] = []

    async def hammer(stub: pb_grpc.ScoringServiceStub, customer: int) -> None:
        versions: list[str] = []
        seen.append(versions)
        while not stop.is_set() or len(versions) < 5:
            reply = await stub.Score(request(f"c-{customer}"), timeout=5)
            # Every score of one response comes from the version it names: no mixed-version answers.
            assert [s.probability for s in reply.scores] == pytest.approx(expected[reply.model_version], abs=1e-6)
            versions.append(reply.model_version)
            if stop.is_set() and versions[-1] == "v2" and len(versions) >= 5:
                break

    workers = [asyncio.create_task(hammer(stub, i)) for i in range(6) for stub in (first, second)]
    await asyncio.sleep(0.3)
    await first.PromoteModel(promote("v2"), timeout=5)
    await asyncio.sleep(0.6)  # > several poll intervals
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), timeout=30)  # any failed call fails the test here

    for versions in seen:
        assert versions[0] == "v1" and versions[-1] == "v2"
        switch = versions.index("v2")
        assert set(versions[switch:]) == {"v2"}, "a process never goes back to the old champion"
    for stub in (first, second):
        assert (await stub.Score(request(), timeout=5)).model_version == "v2"


async def test_a_challenger_scores_its_share_of_customers_deterministically(serve, database_url, three_versions, tmp_path):
    stub = await start(serve, settings_for(database_url, three_versions, tmp_path))
    await stub.PromoteModel(promote("v2", pb.MODEL_STATUS_CHALLENGER, 0.3), timeout=5)
    customers = [f"cust-{i}" for i in range(300)]
    replies = [await stub.Score(request(c), timeout=5) for c in customers]
    versions = [r.model_version for r in replies]
    assert versions == ["v2" if customer_bucket(USE_CASE, c) < 0.3 else "v1" for c in customers]
    assert 0.2 < versions.count("v2") / len(versions) < 0.4
    assert {(r.model_version, r.model_status) for r in replies} == {
        ("v1", pb.MODEL_STATUS_CHAMPION), ("v2", pb.MODEL_STATUS_CHALLENGER)}
    # The same customer always meets the same version; a request without customer id goes to the champion.
    again = [(await stub.Score(request(c), timeout=5)).model_version for c in customers[:50]]
    assert again == versions[:50]
    assert (await stub.Score(request(""), timeout=5)).model_version == "v1"

    # A second challenger replaces the first, which goes back to candidate.
    replaced = await stub.PromoteModel(promote("v3", pb.MODEL_STATUS_CHALLENGER, 0.5), timeout=5)
    assert replaced.replaced_version == "v2"
    v3_customers = [c for c in customers if customer_bucket(USE_CASE, c) < 0.5]
    assert (await stub.Score(request(v3_customers[0]), timeout=5)).model_version == "v3"
    # Promoting the challenger to champion empties the challenger slot.
    await stub.PromoteModel(promote("v3"), timeout=5)
    assert {(await stub.Score(request(c), timeout=5)).model_version for c in customers[:40]} == {"v3"}


async def test_explain_returns_the_top_features_with_signs_that_add_up_to_the_score(
    serve, database_url, three_versions, tmp_path
):
    stub = await start(serve, settings_for(database_url, three_versions, tmp_path))
    explain = pb.ExplainRequest(
        customer_id="c-1",
        customer_features={"loyalty": 0.2},  # noise missing
        candidates=[pb.Candidate(offer_id="good", offer_features={"offer_value": 2.0}),
                    pb.Candidate(offer_id="bad", offer_features={"offer_value": -2.0})],
        top_k=3,
    )
    reply = await stub.Explain(explain, timeout=5)
    assert reply.model_version == "v1" and [e.offer_id for e in reply.explanations] == ["good", "bad"]
    good, bad = reply.explanations
    assert good.contributions[0].feature == bad.contributions[0].feature == "offer_value"
    assert good.contributions[0].direction == pb.DIRECTION_RAISES and good.contributions[0].contribution > 0
    assert bad.contributions[0].direction == pb.DIRECTION_LOWERS and bad.contributions[0].contribution < 0
    assert (good.contributions[0].label, good.contributions[0].value) == ("offer value", "2")
    assert {c.feature: c.value for c in good.contributions}["noise"] == "missing"
    score = await stub.Score(pb.ScoreRequest(customer_id="c-1", customer_features={"loyalty": 0.2},
                                             candidates=explain.candidates), timeout=5)
    for explanation, scored in zip(reply.explanations, score.scores, strict=True):
        assert explanation.probability == pytest.approx(scored.probability, abs=1e-6)
        log_odds = explanation.base_log_odds + sum(c.contribution for c in explanation.contributions)
        assert 1 / (1 + math.exp(-log_odds)) == pytest.approx(scored.probability, abs=1e-4)
    one = await stub.Explain(pb.ExplainRequest(candidates=explain.candidates[:1], top_k=1), timeout=5)
    assert len(one.explanations[0].contributions) == 1
    await expect_error(stub.Explain(pb.ExplainRequest(candidates=explain.candidates, top_k=99), timeout=5),
                       grpc.StatusCode.INVALID_ARGUMENT, "top_k")


async def test_score_batch_streams_chunks_that_match_score(serve, database_url, three_versions, tmp_path):
    stub = await start(serve, settings_for(database_url, three_versions, tmp_path, batch_chunk_rows=100))
    rng = np.random.default_rng(1)
    values = rng.normal(size=(250, 3))
    values[::7, 2] = np.nan  # missing noise
    batch = pb.ScoreBatchRequest(columns=["offer_value", "loyalty", "noise"], values=values.ravel().tolist(),
                                 row_ids=[f"r{i}" for i in range(250)])
    chunks = [chunk async for chunk in stub.ScoreBatch(batch, timeout=10)]
    assert [c.start_row for c in chunks] == [0, 100, 200] and {c.model_version for c in chunks} == {"v1"}
    predictions = [p for c in chunks for p in c.predictions]
    assert [r for c in chunks for r in c.row_ids] == list(batch.row_ids)
    for i in (0, 7, 249):
        single = await stub.Score(pb.ScoreRequest(
            customer_features={"loyalty": values[i, 1], **({} if i % 7 == 0 else {"noise": values[i, 2]})},
            candidates=[pb.Candidate(offer_id="x", offer_features={"offer_value": values[i, 0]})]), timeout=5)
        assert predictions[i] == pytest.approx(single.scores[0].probability, abs=1e-6)

    # A candidate version can be batch-scored (to evaluate it before promotion).
    candidate = [c async for c in stub.ScoreBatch(pb.ScoreBatchRequest(version="v2", columns=["offer_value"],
                                                                       values=[1.0, -1.0]), timeout=10)]
    assert candidate[0].model_version == "v2" and len(candidate[0].predictions) == 2

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    bad_calls = [
        (pb.ScoreBatchRequest(columns=["offer_value", "colour"], values=[1.0, 2.0]), "columns[1]: colour is not"),
        (pb.ScoreBatchRequest(columns=["offer_value", "noise"], values=[1.0, 2.0, 3.0]), "values: length 3"),
        (pb.ScoreBatchRequest(columns=["offer_value"], values=[1.0, math.inf]), "values[1]: offer_value must be finite"),
        (pb.ScoreBatchRequest(columns=["offer_value"], values=[1.0], row_ids=["a", "b"]), "row_ids"),
        (pb.ScoreBatchRequest(columns=[], values=[]), "columns: at least one"),
    ]
    for bad, message in bad_calls:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            [c async for c in stub.ScoreBatch(bad, timeout=5)]
        assert error.value.code() == invalid and error.value.details().startswith(message), error.value.details()


async def test_migration_0002_keeps_only_the_newest_of_several_old_champions(database_url, tmp_path):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    engine = create_engine(database_url)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["version_table"] = "alembic_version_scoring"

        def to_0001(connection) -> None:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")

        async with engine.begin() as connection:
            await connection.run_sync(to_0001)
            for version, registered in (("a", "2025-01-01"), ("b", "2025-02-01"), ("c", "2025-01-15")):
                await connection.execute(text(
                    "INSERT INTO scoring_models (use_case, version, name, status, artifact_path, feature_names, metrics,"
                    " training_rows, trained_at, registered_at) VALUES ('offer_propensity', :v, 'm', 'champion',"
                    " :p, '[\"x\"]', '{}', 1, :t, :t)"), {"v": version, "p": f"offer_propensity/{version}",
                                                         "t": __import__("datetime").datetime.fromisoformat(registered)})
        await migrate(engine, MIGRATIONS, "alembic_version_scoring")
        models = {m.version: m for m in await SqlModelRegistry(engine).models()}
        assert {v: m.status for v, m in models.items()} == {
            "a": ModelStatus.RETIRED, "b": ModelStatus.CHAMPION, "c": ModelStatus.RETIRED}
        assert models["b"].allows_missing and models["b"].traffic_share == 0.0
        assert [f.name for f in models["b"].features] == ["x"]
    finally:
        await engine.dispose()


async def test_the_model_cli_lists_shows_promotes_and_retires(serve, database_url, three_versions, tmp_path, capsys):
    from cli.main import build_parser

    server, _ = await serve(build(settings_for(database_url, three_versions, tmp_path)))
    target = f"127.0.0.1:{server.port}"

    async def cli(*argv: str) -> tuple[int, str, str]:
        args = build_parser().parse_args(["model", *argv, "--target", target])
        code = await args.func(args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = await cli("list")
    assert code == 0 and "offer_propensity v1 [champion]" in out and "offer_propensity v3 [candidate]" in out
    code, out, _ = await cli("promote", USE_CASE, "v2", "--challenger", "0.2")
    assert code == 0 and "v2 [challenger share=20%]" in out
    code, out, _ = await cli("show", USE_CASE, "v2")
    assert code == 0 and "parent: v1" in out and "auc" in out
    code, out, _ = await cli("promote", USE_CASE, "v3")
    assert code == 0 and "v3 [champion]" in out and "replaced v1" in out
    code, out, _ = await cli("retire", USE_CASE, "v2")
    assert code == 0 and "v2 [retired]" in out
    code, _, err = await cli("retire", USE_CASE, "v3")
    assert code == 1 and err.startswith("FAILED_PRECONDITION: model offer_propensity/v3 is the champion")
    code, out, _ = await cli("list", "--status", "champion")
    [only] = out.strip().splitlines()
    assert code == 0 and only.startswith("offer_propensity v3 [champion]")
