"""`nextbest explain DECISION_ID`: why a logged decision returned what it did, from its stored trace."""

from __future__ import annotations

import argparse

from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as decision_pb

from cli.client import _call, _exit, common_options


def format_explanation(reply: decision_pb.ExplainResponse) -> str:
    """The trace as an operator reads it: versions first, then ranked, dropped and removed offers."""
    channel = common_pb2.Channel.Name(reply.channel)
    lines = [
        f"decision {reply.decision_id} for customer {reply.customer_id or '(anonymous)'} on "
        f"{channel.removeprefix('CHANNEL_').lower()} at {reply.decided_at.ToDatetime().isoformat()}Z",
        f"catalogue {reply.catalogue_version}, model {reply.model_version or '(rules: no model scored)'}, "
        f"arm {reply.arm or 'treatment'}, minimum priority {reply.min_priority:g}",
    ]
    if reply.degraded_reasons:
        lines.append(f"DEGRADED: {', '.join(reply.degraded_reasons)}")
    if reply.no_offer_reason:
        lines.append(f"NO OFFER: {reply.no_offer_reason}")
    by_fate: dict[int, list[decision_pb.ConsideredOffer]] = {}
    for offer in reply.considered:
        by_fate.setdefault(offer.fate, []).append(offer)
    ranked = sorted(by_fate.get(decision_pb.OFFER_FATE_RANKED, []), key=lambda o: o.rank)
    if ranked:
        lines.append("returned:")
        lines += [
            f"  {o.rank}. {o.offer_id}  {_factors(o)}"
            + (f"  [shown with p={o.probability:.3f}]" if o.probability < 1 else "")
            + (f"\n     {o.why}" if o.why else "")
            for o in ranked
        ]
    dropped = by_fate.get(decision_pb.OFFER_FATE_DROPPED, [])
    if dropped:
        lines.append("scored but not returned:")
        lines += [f"  - {o.offer_id}: {o.removed_by}  {_factors(o)}" for o in dropped]
    removed = by_fate.get(decision_pb.OFFER_FATE_REMOVED, [])
    if removed:
        lines.append("removed:")
        for o in removed:
            detail = f" [{o.stage}] {o.why}" if o.stage else f" {o.why}" if o.why else ""
            lines.append(f"  - {o.offer_id}: {o.removed_by}{detail}")
    return "\n".join(lines)


def _factors(offer: decision_pb.ConsideredOffer) -> str:
    weights = f" ({', '.join(offer.factors)})" if offer.factors else ""
    scaled = (
        f" x value factor {offer.value_factor:.3g} [{offer.value_factor_source}]" if offer.value_factor_source else ""
    )
    return (
        f"score {offer.score:.4f} = propensity {offer.propensity:.4f} [{offer.propensity_source}] x value "
        f"{offer.value:g}{scaled} x lever {offer.lever:g} x context {offer.context_weight:g}{weights}"
    )


async def cmd_explain(args: argparse.Namespace) -> int:
    reply = await _call(args, "decision", "Explain", decision_pb.ExplainRequest(decision_id=args.decision_id))
    if reply is not None and not args.json:
        print(format_explanation(reply))
    return _exit(reply)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain", parents=[common_options()], help="why a logged decision returned what it did (its stored trace)"
    )
    p.add_argument("decision_id", help="the decision id returned by `nextbest decide` or `nextbest call`")
    p.set_defaults(func=cmd_explain)
