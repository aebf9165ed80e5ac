"""`nextbest auth …`: manage the keystore of API clients — add, issue keys (shown once), revoke, list, remove.

The file is NEXTBEST_AUTH_KEYS_FILE (or --file). Running servers pick up every change within ~2 s: rotate a key by
issuing a new one, deploying it to the client, then revoking the old one.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

from libs.auth.keystore import AuthenticationError, Keystore, KeystoreError, Role, locked
from libs.settings import CommonSettings, load_settings


def mesh_credential_problem(settings: CommonSettings) -> str | None:
    """Why `nextbest mesh run` cannot start services that enforce this keystore, or None when it can.

    Each service calls its peers with NEXTBEST_AUTH_TOKEN, so with a keystore that token must be a valid key of a
    `service` client. The runner refuses rather than minting keys on its own: the operator decides what exists.
    """
    if settings.auth_keys_file is None:
        return None
    if settings.auth_token is None:
        return (
            "NEXTBEST_AUTH_KEYS_FILE is set but NEXTBEST_AUTH_TOKEN is not: the services need a key of role "
            "'service' to call each other; create one with\n"
            "  nextbest auth add-client mesh --role service\n"
            "  export NEXTBEST_AUTH_TOKEN=$(nextbest auth issue mesh)"
        )
    try:
        caller = Keystore.load(settings.auth_keys_file).authenticate(settings.auth_token.get_secret_value())
    except KeystoreError as exc:
        return f"NEXTBEST_AUTH_KEYS_FILE: {exc}"
    except AuthenticationError as exc:
        return f"NEXTBEST_AUTH_TOKEN: {exc.reason}"
    if caller.client.role != "service":
        return (
            f"NEXTBEST_AUTH_TOKEN is a key of {caller.client.name!r} (role {caller.client.role!r}); the services "
            "need a key of role 'service' to call each other"
        )
    return None


def _path(args: argparse.Namespace) -> Path | None:
    return args.file or load_settings(CommonSettings).auth_keys_file


def _run(args: argparse.Namespace) -> int:
    path = _path(args)
    if path is None:
        print("no keystore: set NEXTBEST_AUTH_KEYS_FILE or pass --file", file=sys.stderr)
        return 2
    try:
        with nullcontext() if args.action == "list" else locked(path):  # list: also on a read-only mount
            keystore = Keystore.load(path) if path.exists() or args.action != "add-client" else Keystore()
            return args.action_func(args, keystore, path)
    except KeystoreError as exc:
        print(exc, file=sys.stderr)
        return 1


def _add_client(args: argparse.Namespace, keystore: Keystore, path: Path) -> int:
    stores = tuple(s.strip() for s in (args.stores or "").split(",") if s.strip())
    client = keystore.add_client(args.name, args.role, stores, args.rate, args.burst)
    keystore.save(path)
    print(f"added client {client.name} ({client.role}); issue it a key with `nextbest auth issue {client.name}`")
    return 0


def _issue(args: argparse.Namespace, keystore: Keystore, path: Path) -> int:
    expires_at = datetime.now(UTC) + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    key_id, key = keystore.issue_key(args.name, expires_at=expires_at)
    keystore.save(path)
    print(f"key {key_id} for {args.name}" + (f", expires {expires_at:%Y-%m-%d %H:%M}Z" if expires_at else ""),
          file=sys.stderr)
    print("store it now: it is shown only this once (send it as `authorization: Bearer <key>`)", file=sys.stderr)
    print(key)  # alone on stdout, so that `KEY=$(nextbest auth issue web)` captures exactly the key
    return 0


def _revoke(args: argparse.Namespace, keystore: Keystore, path: Path) -> int:
    owner = keystore.revoke_key(args.key_id)
    keystore.save(path)
    print(f"revoked key {args.key_id} of {owner}")
    return 0


def _remove(args: argparse.Namespace, keystore: Keystore, path: Path) -> int:
    keystore.remove_client(args.name)
    keystore.save(path)
    print(f"removed client {args.name} and its keys")
    return 0


def _list(args: argparse.Namespace, keystore: Keystore, path: Path) -> int:
    now = datetime.now(UTC)
    for client in keystore.clients:
        rate = f"{client.rate_per_second:g}/s burst {client.burst or 'auto'}" if client.rate_per_second else "unlimited"
        stores = f" stores {','.join(client.stores)}" if client.stores else ""
        print(f"{client.name} [{client.role}]{stores}, rate {rate}")
        for key in client.keys:
            expiry = "no expiry"
            if key.expires_at is not None:
                expiry = ("EXPIRED " if key.expires_at <= now else "expires ") + f"{key.expires_at:%Y-%m-%d %H:%M}Z"
            print(f"  key {key.key_id}  created {key.created_at:%Y-%m-%d %H:%M}Z  {expiry}")
        if not client.keys:
            print("  (no keys)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    auth = subparsers.add_parser("auth", help="manage API clients and their keys (NEXTBEST_AUTH_KEYS_FILE)")
    actions = auth.add_subparsers(dest="action", required=True, metavar="ACTION")
    file_option = argparse.ArgumentParser(add_help=False)
    file_option.add_argument("--file", type=Path, help="the keystore (default: NEXTBEST_AUTH_KEYS_FILE)")

    p = actions.add_parser("add-client", parents=[file_option], help="add a client with a role (no key yet)")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=get_args(Role))
    p.add_argument("--stores", help="pos: comma-separated store ids it may decide for")
    p.add_argument("--rate", type=float, help="sustained requests per second per server replica (default: none)")
    p.add_argument("--burst", type=int, help="requests above the rate allowed at once (default: one second's)")
    p.set_defaults(action_func=_add_client)

    p = actions.add_parser("issue", parents=[file_option], help="issue a new key for a client; prints it once")
    p.add_argument("name")
    p.add_argument("--expires-in-days", type=float, help="the key stops working after this many days")
    p.set_defaults(action_func=_issue)

    p = actions.add_parser("revoke", parents=[file_option], help="revoke one key by its id (servers stop accepting it within ~2 s)")
    p.add_argument("key_id")
    p.set_defaults(action_func=_revoke)

    p = actions.add_parser("list", parents=[file_option], help="clients, roles, limits and key ids (never secrets)")
    p.set_defaults(action_func=_list)

    p = actions.add_parser("remove", parents=[file_option], help="remove a client and all its keys")
    p.add_argument("name")
    p.set_defaults(action_func=_remove)

    auth.set_defaults(func=_run)
