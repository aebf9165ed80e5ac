"""The keystore (hashed keys, rotation, revocation, expiry, reload), the access policy and the token bucket."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

import pytest
from nextbest.common.v1 import common_pb2
from nextbest.decision.v1 import decision_service_pb2
from nextbest.identity.v1 import identity_service_pb2
from nextbest.inventory.v1 import inventory_service_pb2
from nextbest.profile.v1 import profile_service_pb2
from nextbest.scoring.v1 import scoring_service_pb2

from libs.auth.keystore import AuthenticationError, Caller, Keystore, KeystoreError, hash_secret
from libs.auth.policy import METHOD_SCOPES, ROLES, authorize, is_open
from libs.auth.ratelimit import RateLimiter, TokenBucket
from libs.auth.server import KeystoreWatcher, load_keystore
from libs.settings import CommonSettings

SERVICE_MODULES = (
    decision_service_pb2, identity_service_pb2, inventory_service_pb2, profile_service_pb2, scoring_service_pb2
)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def every_rpc() -> list[str]:
    """Every method of every NextBest service, from the generated descriptors (not from the policy table)."""
    return [
        f"/{service.full_name}/{method.name}"
        for module in SERVICE_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def test_policy_table_lists_every_rpc_of_every_service_and_nothing_else():
    rpcs = every_rpc()
    assert len(rpcs) >= 30
    assert sorted(METHOD_SCOPES) == sorted(rpcs)
    operator = Caller(Keystore().add_client("ops", "operator"), "0" * 12)
    assert all(authorize(operator, method, None) is None for method in rpcs)


def test_an_unlisted_method_is_denied_even_to_operators():
    operator = Caller(Keystore().add_client("ops", "operator"), "0" * 12)
    denial = authorize(operator, "/nextbest.decision.v1.DecisionService/DropEverything", None)
    assert denial == "/nextbest.decision.v1.DecisionService/DropEverything is not in the access policy; " \
                     "no client may call it"


def test_only_health_and_reflection_are_open():
    assert is_open("/grpc.health.v1.Health/Check")
    assert is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not is_open("/nextbest.identity.v1.IdentityService/Resolve")
    assert not is_open("/grpc.health.v1.HealthX/Check")


@pytest.mark.parametrize(
    ("role", "method", "allowed"),
    [
        ("web", "/nextbest.profile.v1.ProfileService/GetProfile", False),
        ("web", "/nextbest.identity.v1.IdentityService/GetCustomer", False),
        ("web", "/nextbest.decision.v1.DecisionService/RecordOutcome", True),
        ("call_centre", "/nextbest.decision.v1.DecisionService/PrioritizeCall", True),
        ("call_centre", "/nextbest.scoring.v1.ScoringService/PromoteModel", False),
        ("service", "/nextbest.identity.v1.IdentityService/Resolve", True),
        ("service", "/nextbest.identity.v1.IdentityService/Forget", False),
        ("service", "/nextbest.inventory.v1.InventoryService/UpdateStock", False),
        ("service", "/nextbest.decision.v1.DecisionService/Decide", False),
        ("operator", "/nextbest.profile.v1.ProfileService/PutSegment", True),
    ],
)
def test_roles_get_only_their_scopes(role, method, allowed):
    keystore = Keystore()
    client = keystore.add_client("c", role, stores=("S1",) if role == "pos" else ())
    denial = authorize(Caller(client, "0" * 12), method, None)
    assert (denial is None) is allowed, denial
    if not allowed:
        assert f"needs scope {METHOD_SCOPES[method]!r}" in denial


def test_decide_is_bound_to_the_roles_channel_and_the_pos_clients_stores():
    keystore = Keystore()
    pos = Caller(keystore.add_client("tills", "pos", stores=("S1", "S2")), "0" * 12)
    web = Caller(keystore.add_client("shop", "web"), "1" * 12)
    decide = "/nextbest.decision.v1.DecisionService/Decide"

    def request(channel, store=""):
        return decision_service_pb2.DecideRequest(channel=channel, context={"store_id": store})

    assert authorize(pos, decide, request(common_pb2.CHANNEL_POS, "S2")) is None
    assert authorize(pos, decide, request(common_pb2.CHANNEL_POS, "S9")) == (
        "context.store_id: store S9 is not one of this client's stores"
    )
    assert authorize(pos, decide, request(common_pb2.CHANNEL_POS)) == (
        "context.store_id: required for a client bound to stores"
    )
    assert authorize(pos, decide, request(common_pb2.CHANNEL_WEB, "S1")) == (
        "channel: role 'pos' may not decide for CHANNEL_WEB"
    )
    assert authorize(web, decide, request(common_pb2.CHANNEL_WEB)) is None
    assert authorize(web, decide, request(common_pb2.CHANNEL_CALL_CENTER)).startswith("channel:")
    assert set(ROLES) == {"web", "pos", "call_centre", "operator", "service"}


def test_only_the_hash_of_a_key_is_stored_and_the_key_authenticates(tmp_path):
    keystore = Keystore()
    keystore.add_client("shop", "web", rate_per_second=50, burst=100)
    key_id, key = keystore.issue_key("shop", now=NOW)
    path = tmp_path / "keys.json"
    keystore.save(path)

    text = path.read_text()
    secret = key.split("_", 2)[2]
    assert key.startswith(f"nbk_{key_id}_") and secret not in text and hash_secret(secret) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    caller = Keystore.load(path).authenticate(key)
    assert (caller.client.name, caller.key_id, caller.client.rate_per_second) == ("shop", key_id, 50)


@pytest.mark.parametrize(
    ("presented", "reason"),
    [
        ("", "malformed API key"),
        ("Bearer nbk_x", "malformed API key"),
        ("nbk_0123456789ab_secret", "unknown or revoked API key"),
    ],
)
def test_malformed_and_unknown_keys_are_refused(presented, reason):
    with pytest.raises(AuthenticationError) as error:
        Keystore().authenticate(presented)
    assert error.value.reason.startswith(reason)


def test_wrong_secret_is_refused_and_names_the_key_id():
    keystore = Keystore()
    keystore.add_client("shop", "web")
    key_id, key = keystore.issue_key("shop")
    with pytest.raises(AuthenticationError) as error:
        keystore.authenticate(key[:-2] + ("aa" if not key.endswith("aa") else "bb"))
    assert (error.value.reason, error.value.key_id) == ("wrong API key secret", key_id)


def test_rotation_two_keys_valid_then_the_revoked_one_refused():
    keystore = Keystore()
    keystore.add_client("shop", "web")
    old_id, old = keystore.issue_key("shop")
    new_id, new = keystore.issue_key("shop")
    assert {keystore.authenticate(old).key_id, keystore.authenticate(new).key_id} == {old_id, new_id}

    assert keystore.revoke_key(old_id) == "shop"
    assert keystore.authenticate(new).key_id == new_id
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        keystore.authenticate(old)
    with pytest.raises(KeystoreError, match="no key with id"):
        keystore.revoke_key(old_id)


def test_expired_key_is_refused():
    keystore = Keystore()
    keystore.add_client("shop", "web")
    _, key = keystore.issue_key("shop", expires_at=NOW + timedelta(days=1))
    assert keystore.authenticate(key, now=NOW).client.name == "shop"
    with pytest.raises(AuthenticationError, match="expired at 2026-01-02"):
        keystore.authenticate(key, now=NOW + timedelta(days=1))


def test_invalid_clients_and_files_are_rejected_with_a_message(tmp_path):
    keystore = Keystore()
    with pytest.raises(KeystoreError, match="a pos client needs at least one store"):
        keystore.add_client("tills", "pos")
    with pytest.raises(KeystoreError, match="only pos clients are bound to stores"):
        keystore.add_client("shop", "web", stores=("S1",))
    keystore.add_client("shop", "web")
    with pytest.raises(KeystoreError, match="already exists"):
        keystore.add_client("shop", "operator")
    path = tmp_path / "keys.json"
    path.write_text('{"version": 1, "clients": [{"name": "x", "role": "admin"}]}')
    with pytest.raises(KeystoreError, match=r"clients\.0\.role"):
        Keystore.load(path)
    with pytest.raises(KeystoreError, match="cannot read keystore"):
        Keystore.load(tmp_path / "missing.json")


def test_removing_a_client_removes_its_keys():
    keystore = Keystore()
    keystore.add_client("shop", "web")
    _, key = keystore.issue_key("shop")
    keystore.remove_client("shop")
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        keystore.authenticate(key)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_watcher_reloads_on_change_at_most_every_interval_and_keeps_the_last_good_file(tmp_path):
    path = tmp_path / "keys.json"
    keystore = Keystore()
    keystore.add_client("shop", "web")
    _, old = keystore.issue_key("shop")
    keystore.save(path)
    clock = Clock()
    watcher = KeystoreWatcher(path, check_interval=2.0, clock=clock)
    assert watcher.current().authenticate(old)

    _, new = keystore.issue_key("shop")
    keystore.save(path)
    clock.now += 1.0  # within the interval: no stat, the old keystore still answers
    with pytest.raises(AuthenticationError):
        watcher.current().authenticate(new)
    clock.now += 1.0
    assert watcher.current().authenticate(new).client.name == "shop"

    path.write_text("{not json")
    os.utime(path, ns=(1, 1))
    clock.now += 2.0
    assert watcher.current().authenticate(new).client.name == "shop"


def test_watcher_refuses_to_start_on_a_malformed_keystore(tmp_path):
    path = tmp_path / "keys.json"
    path.write_text("[]")
    with pytest.raises(SystemExit, match="NEXTBEST_AUTH_KEYS_FILE: malformed keystore"):
        KeystoreWatcher(path)


def test_token_bucket_allows_the_burst_then_the_rate_and_says_how_long_to_wait():
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_rate_limiter_is_per_client_and_follows_changed_limits():
    clock = Clock()
    limiter = RateLimiter(clock)
    keystore = Keystore()
    slow = keystore.add_client("slow", "web", rate_per_second=1, burst=1)
    free = keystore.add_client("free", "operator")
    assert limiter.retry_after(slow) == 0.0
    assert limiter.retry_after(slow) == pytest.approx(1.0)
    assert all(limiter.retry_after(free) == 0.0 for _ in range(100))
    faster = slow.model_copy(update={"rate_per_second": 10.0, "burst": 5})
    assert [limiter.retry_after(faster) for _ in range(6)][-2:] == [0.0, pytest.approx(0.1)]


def test_no_keystore_on_a_non_loopback_host_is_allowed_but_loud(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="nextbest.auth")
    assert load_keystore(CommonSettings(host="127.0.0.1", auth_keys_file=None), "inventory") is None
    assert caplog.records == []
    assert load_keystore(CommonSettings(host="0.0.0.0", auth_keys_file=None), "inventory") is None
    assert "inventory: no NEXTBEST_AUTH_KEYS_FILE on non-loopback host 0.0.0.0" in caplog.records[0].getMessage()

    path = tmp_path / "keys.json"
    Keystore().save(path)
    assert load_keystore(CommonSettings(host="0.0.0.0", auth_keys_file=path), "inventory").path == path
