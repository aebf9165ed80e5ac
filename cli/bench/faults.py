"""Fault mode: during an open-loop run, stop the scoring service for a while and restart it, then delay every
call to inventory (through the DelayProxy the decision service's inventory target points at) — and measure what
clients saw: answers over their budget, errors, degraded answers, and how long after each dependency came back
answers were still degraded (the recovery time).

Recovery of a fault: "returned" is the restarted scoring service reporting SERVING, or the delay being switched
off. Looking at the answers degraded *by that dependency* whose send was scheduled after it returned, the
recovery time is from the return to the last such answer before the first full second without any (0 when there
is none) — the degraded rate is back to 0 from there. `settled_s` is to the very last one in the observation
window (which ends at the next fault or the end of the run) and `relapses` counts those after the clean second:
on an overloaded mesh, timeouts keep degrading answers now and then. No clean second in the window: not
recovered.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

from .proxy import DelayProxy
from .stats import DECISION_CHANNELS, DEGRADED_BITS, Samples, summarize, timeline

RECOVERY_TARGET_SECONDS = 5.0


@dataclass(frozen=True)
class FaultPlan:
    rate: float = 100.0
    #: Normal traffic before the first fault.
    lead: float = 5.0
    scoring_down: float = 10.0
    #: Time allowed for the restarted scoring service to report SERVING (the run's length must be fixed up front).
    restart_allowance: float = 10.0
    #: Normal traffic between scoring's return and the inventory delay.
    settle: float = 8.0
    inventory_delay: float = 0.200
    delay_for: float = 10.0
    tail: float = 8.0

    @property
    def duration(self) -> float:
        return self.lead + self.scoring_down + self.restart_allowance + self.settle + self.delay_for + self.tail

    def scaled(self, factor: float) -> FaultPlan:
        """Shorter phases for smoke runs; the delay itself is not scaled, and the windows after each return stay
        long enough (3 s) to see clean answers follow."""
        def s(seconds: float, floor: float = 1.0) -> float:
            return max(floor, seconds * factor)

        return FaultPlan(self.rate, s(self.lead), s(self.scoring_down), self.restart_allowance, s(self.settle, 3.0),
                         self.inventory_delay, s(self.delay_for), s(self.tail, 3.0))


@dataclass
class Fault:
    name: str
    #: Which degraded-reason bit this fault causes (stats.DEGRADED_BITS).
    service: str
    #: Monotonic instants: fault injected, dependency back (SERVING / delay off).
    started: float = 0.0
    returned: float = 0.0


async def _sleep_until(instant: float) -> None:
    await asyncio.sleep(max(0.0, instant - time.monotonic()))


async def inject(plan: FaultPlan, mesh, proxy: DelayProxy, start: float) -> list[Fault]:
    """Run the faults against the mesh (a launcher.Mesh) on the plan's schedule from `start` (monotonic)."""
    scoring = Fault("scoring_stopped", "scoring")
    await _sleep_until(start + plan.lead)
    scoring.started = time.monotonic()
    await mesh.stop_service("scoring")
    await _sleep_until(scoring.started + plan.scoring_down)
    mesh.start_service("scoring")
    await mesh.wait_healthy(["scoring"], timeout=60)
    scoring.returned = time.monotonic()

    inventory = Fault(f"inventory_delayed_{round(plan.inventory_delay * 1000)}ms", "inventory")
    await asyncio.sleep(plan.settle)
    inventory.started = time.monotonic()
    proxy.delay = plan.inventory_delay
    try:
        await asyncio.sleep(plan.delay_for)
    finally:
        proxy.delay = 0.0
    inventory.returned = time.monotonic()
    return [scoring, inventory]


CLEAN_SECONDS = 1.0


def recovery(samples: Samples, bit: int, returned: float, window_end: float) -> dict:
    """Recovery after a dependency returned at `returned` (phase seconds); see the module docstring."""
    late = sorted(
        samples.sched[i] for i in samples.indices(DECISION_CHANNELS)
        if returned <= samples.sched[i] < window_end and samples.code[i] == 0 and samples.degraded[i] & bit
    )
    # The first clean second starts at the return or right after a degraded answer.
    starts = [returned, *late]
    ends = [*late, window_end]
    clean = next((n for n, (a, b) in enumerate(zip(starts, ends, strict=True)) if b - a >= CLEAN_SECONDS), None)
    recovered_at = starts[clean] if clean is not None else None
    return {
        "recovery_s": round(recovered_at - returned, 3) if recovered_at is not None else None,
        "settled_s": round(late[-1] - returned, 3) if late else 0.0,
        "degraded_after_return": len(late),
        "relapses": len(late) - clean if clean is not None else 0,
        "recovered": recovered_at is not None,
    }


def analyse(samples: Samples, faults: list[Fault], started_at: float, duration: float,
            budgets: dict[str, float]) -> dict:
    """The fault section of the report: totals, per-fault recovery, and the 1-second timeline."""
    relative = [
        {**asdict(f), "started": round(f.started - started_at, 3), "returned": round(f.returned - started_at, 3)}
        for f in faults
    ]
    ends = [f["started"] for f in relative[1:]] + [duration]
    for fault, end in zip(relative, ends, strict=True):
        fault.update(recovery(samples, DEGRADED_BITS[fault["service"]], fault["returned"], end))
        fault["pass"] = fault["recovered"] and fault["recovery_s"] <= RECOVERY_TARGET_SECONDS
    totals = summarize(samples, DECISION_CHANNELS, duration, budgets)
    over_budget = totals["over_budget"] + totals["error_codes"].get("DEADLINE_EXCEEDED", 0)
    return {
        "budgets_ms": {channel: round(seconds * 1000) for channel, seconds in budgets.items()},
        "decisions": totals,
        "outcomes": summarize(samples, ("outcome",), duration, budgets),
        "answers_over_budget": over_budget,
        "faults": relative,
        "timeline": timeline(samples, DECISION_CHANNELS, duration, budgets),
        "checks": {
            "no_answer_over_budget": over_budget == 0,
            "no_errors": totals["errors"] == 0,
            "recovery_within_5s": all(f["pass"] for f in relative),
        },
    }
