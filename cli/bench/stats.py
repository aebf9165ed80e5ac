"""Raw per-call samples and what is computed from them: percentiles, per-channel summaries, 1-second timelines.

Percentiles use the nearest-rank method: the p-th percentile of n sorted values is the value at rank
ceil(p/100 * n) (1-based), i.e. the smallest sample such that at least p% of the samples are <= it. It always
returns an observed value and never interpolates, so p99.9 of fewer than 1,000 samples is simply the maximum.

Latency percentiles cover every completed call, failed ones included (a failure is not a fast answer).
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import grpc

#: Kinds of call the generator sends; the index is what a sample stores.
CHANNELS = ("web", "pos", "call_center", "outcome")
DECISION_CHANNELS = CHANNELS[:3]
#: Degraded reasons folded into bits (a sample stores the OR of its reasons' bits).
DEGRADED_BITS = {"identity": 1, "profile": 2, "consent": 4, "scoring": 8, "inventory": 16, "other": 32}
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def degraded_mask(reasons: Iterable[str]) -> int:
    """Bits of the services that degraded an answer (`scoring_timeout`, `no_model` -> scoring, ...)."""
    mask = 0
    for reason in reasons:
        group = "scoring" if reason == "no_model" else reason.split("_", 1)[0]
        mask |= DEGRADED_BITS.get(group, DEGRADED_BITS["other"])
    return mask


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (see the module docstring); NaN when empty."""
    if not 0 < p <= 100:
        raise ValueError("p must be in (0, 100]")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    rank = max(1, math.ceil(p / 100 * n - 1e-9))  # the epsilon keeps 99.9% of 1000 at rank 999, not 1000
    return sorted_values[rank - 1]


@dataclass
class Samples:
    """One phase's calls, as parallel arrays (cheap to append to and to send between processes)."""

    channel: array = field(default_factory=lambda: array("b"))
    #: Scheduled send, seconds after the phase started (closed loop: the actual send).
    sched: array = field(default_factory=lambda: array("d"))
    #: Seconds from the scheduled send to the answer (what a user waiting on the schedule sees).
    latency: array = field(default_factory=lambda: array("d"))
    #: Seconds from the actual send to the answer (what the client deadline applies to).
    service: array = field(default_factory=lambda: array("d"))
    #: gRPC status code number; 0 is OK.
    code: array = field(default_factory=lambda: array("b"))
    #: `degraded_mask` of the answer; 0 when not degraded (or failed).
    degraded: array = field(default_factory=lambda: array("b"))

    def add(self, channel: int, sched: float, latency: float, service: float, code: int, degraded: int) -> None:
        self.channel.append(channel)
        self.sched.append(sched)
        self.latency.append(latency)
        self.service.append(service)
        self.code.append(code)
        self.degraded.append(degraded)

    def __len__(self) -> int:
        return len(self.channel)

    def indices(self, channels: Iterable[str]) -> list[int]:
        wanted = {CHANNELS.index(c) for c in channels}
        return [i for i, c in enumerate(self.channel) if c in wanted]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3) if not math.isnan(seconds) else math.nan


def latency_summary(values: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds of latencies given in seconds."""
    ordered = sorted(values)
    summary = {name: _ms(percentile(ordered, p)) for name, p in PERCENTILES.items()}
    summary["max"] = _ms(ordered[-1]) if ordered else math.nan
    summary["mean"] = _ms(sum(ordered) / len(ordered)) if ordered else math.nan
    return summary


def summarize(samples: Samples, channels: Iterable[str], duration: float,
              budgets: dict[str, float] | None = None) -> dict:
    """Counts, rates and latency percentiles of the samples of `channels` over a phase of `duration` seconds.

    `over_budget` counts successful answers that took longer (from the actual send) than their channel's budget.
    """
    channels = tuple(channels)
    picked = samples.indices(channels)
    count = len(picked)
    ok = [i for i in picked if samples.code[i] == 0]
    degraded = sum(1 for i in ok if samples.degraded[i])
    budgets = budgets or {}
    over = sum(
        1 for i in ok
        if (limit := budgets.get(CHANNELS[samples.channel[i]])) is not None and samples.service[i] > limit
    )
    errors = Counter(_CODE_NAMES.get(samples.code[i], str(samples.code[i])) for i in picked if samples.code[i])
    lag = [samples.latency[i] - samples.service[i] for i in picked]
    ordered_lag = sorted(lag)
    return {
        "count": count,
        "ok": len(ok),
        "errors": count - len(ok),
        "error_rate": round((count - len(ok)) / count, 6) if count else 0.0,
        "error_codes": dict(errors),
        "degraded": degraded,
        "degraded_rate": round(degraded / len(ok), 6) if ok else 0.0,
        "over_budget": over,
        "throughput": round(len(ok) / duration, 2) if duration > 0 else 0.0,
        "latency_ms": latency_summary(samples.latency[i] for i in picked),
        # How late the generator sent (scheduled -> actual send): large values would mean it was the bottleneck.
        "send_lag_ms": {"p99": _ms(percentile(ordered_lag, 99)), "max": _ms(ordered_lag[-1]) if lag else math.nan},
    }


def timeline(samples: Samples, channels: Iterable[str], duration: float, budgets: dict[str, float],
             bucket: float = 1.0) -> list[dict]:
    """Per-`bucket`-second counts (by scheduled send) and latency p50/p99 of the samples of `channels`."""
    channels = tuple(channels)
    buckets: list[list[int]] = [[] for _ in range(max(1, math.ceil(duration / bucket)))]
    for i in samples.indices(channels):
        buckets[min(len(buckets) - 1, int(samples.sched[i] // bucket))].append(i)
    rows = []
    for n, members in enumerate(buckets):
        ok = [i for i in members if samples.code[i] == 0]
        ordered = sorted(samples.latency[i] for i in members)
        rows.append({
            "t": round(n * bucket, 3),
            "sent": len(members),
            "ok": len(ok),
            "errors": len(members) - len(ok),
            "degraded": sum(1 for i in ok if samples.degraded[i]),
            "degraded_scoring": sum(1 for i in ok if samples.degraded[i] & DEGRADED_BITS["scoring"]),
            "degraded_inventory": sum(1 for i in ok if samples.degraded[i] & DEGRADED_BITS["inventory"]),
            "over_budget": sum(1 for i in ok if samples.service[i] > budgets.get(CHANNELS[samples.channel[i]], math.inf)),
            "p50_ms": _ms(percentile(ordered, 50)),
            "p99_ms": _ms(percentile(ordered, 99)),
        })
    return rows
