"""`nextbest ope` against a real decision log: decisions made with exploration and a control group through the
servicer, read back as first-slot rounds on SQLite and PostgreSQL; evaluating the logging policy itself must give
weights of exactly one, so IPS reproduces the logged revenue."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as pb

from cli.main import build_parser
from cli.ope import read_log, read_rounds
from libs.protoconv import from_timestamp, to_timestamp, utcnow
from services.decision.domain.experiment import bucket
from services.decision.domain.ope import GreedyPolicy, UniformPolicy, evaluate
from services.decision.offline.reward_model import cross_fit
from tests.integration.decision_fakes import WEB, start_mesh

pytestmark = pytest.mark.integration

SALT, SHARE = "ope-test", 0.5


async def test_logged_rounds_and_the_logging_policy_value(database_url, serve, tmp_path):
    start = utcnow() - timedelta(seconds=1)
    mesh = await start_mesh(serve, tmp_path, database_url, control_share=SHARE, control_salt=SALT,
                            exploration_epsilon=0.5, exploration_top=3)
    customers = [f"ope-{n}" for n in range(40)]
    treatment = [c for c in customers if bucket(c, SALT) >= SHARE][:6]
    control = [c for c in customers if bucket(c, SALT) < SHARE][:2]
    for customer_id in treatment + control:
        mesh.identity.marketing[customer_id] = {WEB}
    replies = {}
    for customer_id in treatment + control:
        replies[customer_id] = await mesh.stub.Decide(
            pb.DecideRequest(channel=WEB, customer=common_pb2.CustomerRef(customer_id=customer_id), max_offers=3),
            timeout=5,
        )
        assert replies[customer_id].offers

    async def purchase(customer_id: str, rank: int, revenue: float) -> None:
        reply = replies[customer_id]
        await mesh.stub.RecordOutcome(pb.RecordOutcomeRequest(
            outcome_id=f"{reply.decision_id}-{rank}", decision_id=reply.decision_id,
            offer_id=reply.offers[rank - 1].offer_id, type=pb.OUTCOME_TYPE_PURCHASE, revenue=revenue), timeout=5)

    await purchase(treatment[0], 1, 30.0)
    await purchase(treatment[1], 1, 12.0)
    await purchase(treatment[2], 2, 99.0)  # not the first slot: not this round's reward
    await purchase(control[0], 1, 8.0)

    rounds = {r.decision_id: r for r in await read_rounds(database_url, start, utcnow(), "revenue")}
    assert len(rounds) == 8
    for customer_id in treatment:
        round_ = rounds[replies[customer_id].decision_id]
        assert round_.action == replies[customer_id].offers[0].offer_id
        assert sum(round_.logging.values()) == pytest.approx(1.0) and round_.propensity > 0
    for customer_id in control:
        round_ = rounds[replies[customer_id].decision_id]
        assert round_.scores is None and round_.propensity == pytest.approx(1 / len(round_.pool))
    rewards = {c: rounds[replies[c].decision_id].reward for c in treatment + control}
    assert [rewards[c] for c in treatment] == [30.0, 12.0, 0.0, 0.0, 0.0, 0.0]
    assert [rewards[c] for c in control] == [8.0, 0.0]

    # The logging policy, evaluated on its own log: every weight is pi/mu = 1.
    logging = evaluate(list(rounds.values()), GreedyPolicy(epsilon=0.5, top=3), resamples=200)
    assert (logging.rounds, logging.skipped) == (6, 2)  # control draws have no scores to re-arbitrate
    assert logging.ips.value == pytest.approx(42.0 / 6) and logging.snips.value == pytest.approx(42.0 / 6)
    assert logging.max_weight == pytest.approx(1.0) and logging.unsupported == 0.0

    drawn = evaluate([r for r in rounds.values() if r.scores is None], UniformPolicy(), resamples=200)
    assert drawn.ips.value == pytest.approx(4.0) and drawn.max_weight == pytest.approx(1.0)


async def test_doubly_robust_and_the_attribution_window_through_the_log(
    database_url, serve, tmp_path, monkeypatch, capsys
):
    start = utcnow() - timedelta(seconds=1)
    mesh = await start_mesh(serve, tmp_path, database_url, exploration_epsilon=0.5, exploration_top=3)
    customers = [f"dr-{n}" for n in range(8)]
    for customer_id in customers:
        mesh.identity.marketing[customer_id] = {WEB}
    replies = [
        await mesh.stub.Decide(
            pb.DecideRequest(channel=WEB, customer=common_pb2.CustomerRef(customer_id=c), max_offers=3), timeout=5
        )
        for c in customers
    ]

    async def purchase(reply, after: timedelta, revenue: float) -> None:
        await mesh.stub.RecordOutcome(pb.RecordOutcomeRequest(
            outcome_id=f"{reply.decision_id}-p", decision_id=reply.decision_id, offer_id=reply.offers[0].offer_id,
            type=pb.OUTCOME_TYPE_PURCHASE, revenue=revenue,
            occurred_at=to_timestamp(from_timestamp(reply.decided_at) + after)), timeout=5)

    await purchase(replies[0], timedelta(minutes=30), 20.0)
    await purchase(replies[1], timedelta(hours=3), 50.0)  # inside a 4-hour window, outside a 2-hour one
    end = utcnow()

    rounds, contexts = await read_log(database_url, start, end, "revenue", timedelta(hours=2))
    rewards = {r.decision_id: r.reward for r in rounds}
    assert (rewards[replies[0].decision_id], rewards[replies[1].decision_id]) == (20.0, 0.0)
    wider = {r.decision_id: r.reward for r in await read_rounds(database_url, start, end, "revenue", timedelta(hours=4))}
    assert wider[replies[1].decision_id] == 50.0

    # The reward model's context is what the decision stored: each considered offer's logged factors.
    stored = await mesh.repository.decision(replies[0].decision_id)
    for entry in stored["trace"]["considered"]:
        if "score" in entry:
            factors = contexts[replies[0].decision_id].offers[entry["offer_id"]]
            assert (factors["propensity"], factors["score"]) == (entry["propensity"], entry["score"])
    model = cross_fit(rounds, contexts, binary=False, folds=4, seed=0)
    assert model.model == "per_offer_mean" and set(model.predictions) == set(rewards)
    result = evaluate(rounds, GreedyPolicy(epsilon=0.5, top=3), reward_model=model, resamples=200)
    assert result.logged.value == pytest.approx(20.0 / 8) and result.ips.value == pytest.approx(20.0 / 8)
    assert result.dr is not None and result.dr.low <= result.dr.value <= result.dr.high

    # The command, as an operator runs it next to the database.
    monkeypatch.setenv("NEXTBEST_DECISION_DATABASE_URL", database_url)
    args = build_parser().parse_args(["ope", "--since", "1h", "--attribution-window", "4h", "--epsilon", "0.5",
                                      "--top", "3", "--resamples", "100", "--json"])
    assert await args.func(args) == 0
    document = orjson.loads(capsys.readouterr().out)
    assert document["attribution_window_seconds"] == 4 * 3600 and document["rounds"] == 8
    assert document["logged"]["value"] == pytest.approx(70.0 / 8)
    assert document["reward_model"] == "per_offer_mean, 5-fold cross-fitted" and document["dr"] is not None
