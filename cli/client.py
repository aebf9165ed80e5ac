"""`nextbest` sub-commands that call every RPC of the mesh and print the answer readably (or as JSON).

Targets come from the same settings the services read (NEXTBEST_<SERVICE>_PORT, NEXTBEST_HOST), so the CLI
finds a mesh started with `nextbest mesh run` without flags; `--target` overrides.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2 as decision_pb
from nextbest.decision.v1 import decision_service_pb2_grpc as decision_grpc
from nextbest.identity.v1 import identity_service_pb2 as identity_pb
from nextbest.identity.v1 import identity_service_pb2_grpc as identity_grpc
from nextbest.inventory.v1 import inventory_service_pb2 as inventory_pb
from nextbest.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from nextbest.profile.v1 import profile_service_pb2 as profile_pb
from nextbest.profile.v1 import profile_service_pb2_grpc as profile_grpc
from nextbest.scoring.v1 import scoring_service_pb2 as scoring_pb
from nextbest.scoring.v1 import scoring_service_pb2_grpc as scoring_grpc

from libs.clients import open_channel, peer_credentials
from libs.protoconv import to_duration
from libs.settings import CommonSettings, load_settings

DEFAULT_PORTS = {"decision": 50050, "identity": 50051, "profile": 50052, "scoring": 50053, "inventory": 50054}
STUBS: dict[str, Callable] = {
    "decision": decision_grpc.DecisionServiceStub,
    "identity": identity_grpc.IdentityServiceStub,
    "profile": profile_grpc.ProfileServiceStub,
    "scoring": scoring_grpc.ScoringServiceStub,
    "inventory": inventory_grpc.InventoryServiceStub,
}
IDENTIFIER_FLAGS = {
    "email": common_pb2.IDENTIFIER_TYPE_EMAIL,
    "phone": common_pb2.IDENTIFIER_TYPE_PHONE,
    "loyalty_card": common_pb2.IDENTIFIER_TYPE_LOYALTY_CARD,
    "account_id": common_pb2.IDENTIFIER_TYPE_ACCOUNT_ID,
    "device_id": common_pb2.IDENTIFIER_TYPE_DEVICE_ID,
    "cookie_id": common_pb2.IDENTIFIER_TYPE_COOKIE_ID,
    "payment_token_hash": common_pb2.IDENTIFIER_TYPE_PAYMENT_TOKEN_HASH,
}
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
CHANNELS = {"web": common_pb2.CHANNEL_WEB, "pos": common_pb2.CHANNEL_POS, "call_center": common_pb2.CHANNEL_CALL_CENTER}


def service_target(service: str) -> str:
    """host:port of a service, read from the same environment variables the service reads."""
    import os

    host = load_settings(CommonSettings).host
    if host in WILDCARD_HOSTS:  # a bind-everything address is no destination; loopback is, and certificates name it
        host = "127.0.0.1"
    port = os.environ.get(f"NEXTBEST_{service.upper()}_PORT", str(DEFAULT_PORTS[service]))
    return f"{host}:{port}"


def cli_channel(target: str) -> grpc.aio.Channel:
    """The CLI's channel to a running service: TLS (with a client certificate) when NEXTBEST_TLS_* are set, and
    the operator's API key (NEXTBEST_AUTH_TOKEN) on every call."""
    return open_channel(target, credentials=peer_credentials(load_settings(CommonSettings)))


def _to_dict(message: Message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _print_tree(value: object, indent: int = 0) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                print(f"{pad}{key}:")
                _print_tree(item, indent + 1)
            else:
                print(f"{pad}{key}: {item}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)):
                print(f"{pad}-")
                _print_tree(item, indent + 1)
            else:
                print(f"{pad}- {item}")
    else:
        print(f"{pad}{value}")


async def _call(args: argparse.Namespace, service: str, method: str, request: Message) -> Message | None:
    """Call one RPC; print the reply (JSON with --json); print the gRPC status and return None on error."""
    target = args.target or service_target(service)
    async with cli_channel(target) as channel:
        stub = STUBS[service](channel)
        try:
            reply = await getattr(stub, method)(request, timeout=args.timeout)
        except grpc.aio.AioRpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return None
    if args.json:
        print(orjson.dumps(_to_dict(reply), option=orjson.OPT_INDENT_2).decode())
    return reply


def _identifiers(args: argparse.Namespace) -> list[common_pb2.Identifier]:
    return [
        common_pb2.Identifier(type=kind, value=getattr(args, flag))
        for flag, kind in IDENTIFIER_FLAGS.items()
        if getattr(args, flag, None)
    ]


def _customer_ref(args: argparse.Namespace) -> common_pb2.CustomerRef:
    return common_pb2.CustomerRef(customer_id=args.customer_id or "", identifiers=_identifiers(args))


def _add_identifier_flags(parser: argparse.ArgumentParser, with_customer_id: bool = True) -> None:
    if with_customer_id:
        parser.add_argument("--customer-id", help="the NextBest customer id")
    for flag in IDENTIFIER_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, help=f"identify the customer by {flag}")


def _exit(reply: Message | None) -> int:
    return 0 if reply is not None else 1


# --- decision -------------------------------------------------------------------------------------------------


def _print_offers(offers) -> None:
    for offer in offers:
        kind = decision_pb.OfferType.Name(offer.type).removeprefix("OFFER_TYPE_").lower()
        print(
            f"  {offer.rank}. {offer.name} [{offer.offer_id}, {kind}]  score={offer.score:.3f} "
            f"propensity={offer.propensity:.3f} value={offer.value:.2f} lever={offer.lever:.2f}"
        )
        if offer.reason_codes:
            print(f"     why: {', '.join(offer.reason_codes)}")
        if offer.HasField("prefill") and offer.prefill.sku:
            p = offer.prefill
            print(f"     cart pre-fill: {p.sku} x{p.quantity} (size {p.size}, colour {p.colour}), shipping {p.shipping_method}")
        if offer.script:
            print(f"     say: {offer.script}")
        for hint in offer.stock:
            print(f"     stock: {hint.sku} at {hint.location_id}: {hint.on_hand}")


async def cmd_decide(args: argparse.Namespace) -> int:
    context = decision_pb.DecisionContext(
        page=args.page or "",
        sku=args.sku or "",
        store_id=args.store or "",
        call_reason=args.call_reason or "",
        placement=args.placement or "",
        cart=[_cart_line(line) for line in args.cart],
    )
    if args.dwell:
        context.dwell.CopyFrom(to_duration(timedelta(seconds=args.dwell)))
    request = decision_pb.DecideRequest(
        channel=CHANNELS[args.channel], customer=_customer_ref(args), context=context, max_offers=args.max_offers
    )
    reply = await _call(args, "decision", "Decide", request)
    if reply is not None and not args.json:
        print(f"decision {reply.decision_id} for customer {reply.customer_id or '(anonymous)'}")
        print(f"catalogue {reply.catalogue_version}, model {reply.model_version or '(rules)'}")
        if reply.degraded:
            print(f"DEGRADED: {', '.join(reply.degraded_reasons)}")
        if reply.arm and reply.arm != "treatment":
            print(f"arm: {reply.arm}")
        if not reply.offers:
            print(f"  no offer ({reply.no_offer_reason or 'none returned'}); `nextbest explain {reply.decision_id}`")
        _print_offers(reply.offers)
    return _exit(reply)


def _cart_line(text: str) -> common_pb2.CartLine:
    sku, _, rest = text.partition(":")
    quantity, _, price = rest.partition(":")
    return common_pb2.CartLine(sku=sku, quantity=int(quantity or 1), unit_price=float(price or 0))


async def cmd_call(args: argparse.Namespace) -> int:
    request = decision_pb.PrioritizeCallRequest(customer=_customer_ref(args), call_reason=args.reason or "")
    reply = await _call(args, "decision", "PrioritizeCall", request)
    if reply is not None and not args.json:
        tier = decision_pb.CallTier.Name(reply.tier).removeprefix("CALL_TIER_")
        print(f"caller {reply.customer_id or '(unknown)'}: priority {reply.priority}/100, tier {tier}")
        print(f"  why: {', '.join(reply.reasons)}")
        if reply.degraded:
            print(f"  DEGRADED: {', '.join(reply.degraded_reasons)}")
        if reply.HasField("next_best_action"):
            print("  agent's next-best action:")
            _print_offers([reply.next_best_action])
    return _exit(reply)


async def cmd_outcome(args: argparse.Namespace) -> int:
    import uuid

    request = decision_pb.RecordOutcomeRequest(
        outcome_id=args.outcome_id or uuid.uuid4().hex,
        decision_id=args.decision_id,
        offer_id=args.offer_id,
        type=decision_pb.OutcomeType.Value(f"OUTCOME_TYPE_{args.type.upper()}"),
        revenue=args.revenue,
    )
    reply = await _call(args, "decision", "RecordOutcome", request)
    if reply is not None and not args.json:
        print(f"outcome {request.outcome_id}: {'duplicate, already recorded' if reply.duplicate else 'recorded'}")
    return _exit(reply)


# --- identity -------------------------------------------------------------------------------------------------


async def cmd_resolve(args: argparse.Namespace) -> int:
    request = identity_pb.ResolveRequest(identifiers=_identifiers(args), create_if_missing=args.create)
    reply = await _call(args, "identity", "Resolve", request)
    if reply is not None and not args.json:
        _print_tree(_to_dict(reply))
    return _exit(reply)


async def cmd_customer(args: argparse.Namespace) -> int:
    reply = await _call(args, "identity", "GetCustomer", identity_pb.GetCustomerRequest(customer_id=args.customer_id))
    if reply is not None and not args.json:
        _print_tree(_to_dict(reply))
    return _exit(reply)


async def cmd_consent(args: argparse.Namespace) -> int:
    if args.action == "get":
        reply = await _call(args, "identity", "GetConsent", identity_pb.GetConsentRequest(customer_id=args.customer_id))
    else:
        consent = identity_pb.Consent(
            purpose=identity_pb.ConsentPurpose.Value(f"CONSENT_PURPOSE_{args.purpose.upper()}"),
            channel={**CHANNELS, "email": common_pb2.CHANNEL_EMAIL}[args.channel],
            granted=args.action == "grant",
            source=args.source,
        )
        request = identity_pb.SetConsentRequest(customer_id=args.customer_id, consents=[consent])
        reply = await _call(args, "identity", "SetConsent", request)
    if reply is not None and not args.json:
        _print_tree(_to_dict(reply))
    return _exit(reply)


# --- profile --------------------------------------------------------------------------------------------------


async def cmd_profile(args: argparse.Namespace) -> int:
    request = profile_pb.GetProfileRequest(customer_id=args.customer_id, include_features=args.features)
    reply = await _call(args, "profile", "GetProfile", request)
    if reply is not None and not args.json:
        _print_tree(_to_dict(reply))
    return _exit(reply)


async def cmd_features(args: argparse.Namespace) -> int:
    reply = await _call(args, "profile", "GetFeatures", profile_pb.GetFeaturesRequest(customer_id=args.customer_id))
    if reply is not None and not args.json:
        for name, value in sorted(reply.features.items()):
            print(f"  {name:32s} {value:12.3f}")
    return _exit(reply)


async def cmd_ingest(args: argparse.Namespace) -> int:
    """Events as JSON lines (protobuf JSON mapping of nextbest.profile.v1.Event)."""
    events = []
    for number, line in enumerate(Path(args.file).read_text().splitlines(), start=1):
        if line.strip():
            try:
                events.append(json_format.Parse(line, profile_pb.Event()))
            except json_format.ParseError as exc:
                print(f"{args.file}:{number}: {exc}", file=sys.stderr)
                return 2
    reply = await _call(args, "profile", "IngestEvents", profile_pb.IngestEventsRequest(events=events))
    if reply is not None and not args.json:
        print(f"accepted {reply.accepted}, duplicates {reply.duplicates}, rejected {len(reply.rejected)}")
        for r in reply.rejected:
            print(f"  event #{r.index} ({r.event_id}): {r.field}: {r.reason}")
    return _exit(reply)


# --- scoring --------------------------------------------------------------------------------------------------


async def cmd_models(args: argparse.Namespace) -> int:
    reply = await _call(args, "scoring", "ListModels", scoring_pb.ListModelsRequest(use_case=args.use_case or ""))
    if reply is not None and not args.json:
        for m in reply.models:
            status = scoring_pb.ModelStatus.Name(m.status).removeprefix("MODEL_STATUS_").lower()
            metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(m.metrics.items()))
            print(f"{m.use_case} {m.version} [{status}] {m.name}: {len(m.feature_names)} features, "
                  f"{m.training_rows} rows, {metrics}")
    return _exit(reply)


async def cmd_score(args: argparse.Namespace) -> int:
    """Score catalogue offers for a customer: features from the profile service, offer features from the catalogue."""
    from services.decision.catalogue import load_catalogue
    from services.decision.features import RequestContext, offer_features
    from services.decision.settings import DecisionSettings

    catalogue = load_catalogue(load_settings(DecisionSettings).catalogue_dir)
    features_reply = await _call(
        argparse.Namespace(**{**vars(args), "json": False}),
        "profile", "GetFeatures", profile_pb.GetFeaturesRequest(customer_id=args.customer_id),
    )
    if features_reply is None:
        return 1
    context = RequestContext(channel=args.channel)
    candidates = []
    for offer_id in args.offers or [o.id for o in catalogue.offers if args.channel in o.channels]:
        offer = catalogue.offer(offer_id)
        if offer is None:
            print(f"unknown offer {offer_id!r}", file=sys.stderr)
            return 2
        candidates.append(scoring_pb.Candidate(offer_id=offer.id, offer_features=offer_features(offer, context, catalogue)))
    request = scoring_pb.ScoreRequest(
        customer_id=args.customer_id, customer_features=features_reply.features, candidates=candidates
    )
    reply = await _call(args, "scoring", "Score", request)
    if reply is not None and not args.json:
        print(f"model {reply.model_name} {reply.model_version}")
        for s in sorted(reply.scores, key=lambda s: -s.probability):
            print(f"  {s.offer_id:32s} {s.probability:.4f}")
    return _exit(reply)


# --- inventory ------------------------------------------------------------------------------------------------


async def cmd_availability(args: argparse.Namespace) -> int:
    request = inventory_pb.CheckAvailabilityRequest(
        skus=args.sku, product_ids=args.product, location_ids=args.location
    )
    reply = await _call(args, "inventory", "CheckAvailability", request)
    if reply is not None and not args.json:
        for a in reply.availability:
            print(f"  {a.sku:18s} {a.size:>5s} {a.colour:10s} at {a.location_id:5s}: {a.on_hand}")
        for unknown in reply.unknown:
            print(f"  unknown: {unknown}")
    return _exit(reply)


async def cmd_stock(args: argparse.Namespace) -> int:
    import uuid

    change = inventory_pb.StockChange(sku=args.sku, location_id=args.location)
    if args.action == "set":
        change.set_on_hand = args.quantity
    else:
        change.adjust_by = args.quantity
    request = inventory_pb.UpdateStockRequest(update_id=args.update_id or uuid.uuid4().hex, changes=[change])
    reply = await _call(args, "inventory", "UpdateStock", request)
    if reply is not None and not args.json:
        print("duplicate update, nothing changed" if reply.duplicate else "updated")
        for a in reply.availability:
            print(f"  {a.sku} at {a.location_id}: {a.on_hand}")
    return _exit(reply)


# --- wiring ---------------------------------------------------------------------------------------------------


def common_options(timeout: float = 5.0) -> argparse.ArgumentParser:
    """--json, --target and --timeout, shared by every RPC command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the raw reply as JSON")
    common.add_argument("--target", help="host:port of the service (default: from settings)")
    common.add_argument("--timeout", type=float, default=timeout, help=f"deadline in seconds (default {timeout:g})")
    return common


def register(subparsers: argparse._SubParsersAction) -> None:
    common = common_options()

    p = subparsers.add_parser("decide", parents=[common], help="next-best offers for a customer in a channel")
    p.add_argument("--channel", choices=CHANNELS, required=True)
    _add_identifier_flags(p)
    p.add_argument("--page", help="web: the page the visitor is on")
    p.add_argument("--sku", help="the SKU viewed (web) or looked for (POS)")
    p.add_argument("--dwell", type=float, help="web: seconds on the product")
    p.add_argument("--store", help="POS: the store id")
    p.add_argument("--call-reason", help="call centre: why the customer calls")
    p.add_argument("--placement", help="the slot the offers fill (e.g. cart, checkout, till): offers listing placements only show there")
    p.add_argument("--cart", action="append", default=[], metavar="SKU:QTY:PRICE", help="a cart line (repeatable)")
    p.add_argument("--max-offers", type=int, default=0)
    p.set_defaults(func=cmd_decide)

    p = subparsers.add_parser("call", parents=[common], help="queue priority and next-best action for a caller")
    _add_identifier_flags(p)
    p.add_argument("--reason", help="call reason, e.g. complaint, cancel, order_status")
    p.set_defaults(func=cmd_call)

    p = subparsers.add_parser("outcome", parents=[common], help="record what the customer did with an offer")
    p.add_argument("decision_id")
    p.add_argument("offer_id")
    p.add_argument("type", choices=["impression", "click", "accept", "decline", "purchase"])
    p.add_argument("--outcome-id", help="idempotency key (default: random)")
    p.add_argument("--revenue", type=float, default=0.0)
    p.set_defaults(func=cmd_outcome)

    p = subparsers.add_parser("resolve", parents=[common], help="resolve identifiers to a customer id")
    _add_identifier_flags(p, with_customer_id=False)
    p.add_argument("--create", action="store_true", help="create the customer when nothing matches")
    p.set_defaults(func=cmd_resolve)

    p = subparsers.add_parser("customer", parents=[common], help="a customer's identifiers")
    p.add_argument("customer_id")
    p.set_defaults(func=cmd_customer)

    p = subparsers.add_parser("consent", parents=[common], help="read or record consent")
    p.add_argument("action", choices=["get", "grant", "deny"])
    p.add_argument("customer_id")
    p.add_argument("--purpose", choices=["marketing", "personalization", "analytics"], default="marketing")
    p.add_argument("--channel", choices=[*CHANNELS, "email"], default="web")
    p.add_argument("--source", default="cli")
    p.set_defaults(func=cmd_consent)

    p = subparsers.add_parser("features", parents=[common], help="a customer's feature vector")
    p.add_argument("customer_id")
    p.set_defaults(func=cmd_features)

    p = subparsers.add_parser("ingest", parents=[common], help="ingest events from a JSON-lines file")
    p.add_argument("file")
    p.set_defaults(func=cmd_ingest)

    p = subparsers.add_parser("models", parents=[common], help="list registered models")
    p.add_argument("--use-case")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser("score", parents=[common], help="score catalogue offers for a customer")
    p.add_argument("customer_id")
    p.add_argument("offers", nargs="*", help="offer ids (default: every offer of the channel)")
    p.add_argument("--channel", choices=CHANNELS, default="web")
    p.set_defaults(func=cmd_score)

    p = subparsers.add_parser("availability", parents=[common], help="stock by SKU or product and location")
    p.add_argument("--sku", action="append", default=[])
    p.add_argument("--product", action="append", default=[])
    p.add_argument("--location", action="append", default=[])
    p.set_defaults(func=cmd_availability)

    p = subparsers.add_parser("stock", parents=[common], help="set or adjust stock of a SKU at a location")
    p.add_argument("action", choices=["set", "adjust"])
    p.add_argument("sku")
    p.add_argument("location")
    p.add_argument("quantity", type=int)
    p.add_argument("--update-id", help="idempotency key (default: random)")
    p.set_defaults(func=cmd_stock)
