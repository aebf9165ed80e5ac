"""`nextbest ope`: off-policy evaluation of a candidate first-slot policy from the decision log (IPS,
self-normalised IPS and doubly robust with bootstrap intervals; see services/decision/domain/ope.py for what the
numbers mean, and services/decision/offline/reward_model.py for the cross-fitted reward model behind DR).

Works offline next to the decision database, read-only, like `nextbest model compare`:

    nextbest ope --since 14d --lever tee-discount=2 --reward revenue
    nextbest ope --policy uniform --reward accept --json
    nextbest ope --reward-model none --attribution-window 1d

A round's reward counts only the outcomes within the attribution window after its decision (the report's rule).

`nextbest ope hillstrom` validates the estimators (and doubly robust) on a real randomised experiment instead; see
services/decision/offline/hillstrom.py.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path

import orjson

from cli.report import length_text, moment, window_length
from libs.protoconv import utcnow
from libs.settings import load_settings
from services.decision.domain.report import DEFAULT_ATTRIBUTION_WINDOW


def lever(text: str) -> tuple[str, float]:
    offer_id, _, factor = text.partition("=")
    try:
        value = float(factor)
    except ValueError:
        value = -1.0
    if not offer_id or not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected OFFER_ID=FACTOR with a factor >= 0")
    return offer_id, value


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: must be within [0, 1]")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def folds(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text}: cross-fitting needs at least 2 folds")
    return value


async def read_rounds(
    database_url: str, start: datetime, end: datetime, reward: str, window: timedelta = DEFAULT_ATTRIBUTION_WINDOW
) -> list:
    """The window's decisions as first-slot rounds; the rewards are summed per decision and offer in SQL."""
    rounds, _ = await read_log(database_url, start, end, reward, window)
    return rounds


async def read_log(
    database_url: str, start: datetime, end: datetime, reward: str, window: timedelta = DEFAULT_ATTRIBUTION_WINDOW
) -> tuple[list, dict]:
    """The window's decisions as first-slot rounds, and each round's context (by decision id) for the reward
    model; a reward counts the outcomes within `window` after the decision."""
    from sqlalchemy import case, func, select, text

    from libs.db import create_engine
    from services.decision.domain.ope import logged_round
    from services.decision.domain.report import ACCEPTED_OUTCOMES
    from services.decision.offline.reward_model import round_context
    from services.decision.storage import attributed, decisions, outcomes

    in_window = (decisions.c.created_at >= start, decisions.c.created_at < end)

    def per_offer(dialect: str):
        return (
            select(
                outcomes.c.decision_id,
                outcomes.c.offer_id,
                func.sum(outcomes.c.revenue).label("revenue"),
                func.max(case((outcomes.c.type.in_(ACCEPTED_OUTCOMES), 1), else_=0)).label("accepted"),
            )
            .join(decisions, decisions.c.decision_id == outcomes.c.decision_id)
            .where(*in_window, attributed(outcomes.c.occurred_at, decisions.c.created_at, window, dialect))
            .group_by(outcomes.c.decision_id, outcomes.c.offer_id)
        )
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(text("SET TRANSACTION READ ONLY"))
            earned = {
                (row.decision_id, row.offer_id): float(row.revenue if reward == "revenue" else row.accepted)
                for row in await connection.execute(per_offer(connection.dialect.name))
            }
            logged = await connection.execute(
                select(decisions.c.decision_id, decisions.c.offers, decisions.c.trace, decisions.c.request)
                .where(*in_window)
                .order_by(decisions.c.created_at, decisions.c.decision_id)
            )
            rounds, contexts = [], {}
            for row in logged:
                first = next((o["offer_id"] for o in row.offers or () if o.get("rank") == 1), "")
                value = earned.get((row.decision_id, first), 0.0)
                rounds.append(logged_round(row.decision_id, row.offers or (), row.trace or {}, value))
                contexts[row.decision_id] = round_context(row.request or {}, row.trace or {})
    finally:
        await engine.dispose()
    return rounds, contexts


def _show(estimate) -> str:
    return f"{estimate.value:.4f} [{estimate.low:.4f}, {estimate.high:.4f}]"


async def cmd_ope(args: argparse.Namespace) -> int:
    from services.decision.domain.ope import GreedyPolicy, UniformPolicy, evaluate
    from services.decision.offline.reward_model import cross_fit
    from services.decision.settings import DecisionSettings

    settings = load_settings(DecisionSettings)
    window = args.attribution_window or timedelta(seconds=settings.attribution_window_seconds)
    rounds, contexts = await read_log(
        settings.resolved_database_url, args.since, args.until or utcnow(), args.reward, window
    )
    policy = (
        UniformPolicy()
        if args.policy == "uniform"
        else GreedyPolicy(levers=dict(args.lever), epsilon=args.epsilon, top=args.top)
    )
    # Every logged round trains the reward model, also those the policy skips (control draws).
    model = None
    if args.reward_model != "none" and len(rounds) >= 2:
        model = cross_fit(rounds, contexts, binary=args.reward == "accept", folds=args.folds, seed=args.seed,
                          model=args.reward_model)
    result = evaluate(rounds, policy, reward_model=model, resamples=args.resamples, seed=args.seed)
    described = "none" if model is None else f"{model.model}, {model.folds}-fold cross-fitted"
    if args.json:
        print(orjson.dumps({"policy": repr(policy), "reward": args.reward, "reward_model": described,
                            "attribution_window_seconds": window.total_seconds(), **asdict(result)},
                           option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        return 0
    print(f"{args.policy} policy, reward {args.reward}, {result.rounds} decisions ({result.skipped} skipped), "
          f"outcomes within {length_text(window)} of each decision")
    if not result.rounds:
        print("no decisions to evaluate in the window")
        return 0
    print(f"  logging policy   {_show(result.logged)}  (observed: the sanity line)")
    print(f"  IPS              {_show(result.ips)}")
    print(f"  SNIPS            {_show(result.snips)}")
    if result.dr is not None:
        print(f"  doubly robust    {_show(result.dr)}  (reward model: {described})")
    print(f"  effective n      {result.effective_sample_size:.1f} (max weight {result.max_weight:.2f})")
    if result.unsupported > 0:
        print(f"  WARNING: {result.unsupported:.1%} of the candidate's choices were never made by the logging policy; "
              "IPS cannot see them (raise NEXTBEST_DECISION_EXPLORATION_EPSILON or the control share)")
    return 0


#: Where the shared data folder keeps the experiment, next to this repository.
HILLSTROM_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hillstrom" / "hillstrom.csv"


def _yes_no(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


def cmd_hillstrom(args: argparse.Namespace) -> int:
    from services.decision.offline.hillstrom import read_experiment, validate

    try:
        experiment = read_experiment(args.csv, args.reward)
    except OSError as exc:
        print(f"nextbest ope hillstrom: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"nextbest ope hillstrom: {args.csv}: {exc}", file=sys.stderr)
        return 2
    result = validate(experiment, seed=args.seed, resamples=args.resamples)
    if args.json:
        policies = [{**asdict(p), "ips_covers_observed": p.ips_covers_observed,
                     "dr_covers_observed": p.dr_covers_observed} for p in result.policies]
        print(orjson.dumps({**asdict(result), "policies": policies}, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"Hillstrom e-mail experiment, reward {result.reward}: reward model fitted on {result.train_rows} rows "
          f"({result.trees} trees), policies estimated on the {result.held_out_rows} held-out rows (seed {result.seed})")
    print(f"  {'policy':<22}{'IPS':<26}{'SNIPS':<26}{'doubly robust':<26}{'observed (held-out)':<26}in CI: IPS DR")
    for value in result.policies:
        evaluation = value.evaluation
        observed = _show(value.observed) if value.observed else "-"
        print(f"  {value.policy:<22}{_show(evaluation.ips):<26}{_show(evaluation.snips):<26}"
              f"{_show(evaluation.dr):<26}{observed:<26}"
              f"{_yes_no(value.ips_covers_observed):>9}{_yes_no(value.dr_covers_observed):>4}")
    print("  the learned policy sends " + ", ".join(f"{a} to {n}" for a, n in result.learned_choices.items())
          + " held-out customers")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ope", help="off-policy evaluation of a candidate first-slot policy from the decision log")
    p.add_argument("--since", type=moment, default="7d", help="window start: an age (12h, 7d) or ISO-8601")
    p.add_argument("--until", type=moment, help="window end (default now)")
    p.add_argument("--policy", choices=("greedy", "uniform"), default="greedy",
                   help="greedy: arbitration re-scored with --lever, exploring with --epsilon; uniform: a random pick")
    p.add_argument("--lever", type=lever, action="append", default=[], metavar="OFFER_ID=FACTOR",
                   help="multiply an offer's logged score (repeatable)")
    p.add_argument("--epsilon", type=share, default=0.0, help="the candidate's exploration share")
    p.add_argument("--top", type=positive, default=5, help="how many of the best the candidate explores among")
    p.add_argument("--reward", choices=("revenue", "accept"), default="revenue")
    p.add_argument("--reward-model", choices=("auto", "xgboost", "per_offer_mean", "none"), default="auto",
                   help="doubly robust's cross-fitted reward model: auto is XGBoost when the folds hold enough "
                   "decisions, else a shrunk per-offer mean; none skips DR")
    p.add_argument("--folds", type=folds, default=5, help="cross-fitting folds (at least 2)")
    p.add_argument("--attribution-window", type=window_length, metavar="LENGTH",
                   help="count an outcome only within this long after its decision: 12h, 7d, or seconds "
                   "(default: NEXTBEST_DECISION_ATTRIBUTION_WINDOW_SECONDS)")
    p.add_argument("--resamples", type=positive, default=1000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ope)

    modes = p.add_subparsers(dest="mode", metavar="MODE")
    h = modes.add_parser("hillstrom", help="validate IPS, SNIPS and doubly robust on the Hillstrom e-mail experiment")
    h.add_argument("--csv", type=Path, default=HILLSTROM_CSV, help="the experiment's CSV (default: the shared data)")
    h.add_argument("--reward", choices=("conversion", "visit", "spend"), default="conversion")
    h.add_argument("--resamples", type=positive, default=1000, help="bootstrap resamples")
    h.add_argument("--seed", type=int, default=0, help="the train / held-out split, the model and the bootstrap")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_hillstrom)
