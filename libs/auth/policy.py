"""Who may call what: one table from every RPC to the scope it needs, one from every role to its scopes.

A method missing from METHOD_SCOPES is denied to everyone, operators included: a new RPC is closed until someone
decides who may call it (a unit test checks that every RPC of every service is listed). Decide also looks at the
request: each role decides only for its own channel, and a POS client only for its own stores.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message
from nextbest.common.v1 import common_pb2

from libs.auth.keystore import Caller, Role

#: Always open, so that orchestrators and tools can probe a server that has a keystore.
OPEN_SERVICES = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)

DECIDE = "/nextbest.decision.v1.DecisionService/Decide"

#: Full gRPC method name → the scope a caller needs.
METHOD_SCOPES: dict[str, str] = {
    DECIDE: "decide",
    "/nextbest.decision.v1.DecisionService/RecordOutcome": "outcomes.write",
    "/nextbest.decision.v1.DecisionService/PrioritizeCall": "calls.prioritize",
    "/nextbest.decision.v1.DecisionService/Explain": "decisions.explain",
    "/nextbest.decision.v1.DecisionService/GetReport": "reports.read",
    "/nextbest.identity.v1.IdentityService/Resolve": "identity.resolve",
    "/nextbest.identity.v1.IdentityService/GetCustomer": "identity.read",
    "/nextbest.identity.v1.IdentityService/GetConsent": "consent.read",
    "/nextbest.identity.v1.IdentityService/SetConsent": "consent.write",
    "/nextbest.identity.v1.IdentityService/Merge": "identity.admin",
    "/nextbest.identity.v1.IdentityService/Unmerge": "identity.admin",
    "/nextbest.identity.v1.IdentityService/Forget": "identity.admin",
    "/nextbest.identity.v1.IdentityService/WatchChanges": "changes.watch",
    "/nextbest.identity.v1.IdentityService/ListLineage": "lineage.read",
    "/nextbest.profile.v1.ProfileService/IngestEvents": "events.ingest",
    "/nextbest.profile.v1.ProfileService/StreamEvents": "events.ingest",
    "/nextbest.profile.v1.ProfileService/GetProfile": "profiles.read",
    "/nextbest.profile.v1.ProfileService/GetFeatures": "features.read",
    # Every customer's features at once: batch jobs (nightly rescoring) run as an operator, never a peer service.
    "/nextbest.profile.v1.ProfileService/ListFeatures": "features.bulk_read",
    "/nextbest.profile.v1.ProfileService/WatchChanges": "changes.watch",
    "/nextbest.profile.v1.ProfileService/PutSegment": "segments.admin",
    "/nextbest.profile.v1.ProfileService/DeleteSegment": "segments.admin",
    "/nextbest.profile.v1.ProfileService/ListSegments": "segments.read",
    "/nextbest.profile.v1.ProfileService/ListSegmentVersions": "segments.read",
    "/nextbest.profile.v1.ProfileService/ListSegmentMembers": "segments.read",
    "/nextbest.profile.v1.ProfileService/RefoldProfiles": "profiles.admin",
    "/nextbest.scoring.v1.ScoringService/Score": "scoring.score",
    "/nextbest.scoring.v1.ScoringService/ScoreBatch": "scoring.score",
    "/nextbest.scoring.v1.ScoringService/Explain": "scoring.explain",
    "/nextbest.scoring.v1.ScoringService/ListModels": "models.read",
    "/nextbest.scoring.v1.ScoringService/GetModel": "models.read",
    "/nextbest.scoring.v1.ScoringService/PromoteModel": "models.admin",
    "/nextbest.scoring.v1.ScoringService/RetireModel": "models.admin",
    "/nextbest.inventory.v1.InventoryService/CheckAvailability": "stock.read",
    "/nextbest.inventory.v1.InventoryService/UpdateStock": "stock.write",
    "/nextbest.inventory.v1.InventoryService/WatchChanges": "changes.watch",
}


@dataclass(frozen=True)
class RolePolicy:
    """What a role may do: its scopes and, for Decide, the channels it may decide for."""

    scopes: frozenset[str]
    decide_channels: frozenset[int] = frozenset()
    #: Decide only for the client's own stores (request.context.store_id).
    own_stores_only: bool = False


ROLES: dict[Role, RolePolicy] = {
    "web": RolePolicy(frozenset({"decide", "outcomes.write"}), frozenset({common_pb2.CHANNEL_WEB})),
    "pos": RolePolicy(
        frozenset({"decide", "outcomes.write"}), frozenset({common_pb2.CHANNEL_POS}), own_stores_only=True
    ),
    "call_centre": RolePolicy(
        frozenset({"decide", "calls.prioritize", "outcomes.write", "decisions.explain"}),
        frozenset({common_pb2.CHANNEL_CALL_CENTER}),
    ),
    "operator": RolePolicy(
        frozenset(METHOD_SCOPES.values()),
        frozenset(v for v in common_pb2.Channel.values() if v != common_pb2.CHANNEL_UNSPECIFIED),
    ),
    # Exactly the calls the mesh makes between services: decision → identity, profile, scoring, inventory;
    # profile → identity (Resolve, its change feed for the resolution cache, and following the lineage journal, as
    # the decision does too).
    "service": RolePolicy(
        frozenset({
            "identity.resolve", "consent.read", "changes.watch", "lineage.read", "profiles.read", "features.read",
            "events.ingest", "scoring.score", "scoring.explain", "stock.read",
        })
    ),
}


def is_open(method: str) -> bool:
    """Health and reflection need no credential."""
    return method.lstrip("/").partition("/")[0] in OPEN_SERVICES


def authorize(caller: Caller, method: str, request: Message | None) -> str | None:
    """Why `caller` may not make this call (a message for PERMISSION_DENIED), or None when it may."""
    scope = METHOD_SCOPES.get(method)
    if scope is None:
        return f"{method} is not in the access policy; no client may call it"
    role = ROLES[caller.client.role]
    if scope not in role.scopes:
        return f"{method} needs scope {scope!r}, which role {caller.client.role!r} does not have"
    if method == DECIDE and request is not None:
        return _decide_denial(caller, role, request)
    return None


def _decide_denial(caller: Caller, role: RolePolicy, request: Message) -> str | None:
    channel = request.channel  # type: ignore[attr-defined]
    if channel not in role.decide_channels:
        name = common_pb2.Channel.Name(channel) if channel in common_pb2.Channel.values() else str(channel)
        return f"channel: role {caller.client.role!r} may not decide for {name}"
    if role.own_stores_only:
        store = request.context.store_id  # type: ignore[attr-defined]
        if not store:
            return "context.store_id: required for a client bound to stores"
        if store not in caller.client.stores:
            return f"context.store_id: store {store} is not one of this client's stores"
    return None
