"""The control group: a deterministic share of customers who get a random eligible offer (or none), so uplift of
arbitration over no targeting can be measured. The arm is logged with every decision (trace and DecideResponse).

Assignment hashes the customer id with a salt: the same customer is always in the same arm (across replicas and
restarts) until the operator changes the salt or the share. Anonymous visitors are always "treatment" (no stable id).
"""

from __future__ import annotations

import hashlib

TREATMENT = "treatment"
CONTROL = "control"


def bucket(customer_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the customer id and the salt."""
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm_of(customer_id: str, control_share: float, salt: str) -> str:
    if not customer_id or control_share <= 0:
        return TREATMENT
    return CONTROL if bucket(customer_id, salt) < control_share else TREATMENT
