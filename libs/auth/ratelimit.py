"""Per-client token buckets: a sustained rate plus a burst, kept in this process (so per server replica)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from libs.auth.keystore import Client


class TokenBucket:
    """`rate` tokens per second up to `burst`; each call takes one or says how long until one is there."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until the next token."""
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class RateLimiter:
    """One bucket per client name, rebuilt when the keystore changes that client's limits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def retry_after(self, client: Client) -> float:
        """0.0 when the call may go ahead, else the seconds the client should wait."""
        if client.rate_per_second is None:
            return 0.0
        burst = client.burst or max(1, math.ceil(client.rate_per_second))
        bucket = self._buckets.get(client.name)
        if bucket is None or bucket.rate != client.rate_per_second or bucket.burst != burst:
            bucket = self._buckets[client.name] = TokenBucket(client.rate_per_second, burst, self._clock())
        return bucket.take(self._clock())
