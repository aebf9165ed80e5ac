"""`nextbest model ...`: the model lifecycle — list, show, promote, retire, train (CSV, decision log or transactions),
compare, and rescore (the nightly batch job writing model traits to the profile).

list/show/promote/retire call the running scoring service (NEXTBEST_SCORING_PORT, `--target`); promotion is served
by every scoring process within NEXTBEST_SCORING_REGISTRY_POLL_SECONDS. `train` and `compare` work offline next to
the databases: `train` writes the artifact and registers it as a candidate in the scoring registry; `compare` reads
the decision log (read-only). `rescore` calls the running profile and scoring services.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from nextbest.scoring.v1 import scoring_service_pb2 as pb

from cli.client import _call, common_options
from libs.settings import load_settings

_STATUS_FLAGS = {"candidate": pb.MODEL_STATUS_CANDIDATE, "challenger": pb.MODEL_STATUS_CHALLENGER,
                 "champion": pb.MODEL_STATUS_CHAMPION, "retired": pb.MODEL_STATUS_RETIRED}


def _status(value: int) -> str:
    return pb.ModelStatus.Name(value).removeprefix("MODEL_STATUS_").lower()


def register(subparsers: argparse._SubParsersAction) -> None:
    model = subparsers.add_parser("model", help="model lifecycle: list, show, promote, retire, train, compare")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    rpc = common_options(timeout=10.0)  # as every client command has; 10 s: a promotion loads the model

    listing = commands.add_parser("list", parents=[rpc], help="registered model versions, newest first per use case")
    listing.add_argument("--use-case", default="", help="only this use case")
    listing.add_argument("--status", action="append", choices=sorted(_STATUS_FLAGS), default=[],
                         help="only this status (repeatable)")
    listing.set_defaults(func=cmd_list)

    show = commands.add_parser("show", parents=[rpc], help="one version with its model card")
    show.add_argument("use_case")
    show.add_argument("version")
    show.set_defaults(func=cmd_show)

    promote = commands.add_parser(
        "promote", parents=[rpc], help="make a version the champion, or the challenger with --challenger"
    )
    promote.add_argument("use_case")
    promote.add_argument("version")
    promote.add_argument("--challenger", type=float, metavar="SHARE",
                         help="promote to challenger scoring this share of customers (0 < SHARE <= 0.5)")
    promote.set_defaults(func=cmd_promote)

    retire = commands.add_parser("retire", parents=[rpc], help="take a (non-champion) version out of service")
    retire.add_argument("use_case")
    retire.add_argument("version")
    retire.set_defaults(func=cmd_retire)

    train = commands.add_parser(
        "train",
        help="train a candidate from a CSV (--csv) or from the decision log",
        description="With --csv: a stratified random 20% hold-out, early stopping on a validation slice, metrics "
        "against a logistic-regression baseline. Without: decisions joined to outcomes within --window-days, a "
        "time-based split. Either way the model is registered as a candidate with its model card.",
    )
    train.add_argument("use_case", help="e.g. offer_propensity, churn_risk")
    train.add_argument("--csv", type=Path, help="training data with a header row")
    train.add_argument("--transactions", type=Path,
                       help="lifetime value: a CSV of customer_id,occurred_at,amount,type (order|return); trains "
                       "future net spend over --horizon-days against an RFM baseline on a time split")
    train.add_argument("--horizon-days", type=int, default=365, help="lifetime-value horizon (default 365)")
    train.add_argument("--churn-days", type=int, metavar="DAYS",
                       help="with --transactions: train churn risk instead, the probability of no order in the next "
                       "DAYS (e.g. 90), against a recency baseline on a time split")
    train.add_argument("--label", help="the label column (with --csv)")
    train.add_argument("--drop", nargs="+", default=[], metavar="COL", help="columns to leave out (e.g. leaking ones)")
    train.add_argument("--positive", help="the label value that means 'yes' (default: inferred, e.g. yes/1/true)")
    train.add_argument("--window-days", type=float, default=7.0, help="attribution window for the decision log")
    train.add_argument("--as-of", help="training cut-off, ISO-8601 (default: now)")
    train.add_argument("--seed", type=int, default=7)
    train.add_argument(
        "--auto-promote", action="store_true",
        help="scheduled retraining (cron / Kubernetes CronJob): promote the candidate to champion only if it beats the "
        "champion on the same hold-out rows by NEXTBEST_SCORING_AUTO_PROMOTE_MARGIN (or --margin): classifiers by AUC "
        "points, lifetime value by a relative RMSE reduction",
    )
    train.add_argument("--margin", type=float,
                       help="override the auto-promotion margin (AUC points, or the fraction of the champion's RMSE "
                       "for lifetime value; e.g. 0.005)")
    train.add_argument("--json", action="store_true", help="print the model card as JSON")
    train.set_defaults(func=cmd_train)

    rescore = commands.add_parser(
        "rescore", parents=[common_options(timeout=60.0)],
        help="nightly rescoring: score every customer with the use case's champion, write the predictions back to "
        "the profile as model traits",
        description="Reads every customer's features from the profile (ListFeatures), scores them with the champion "
        "(ScoreBatch) and writes model_prediction events back (StreamEvents). Idempotent: re-running with the same "
        "champion version changes nothing, so an interrupted run is simply run again. --target is the scoring service; --timeout bounds each "
        "call.",
    )
    rescore.add_argument("use_case", help="e.g. lifetime_value, churn_risk")
    rescore.add_argument("--batch", type=int, default=5000, help="customers per page (default 5000)")
    rescore.add_argument("--profile-target", help="host:port of the profile service (default from settings)")
    rescore.add_argument("--run-timeout", type=float, default=3600.0, help="deadline of the whole run, seconds")
    rescore.set_defaults(func=cmd_rescore)

    compare = commands.add_parser(
        "compare", help="acceptance, revenue per decision and calibration per model version, from the decision log"
    )
    compare.add_argument("--window-days", type=float, default=7.0, help="attribution window")
    compare.add_argument("--since", help="only decisions at or after this ISO-8601 time")
    compare.add_argument("--as-of", help="cut-off, ISO-8601 (default: now)")
    compare.add_argument("--json", action="store_true")
    compare.set_defaults(func=cmd_compare)


# --------------------------------------------------------------------------------------------------- RPC commands


def _line(m: pb.ModelInfo) -> str:
    share = f" share={m.traffic_share:.0%}" if m.status == pb.MODEL_STATUS_CHALLENGER else ""
    metrics = ", ".join(f"{k}={m.metrics[k]:.4f}" for k in ("auc", "pr_auc", "logloss") if k in m.metrics)
    return (f"{m.use_case} {m.version} [{_status(m.status)}{share}] {m.name}: {len(m.features)} features, "
            f"{m.training_rows} training rows{', ' + metrics if metrics else ''}")


async def cmd_list(args: argparse.Namespace) -> int:
    request = pb.ListModelsRequest(use_case=args.use_case, statuses=[_STATUS_FLAGS[s] for s in args.status])
    reply = await _call(args, "scoring", "ListModels", request)
    if reply is None:
        return 1
    if not args.json:
        for m in reply.models:
            print(_line(m))
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    reply = await _call(args, "scoring", "GetModel", pb.GetModelRequest(use_case=args.use_case, version=args.version))
    if reply is None:
        return 1
    if not args.json:
        m = reply.model
        print(_line(m))
        print(f"  artifact: {m.artifact_key}; parent: {m.parent_version or '-'}; trained "
              f"{m.trained_at.ToDatetime(tzinfo=UTC):%Y-%m-%d %H:%M:%S}Z; rows {dict(m.row_counts)}")
        print("  features: " + ", ".join(
            f"{f.name}({len(f.levels)} levels)" if f.levels else f.name for f in m.features))
        for name, value in sorted(m.metrics.items()):
            print(f"  {name:24s} {value:.4f}")
        _print_card(orjson.loads(reply.card_json))
    return 0


async def cmd_promote(args: argparse.Namespace) -> int:
    target = pb.MODEL_STATUS_CHALLENGER if args.challenger is not None else pb.MODEL_STATUS_CHAMPION
    request = pb.PromoteModelRequest(use_case=args.use_case, version=args.version, target=target,
                                     traffic_share=args.challenger or 0.0)
    reply = await _call(args, "scoring", "PromoteModel", request)
    if reply is None:
        return 1
    if not args.json:
        print(_line(reply.model))
        if reply.replaced_version:
            print(f"  replaced {reply.replaced_version}")
    return 0


async def cmd_retire(args: argparse.Namespace) -> int:
    reply = await _call(args, "scoring", "RetireModel",
                        pb.RetireModelRequest(use_case=args.use_case, version=args.version))
    if reply is None:
        return 1
    if not args.json:
        print(_line(reply.model))
    return 0


def _print_card(card: dict[str, Any]) -> None:
    if baseline := card.get("baseline"):
        metrics = baseline.get("metrics", {})
        print(f"  baseline ({baseline.get('model')}): " + ", ".join(
            f"{k}={metrics[k]:.4f}" for k in ("auc", "pr_auc", "logloss") if k in metrics))
    if reliability := card.get("reliability"):
        print("  reliability (hold-out, equal-count bins of predicted probability)")
        print("     bin   rows  predicted  observed")
        for row in reliability:
            print(f"    {row['bin']:>4d} {row['rows']:>6d}  {row['mean_predicted']:9.4f} {row['observed_rate']:9.4f}")
    if lift := card.get("lift_by_decile"):
        print("  lift by decile (hold-out, highest scores first)")
        print("  decile   rows    rate   lift  cumulative capture")
        for row in lift:
            print(f"    {row['decile']:>4d} {row['rows']:>6d}  {row['positive_rate']:.4f} {row['lift']:5.2f}  "
                  f"{row['cumulative_capture']:>8.1%}")


# --------------------------------------------------------------------------------------------------- train


def _time(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _report(trained, as_json: bool) -> None:
    meta = trained.metadata
    if as_json:
        print(orjson.dumps(meta.to_json(), option=orjson.OPT_INDENT_2).decode())
        return
    m, b = trained.result.metrics, trained.result.baseline_metrics
    print(f"registered {meta.use_case}/{meta.version} as a candidate (parent {meta.parent_version or '-'}); "
          f"rows {meta.row_counts}, {meta.params.get('trees')} trees, split {trained.result.split.kind}")
    print(f"  {'hold-out':10s} {'AUC':>7s} {'PR-AUC':>7s} {'logloss':>8s} {'Brier':>7s} {'ECE':>7s} {'lift@1':>7s}")
    for name, metrics in (("model", m), ("baseline", b)):
        print(f"  {name:10s} {metrics['auc']:7.4f} {metrics['pr_auc']:7.4f} {metrics['logloss']:8.4f} "
              f"{metrics['brier']:7.4f} {metrics['ece']:7.4f} {metrics['top_decile_lift']:7.2f}")
    verdict = "beats" if trained.result.beats_baseline else "does NOT beat"
    print(f"  the model {verdict} the logistic-regression baseline on hold-out AUC")
    _print_card(meta.card | {"baseline": None})
    _report_promotion(trained)


async def cmd_rescore(args: argparse.Namespace) -> int:
    import grpc
    from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
    from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc

    from cli.client import cli_channel, service_target
    from libs.errors import NextBestError
    from services.scoring.rescore import rescore

    if args.batch < 1:
        print("nextbest model rescore: --batch must be >= 1", file=sys.stderr)
        return 2
    async with (
        cli_channel(args.profile_target or service_target("profile")) as profile_channel,
        cli_channel(args.target or service_target("scoring")) as scoring_channel,
    ):
        try:
            report = await rescore(
                profile_grpc.ProfileServiceStub(profile_channel), scoring_grpc.ScoringServiceStub(scoring_channel),
                args.use_case, page_size=args.batch, call_timeout=args.timeout, run_timeout=args.run_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            print(f"nextbest model rescore: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        except NextBestError as exc:
            print(f"nextbest model rescore: {exc}", file=sys.stderr)
            return 1
    if args.json:
        print(orjson.dumps({**{k: getattr(report, k) for k in report.__slots__},
                            "rows_per_second": report.rows_per_second}, option=orjson.OPT_INDENT_2).decode())
    else:
        print(f"rescored {report.use_case} with {report.model_name} {report.model_version}: {report.customers} "
              f"customers read, {report.scored} scored, {report.skipped} skipped; {report.accepted} traits written, "
              f"{report.duplicates} already written; {report.seconds:.1f}s, {report.rows_per_second:,.0f} rows/s")
        if report.rejected:
            print(f"  {report.rejected} predictions rejected, first: {report.first_rejection}", file=sys.stderr)
    return 1 if report.rejected else 0


def _margin(settings, args: argparse.Namespace) -> float | None:
    if not args.auto_promote:
        return None
    return args.margin if args.margin is not None else settings.auto_promote_margin


async def cmd_train(args: argparse.Namespace) -> int:
    from services.scoring.offline import train_from_dataset
    from services.scoring.settings import ScoringSettings
    from services.scoring.tabular import DatasetError, load_csv

    settings = load_settings(ScoringSettings)
    try:
        if args.transactions is not None and args.churn_days is not None:
            return await _train_churn(settings, args)
        if args.transactions is not None:
            return await _train_lifetime_value(settings, args)
        if args.csv is not None:
            if not args.label:
                print("nextbest model train: --csv needs --label", file=sys.stderr)
                return 2
            dataset = load_csv(args.csv, args.label, drop=args.drop, positive=args.positive)
            trained = await train_from_dataset(settings, args.use_case, dataset, seed=args.seed,
                                               auto_promote_margin=_margin(settings, args))
        else:
            trained = await _train_from_log(settings, args)
            if trained is None:
                return 1
    except (DatasetError, ValueError, OSError) as exc:
        print(f"nextbest model train: {exc}", file=sys.stderr)
        return 1
    _report(trained, args.json)
    return 0


async def _train_churn(settings, args: argparse.Namespace) -> int:
    from services.scoring.lifetime_value import read_transactions
    from services.scoring.offline import train_churn_candidate

    trained = await train_churn_candidate(settings, args.use_case, read_transactions(args.transactions),
                                          horizon_days=args.churn_days, seed=args.seed, source=str(args.transactions),
                                          auto_promote_margin=_margin(settings, args))
    header = f"{'AUC':>7s} {'PR-AUC':>7s} {'logloss':>8s} {'churned':>8s}"
    return _report_history_model(trained, args.json, ("recency", "recency"), header, "AUC", lambda m: (
        f"{m['auc']:7.3f} {m['pr_auc']:7.3f} {m['logloss']:8.3f} {m['base_rate']:8.1%}"))


async def _train_lifetime_value(settings, args: argparse.Namespace) -> int:
    from services.scoring.lifetime_value import read_transactions
    from services.scoring.offline import train_lifetime_value_candidate

    trained = await train_lifetime_value_candidate(settings, args.use_case, read_transactions(args.transactions),
                                                   horizon_days=args.horizon_days, seed=args.seed,
                                                   source=str(args.transactions),
                                                   auto_promote_margin=_margin(settings, args))
    header = f"{'RMSE':>10s} {'MAE':>10s} {'Spearman':>9s} {'top-decile spend':>17s}"
    return _report_history_model(trained, args.json, ("RFM cells", "RFM"), header, "RMSE", lambda m: (
        f"{m['rmse']:10.2f} {m['mae']:10.2f} {m['spearman']:9.3f} {m['top_decile_spend_share']:17.1%}"))


def _report_history_model(trained, as_json: bool, baseline: tuple[str, str], header: str, deciding: str, row) -> int:
    """The registered candidate of a purchase-history model (LTV, churn) and its hold-out metrics vs its baseline
    (`baseline`: its row label and its name in the verdict; `row` formats one metrics dict under `header`)."""
    meta, result = trained.metadata, trained.result
    if as_json:
        print(orjson.dumps(meta.to_json(), option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"registered {meta.use_case}/{meta.version} as a candidate; trained on features at "
          f"{result.train_cutoff:%Y-%m-%d}, evaluated at {result.eval_cutoff:%Y-%m-%d} ({meta.row_counts})")
    print(f"  {'hold-out':10s} {header}")
    for name, metrics in (("model", result.metrics), (baseline[0], result.baseline_metrics)):
        print(f"  {name:10s} {row(metrics)}")
    verdict = "beats" if result.beats_baseline else "does NOT beat"
    print(f"  the model {verdict} the {baseline[1]} baseline on hold-out {deciding}")
    _report_promotion(trained)
    return 0


def _report_promotion(trained) -> None:
    """The champion comparison on the candidate's hold-out and auto-promotion's verdict."""
    meta, comparison = trained.metadata, trained.comparison
    if comparison is not None:
        metric = comparison["metric"]
        print(f"  champion {comparison['champion_version']} on the same hold-out: {metric.upper()} "
              f"{comparison[f'champion_{metric}']:.4f} (candidate {comparison[f'candidate_{metric}']:.4f})")
    if trained.promoted:
        print(f"promoted {meta.use_case}/{meta.version} to champion (served within the registry poll interval)")
    elif comparison is not None and comparison.get("margin") is not None:
        metric, margin = comparison["metric"], comparison["margin"]
        by = f"{margin:.1%} lower {metric.upper()}" if comparison["lower_is_better"] else f"{margin} {metric.upper()}"
        print(f"kept the champion: the candidate does not beat it by {by}")
    else:
        print(f"promote with: nextbest model promote {meta.use_case} {meta.version} [--challenger 0.1]")


async def read_decision_log(database_url: str, since: datetime | None = None):
    """Decisions and outcomes from the decision service's database, read-only, as scoring's plain records."""
    from sqlalchemy import select, text

    from libs.db import as_utc, create_engine
    from services.decision.storage import decisions, outcomes
    from services.scoring.outcomes import LoggedDecision, LoggedOutcome, ShownOffer

    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execute(text("SET TRANSACTION READ ONLY"))
            query = select(decisions.c.decision_id, decisions.c.customer_id, decisions.c.created_at,
                           decisions.c.model_version, decisions.c.offers, decisions.c.request, decisions.c.trace)
            if since is not None:
                query = query.where(decisions.c.created_at >= since)
            logged = []
            for row in await connection.execute(query.order_by(decisions.c.created_at)):
                request, trace = row.request or {}, row.trace or {}
                snapshot = request.get("customer_features", trace.get("customer_features"))
                logged.append(LoggedDecision(
                    decision_id=row.decision_id,
                    customer_id=row.customer_id,
                    decided_at=as_utc(row.created_at),
                    model_version=row.model_version,
                    offers=tuple(ShownOffer(o["offer_id"], float(o.get("propensity") or 0.0)) for o in row.offers or ()),
                    customer_features={k: float(v) for k, v in snapshot.items()} if snapshot is not None else None,
                    context=request.get("request_context") or {},
                ))
            outcome_rows = await connection.execute(select(
                outcomes.c.decision_id, outcomes.c.offer_id, outcomes.c.type, outcomes.c.occurred_at,
                outcomes.c.recorded_at, outcomes.c.revenue))
            recorded = [LoggedOutcome(r.decision_id, r.offer_id, r.type, as_utc(r.occurred_at), as_utc(r.recorded_at),
                                      float(r.revenue)) for r in outcome_rows]
    finally:
        await engine.dispose()
    return logged, recorded


MISSING_SNAPSHOT = (
    "the decision log stores no customer feature snapshot: decision_decisions.request has no 'customer_features' "
    "(the profile feature vector the decision scored with). Training on today's profile would leak later events "
    "into old decisions, so no model is trained. The decision service must log that field."
)


async def _train_from_log(settings, args: argparse.Namespace):
    from services.decision.catalogue import load_catalogue
    from services.decision.features import RequestContext, offer_features
    from services.decision.settings import DecisionSettings
    from services.scoring.offline import train_from_rows
    from services.scoring.outcomes import build_training_set

    decision_settings = load_settings(DecisionSettings)
    catalogue = load_catalogue(decision_settings.resolved_catalogue_dir)
    logged, recorded = await read_decision_log(decision_settings.resolved_database_url)

    def features_of(decision, offer_id: str):
        offer = catalogue.offer(offer_id)
        if offer is None:
            return None
        context = RequestContext(**{k: v for k, v in decision.context.items()
                                    if k in RequestContext.__dataclass_fields__})
        return offer_features(offer, context, catalogue)

    window = timedelta(days=args.window_days)
    training = build_training_set(logged, recorded, window=window, as_of=_time(args.as_of), offer_features=features_of)
    print(f"decision log: {len(logged)} decisions, {len(recorded)} outcomes; {len(training.rows)} training rows "
          f"({sum(training.labels)} accepted); skipped {training.skipped or 'none'}")
    if not training.rows:
        print(f"nextbest model train: {MISSING_SNAPSHOT if training.skipped.get('no_feature_snapshot') else 'no rows'}",
              file=sys.stderr)
        return None
    names: list[str] = []
    for row in training.rows:
        names.extend(name for name in row if name not in names)
    return await train_from_rows(settings, args.use_case, training.rows, training.labels, training.times, names,
                                 seed=args.seed, provenance={"source": "decision log",
                                                             "attribution_window_days": args.window_days,
                                                             "skipped": training.skipped},
                                 auto_promote_margin=_margin(settings, args))


# --------------------------------------------------------------------------------------------------- compare


async def cmd_compare(args: argparse.Namespace) -> int:
    from services.decision.settings import DecisionSettings
    from services.scoring.outcomes import compare_versions

    url = load_settings(DecisionSettings).resolved_database_url
    logged, recorded = await read_decision_log(url, _time(args.since) if args.since else None)
    reports = compare_versions(logged, recorded, window=timedelta(days=args.window_days), as_of=_time(args.as_of))
    if args.json:
        print(orjson.dumps([{**r.__dict__, "calibration_ratio": r.calibration_ratio} for r in reports],
                           option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        return 0
    if not reports:
        print("no decisions with a closed attribution window yet")
        return 0
    print(f"{'model version':26s} {'decisions':>9s}  {'acceptance (95% CI)':24s} {'revenue/decision (95% CI)':28s} "
          f"{'predicted':>9s} {'observed (95% CI)':22s} {'obs/pred':>8s}")
    for r in reports:
        a, v, o = r.acceptance, r.revenue_per_decision, r.observed_offer_rate
        print(f"{r.model_version:26s} {r.decisions:9d}  {a[0]:6.2%} [{a[1]:6.2%}, {a[2]:6.2%}]   "
              f"{v[0]:8.2f} [{v[1]:8.2f}, {v[2]:8.2f}]   {r.mean_predicted:9.4f} "
              f"{o[0]:6.2%} [{o[1]:6.2%}, {o[2]:6.2%}] {r.calibration_ratio:8.2f}")
    return 0
