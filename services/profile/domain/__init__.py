"""The profile domain: events, their validation, the incrementally folded state, traits, features, use cases.

Imports no gRPC and no SQL; storage and the identity client plug in through the ports in `service`.
"""

from services.profile.domain.events import AcceptedEvent, Event, Identifier
from services.profile.domain.features import FEATURE_NAMES, compute_features
from services.profile.domain.service import (
    Activity,
    EventRecord,
    IngestResult,
    ProfileService,
    ProfileView,
    Rejection,
    Resolver,
    StoredProfile,
)
from services.profile.domain.state import ProfileState, Traits
from services.profile.domain.validation import validate_event

__all__ = [
    "FEATURE_NAMES",
    "AcceptedEvent",
    "Activity",
    "Event",
    "EventRecord",
    "Identifier",
    "IngestResult",
    "ProfileService",
    "ProfileState",
    "ProfileView",
    "Rejection",
    "Resolver",
    "StoredProfile",
    "Traits",
    "compute_features",
    "validate_event",
]
