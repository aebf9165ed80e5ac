"""The control group: a deterministic share of customers who get a random eligible offer (or none), so uplift of
arbitration over no targeting can be measured. The arm is logged with every decision (trace and DecideResponse).

Assignment hashes the customer id with a salt: the same customer is always in the same arm (across replicas and
restarts) until the operator changes the salt or the share. Anonymous visitors are always "treatment" (no stable id).

A/B test of arbitration strategies: within the treatment, a second hash (its own salt, so independent of the control
draw) sends a share of customers to strategy B ("treatment_b"); the rest stay on strategy A ("treatment"). Both
count as treatment for the uplift over control; the report grouped by arm compares them.
"""

from __future__ import annotations

import hashlib

TREATMENT = "treatment"
TREATMENT_B = "treatment_b"
CONTROL = "control"


def bucket(customer_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the customer id and the salt."""
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def arm_of(customer_id: str, control_share: float, salt: str) -> str:
    if not customer_id or control_share <= 0:
        return TREATMENT
    return CONTROL if bucket(customer_id, salt) < control_share else TREATMENT


def strategy_arm(customer_id: str, b_share: float, salt: str) -> str:
    """A treatment customer's strategy arm: TREATMENT_B for a `b_share` of them by hash, else TREATMENT."""
    if not customer_id or b_share <= 0:
        return TREATMENT
    return TREATMENT_B if bucket(customer_id, salt) < b_share else TREATMENT
