"""The keystore: every calling client, its role, stores and rate limit, and the SHA-256 of each of its API keys.

One JSON file (NEXTBEST_AUTH_KEYS_FILE). An API key reads `nbk_<key_id>_<secret>`; the secret is 32 random bytes,
so a fast hash is enough (no password stretching needed) and only that hash is stored. A client may hold several
keys at once: rotation is issue new key → deploy it → revoke the old one, with no downtime. Writes are atomic
(temporary file + rename), so a server re-reading the file never sees half of it.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

KEY_PREFIX = "nbk"
Role = Literal["web", "pos", "call_centre", "operator", "service"]


class KeystoreError(Exception):
    """The keystore file is missing, malformed, or an operation on it is invalid."""


class AuthenticationError(Exception):
    """The presented credential is missing, malformed, unknown, revoked or expired; never carries the secret."""

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key_id = key_id


class StoredKey(BaseModel):
    """One API key of a client: its public id and the SHA-256 (hex) of its secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str = Field(pattern=r"^[0-9a-f]{12}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: AwareDatetime
    expires_at: AwareDatetime | None = None


class Client(BaseModel):
    """A calling client (a web frontend, a POS fleet, the call-centre software, an operator, a peer service)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    role: Role
    #: POS only: the stores this client may decide for.
    stores: tuple[str, ...] = ()
    #: Sustained requests per second per server replica; None means not limited.
    rate_per_second: float | None = Field(None, gt=0)
    #: Requests allowed at once above the sustained rate; defaults to one second's worth.
    burst: int | None = Field(None, ge=1)
    keys: tuple[StoredKey, ...] = ()

    @model_validator(mode="after")
    def _stores_only_for_pos(self) -> Client:
        if self.role == "pos" and not self.stores:
            raise ValueError(f"client {self.name!r}: a pos client needs at least one store")
        if self.role != "pos" and self.stores:
            raise ValueError(f"client {self.name!r}: only pos clients are bound to stores")
        return self


class _KeystoreFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    clients: list[Client] = []


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the client and which of its keys it used."""

    client: Client
    key_id: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str]:
    """(key_id, secret) of an API key; AuthenticationError when it is not shaped like one."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")  # the urlsafe secret may itself contain "_": split only twice
    if prefix != KEY_PREFIX or len(key_id) != 12 or not secret:
        raise AuthenticationError("malformed API key (expected nbk_<key_id>_<secret>)")
    return key_id, secret


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the keystore while editing it: two concurrent `nextbest auth` runs would
    otherwise both read the old file and the second write would drop the first one's change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class Keystore:
    """The clients and their keys; load, change, save. Servers never mutate theirs: they load a fresh one."""

    def __init__(self, clients: list[Client] | None = None) -> None:
        self._clients: dict[str, Client] = {}
        self._owners: dict[str, str] = {}  # key_id -> client name
        for client in clients or []:
            self._put(client)

    @classmethod
    def load(cls, path: Path) -> Keystore:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeystoreError(f"cannot read keystore {path}: {exc.strerror}") from None
        try:
            parsed = _KeystoreFile.model_validate_json(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}" for err in exc.errors()
            )
            raise KeystoreError(f"malformed keystore {path}: {problems}") from None
        return cls(parsed.clients)

    def save(self, path: Path) -> None:
        """Write atomically with owner-only permissions: readers see the old file or the new one, never a mix."""
        body = _KeystoreFile(clients=list(self._clients.values())).model_dump_json(indent=2, exclude_none=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(handle, "w") as file:
                file.write(body + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @property
    def clients(self) -> list[Client]:
        return sorted(self._clients.values(), key=lambda c: c.name)

    def client(self, name: str) -> Client:
        try:
            return self._clients[name]
        except KeyError:
            raise KeystoreError(f"no client named {name!r}") from None

    def add_client(
        self,
        name: str,
        role: Role,
        stores: tuple[str, ...] = (),
        rate_per_second: float | None = None,
        burst: int | None = None,
    ) -> Client:
        if name in self._clients:
            raise KeystoreError(f"client {name!r} already exists")
        try:
            client = Client(name=name, role=role, stores=stores, rate_per_second=rate_per_second, burst=burst)
        except ValidationError as exc:
            raise KeystoreError("; ".join(err["msg"].removeprefix("Value error, ") for err in exc.errors())) from None
        self._put(client)
        return client

    def remove_client(self, name: str) -> None:
        client = self.client(name)
        for key in client.keys:
            del self._owners[key.key_id]
        del self._clients[name]

    def issue_key(self, name: str, expires_at: datetime | None = None, now: datetime | None = None) -> tuple[str, str]:
        """A new key for client `name`: (key_id, the full key). The full key exists only in this return value."""
        client = self.client(name)
        key_id = secrets.token_hex(6)
        while key_id in self._owners:
            key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        stored = StoredKey(
            key_id=key_id, sha256=hash_secret(secret), created_at=now or datetime.now(UTC), expires_at=expires_at
        )
        self._put(client.model_copy(update={"keys": (*client.keys, stored)}))
        return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"

    def revoke_key(self, key_id: str) -> str:
        """Delete a key; returns the name of the client that held it."""
        name = self._owners.get(key_id)
        if name is None:
            raise KeystoreError(f"no key with id {key_id!r}")
        client = self._clients[name]
        del self._owners[key_id]
        self._clients[name] = client.model_copy(update={"keys": tuple(k for k in client.keys if k.key_id != key_id)})
        return name

    def authenticate(self, key: str, now: datetime | None = None) -> Caller:
        key_id, secret = split_key(key)
        name = self._owners.get(key_id)
        if name is None:
            raise AuthenticationError("unknown or revoked API key", key_id)
        client = self._clients[name]
        stored = next(k for k in client.keys if k.key_id == key_id)
        if not hmac.compare_digest(stored.sha256, hash_secret(secret)):
            raise AuthenticationError("wrong API key secret", key_id)
        if stored.expires_at is not None and stored.expires_at <= (now or datetime.now(UTC)):
            raise AuthenticationError(f"API key expired at {stored.expires_at.isoformat()}", key_id)
        return Caller(client, key_id)

    def _put(self, client: Client) -> None:
        for key in client.keys:
            owner = self._owners.setdefault(key.key_id, client.name)
            if owner != client.name:
                raise KeystoreError(f"key id {key.key_id} is held by both {owner!r} and {client.name!r}")
        self._clients[client.name] = client
