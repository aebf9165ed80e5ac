"""Samples, nearest-rank percentiles, per-channel summaries and timelines of the bench."""

from __future__ import annotations

import math

import grpc
import pytest

from cli.bench.stats import CHANNELS, DEGRADED_BITS, Samples, degraded_mask, percentile, summarize, timeline

pytestmark = pytest.mark.unit

WEB, POS, CALL, OUTCOME = range(4)
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def test_nearest_rank_percentiles_are_observed_values():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 90) == 90
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 100) == 100
    assert percentile(values, 0.5) == 1


def test_percentile_rank_is_ceil_of_p_times_n():
    thousand = [float(v) for v in range(1, 1001)]
    assert percentile(thousand, 99.9) == 999
    assert percentile(thousand, 99) == 990
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2  # ceil(2) = rank 2, no interpolation
    assert percentile([1.0, 2.0, 3.0, 4.0], 51) == 3
    assert percentile([7.0], 99.9) == 7


def test_percentile_of_nothing_is_nan_and_p_must_be_in_range():
    assert math.isnan(percentile([], 50))
    for bad in (0, -1, 100.1):
        with pytest.raises(ValueError):
            percentile([1.0], bad)


def test_degraded_reasons_fold_into_service_bits():
    assert degraded_mask([]) == 0
    assert degraded_mask(["scoring_timeout"]) == DEGRADED_BITS["scoring"]
    assert degraded_mask(["no_model", "scoring_unavailable"]) == DEGRADED_BITS["scoring"]
    assert degraded_mask(["inventory_unavailable", "consent_unavailable"]) == (
        DEGRADED_BITS["inventory"] | DEGRADED_BITS["consent"]
    )
    assert degraded_mask(["something_new"]) == DEGRADED_BITS["other"]


@pytest.fixture
def samples() -> Samples:
    s = Samples()
    for n in range(10):  # web: 10 calls, 10..100 ms; one degraded, one over the 80 ms budget, one failed
        code = DEADLINE if n == 9 else 0
        s.add(WEB, sched=n * 0.1, latency=(n + 1) / 100, service=(n + 1) / 100 - 0.001, code=code,
              degraded=DEGRADED_BITS["scoring"] if n == 3 else 0)
    s.add(POS, sched=1.5, latency=0.02, service=0.02, code=UNAVAILABLE, degraded=0)
    s.add(OUTCOME, sched=1.6, latency=0.005, service=0.005, code=0, degraded=0)
    return s


def test_summary_counts_rates_and_latency(samples):
    web = summarize(samples, ["web"], duration=2.0, budgets={"web": 0.08})
    assert web["count"] == 10
    assert web["ok"] == 9
    assert web["errors"] == 1
    assert web["error_rate"] == 0.1
    assert web["error_codes"] == {"DEADLINE_EXCEEDED": 1}
    assert web["degraded"] == 1
    assert web["degraded_rate"] == round(1 / 9, 6)
    assert web["over_budget"] == 1  # the 90 ms answer (the 100 ms one failed: counted as an error)
    assert web["throughput"] == 4.5
    assert web["latency_ms"]["p50"] == 50.0
    assert web["latency_ms"]["p99"] == 100.0  # failures count in latency
    assert web["latency_ms"]["max"] == 100.0
    assert web["send_lag_ms"]["max"] == pytest.approx(1.0)


def test_summary_over_several_channels_and_an_empty_one(samples):
    decisions = summarize(samples, CHANNELS[:3], duration=2.0)
    assert decisions["count"] == 11
    assert decisions["error_codes"] == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 1}
    call = summarize(samples, ["call_center"], duration=2.0)
    assert call["count"] == 0 and call["throughput"] == 0 and math.isnan(call["latency_ms"]["p50"])


def test_timeline_buckets_by_scheduled_second(samples):
    rows = timeline(samples, ["web", "pos"], duration=2.0, budgets={"web": 0.08})
    assert [r["t"] for r in rows] == [0.0, 1.0]
    assert rows[0]["sent"] == 10 and rows[0]["errors"] == 1 and rows[0]["degraded_scoring"] == 1
    assert rows[0]["over_budget"] == 1
    assert rows[1]["sent"] == 1 and rows[1]["errors"] == 1 and rows[1]["ok"] == 0
