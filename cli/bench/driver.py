"""The load generator: two child processes (spawned, so they share nothing with the runner), each with one
grpc.aio channel per target, driven by the runner through a pipe.

- The decision driver sends the prebuilt requests (serialised bytes: no protobuf work at send time) in open- or
  closed-loop phases, records every call in `Samples`, and follows a share of the answered Decides with a
  RecordOutcome, as a touchpoint reporting what the customer did.
- The ingest driver streams IngestEvents batches of fresh events at a fixed rate between `start` and `stop`.

Both ignore SIGINT (Ctrl-C reaches the whole process group; the runner decides when they stop) and exit when the
runner's end of the pipe closes.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import takewhile
from multiprocessing.connection import Connection
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from nextbest.decision.v1 import decision_service_pb2 as decision_pb
from nextbest.profile.v1 import profile_service_pb2 as profile_pb

from libs.server import run_loop

from .schedule import run_closed_loop, run_open_loop, send_times
from .stats import CHANNELS, DEGRADED_BITS, Samples, degraded_mask
from .workload import BUDGETS, IngestSubject, PlannedRequest, Sku, event_batch, outcome_request

DECISION_SERVICE = "/nextbest.decision.v1.DecisionService/"
RESPONSES = {
    "Decide": decision_pb.DecideResponse,
    "PrioritizeCall": decision_pb.PrioritizeCallResponse,
    "RecordOutcome": decision_pb.RecordOutcomeResponse,
}
OUTCOME = CHANNELS.index("outcome")
#: IngestEvents batches still unanswered beyond which the stream skips a batch (and counts it) instead of
#: piling up requests without bound.
INGEST_MAX_IN_FLIGHT = 32


@dataclass(frozen=True)
class Phase:
    """One measured (or warm-up) run against one target."""

    target: str
    shape: str  # "open" or "closed"
    duration: float
    rate: float = 0.0  # open loop: requests per second
    concurrency: int = 0  # closed loop: workers
    poisson: bool = False
    seed: int = 0
    #: Share of answered Decides with offers that are followed by a RecordOutcome.
    outcome_share: float = 0.1


@dataclass
class PhaseResult:
    samples: Samples
    #: Monotonic instant (system-wide clock) the phase started; samples' `sched` are relative to it.
    started_at: float
    #: Seconds from the start until the last call of the phase returned.
    elapsed: float


@dataclass
class IngestStats:
    target_rate: float = 0.0
    batch_size: int = 0
    batches: int = 0
    batches_ok: int = 0
    events_sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    #: Batches that got no answer or an error: (batch number, events, status name).
    failed: list[tuple[int, int, str]] = field(default_factory=list)
    #: Batches not sent because INGEST_MAX_IN_FLIGHT were unanswered.
    skipped: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_rejections: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- parent side


class DriverProcess:
    """The runner's handle on one driver child: start (waits until it is ready), ask, stop."""

    def __init__(self, name: str, main: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self._conn, child = context.Pipe()
        self._child_conn = child
        self.process = context.Process(target=main, args=(child, *args), name=name, daemon=True)
        #: Whether it runs at GENERATOR_NICE (known once started).
        self.prioritized = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    async def start(self) -> None:
        self.process.start()
        self._child_conn.close()
        ready, self.prioritized = await self.receive()
        if ready != "ready":
            raise RuntimeError(f"{self.name} did not start: {ready}")

    def send(self, message: Any) -> None:
        self._conn.send(message)

    async def receive(self) -> Any:
        return await asyncio.to_thread(self._receive)

    async def ask(self, message: Any) -> Any:
        self.send(message)
        return await self.receive()

    def _receive(self) -> Any:
        try:
            return self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self.name} process exited (code {self.process.exitcode})") from None

    def stop(self) -> None:
        """Ask it to exit; terminate, then kill it if it does not."""
        if self.process.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass  # it is exiting already
            self.process.join(2)
        if self.process.is_alive():  # busy with a phase (interrupted run): it holds nothing worth waiting for
            self.process.terminate()
            self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._conn.close()


# --------------------------------------------------------------------------------------------------- children


#: Scheduling priority asked for the decision generator: on a saturated 2-core machine a normal-priority
#: generator is scheduled late and sends late; a higher one keeps the offered load closer to the schedule (it
#: uses little CPU). Its remaining lateness is reported (send_lag_ms) and counted in the open-loop latencies.
GENERATOR_NICE = -10


def _raise_priority() -> bool:
    """Renice every thread of this process (Linux schedules threads, and grpc's were started at import); threads
    started later inherit it from their creator."""
    try:
        for tid in os.listdir("/proc/self/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), GENERATOR_NICE)
        return True
    except OSError:
        return False  # not permitted (not root, no CAP_SYS_NICE): run at normal priority, the report says so


def _child(conn: Connection, serve: Callable[[], Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run_loop(serve())
    except (EOFError, BrokenPipeError):
        pass  # the runner went away: nothing left to report to


async def _commands(conn: Connection):
    """Yield the runner's commands until it says stop (None) or goes away."""
    while (command := await asyncio.to_thread(conn.recv)) is not None:
        yield command


def decision_main(conn: Connection, plan: Sequence[PlannedRequest], run_id: str) -> None:
    """Entry point of the decision driver process."""
    _child(conn, lambda: _DecisionDriver(conn, plan, run_id).serve())


class _DecisionDriver:
    def __init__(self, conn: Connection, plan: Sequence[PlannedRequest], run_id: str) -> None:
        self.conn = conn
        self.plan = plan
        self.run_id = run_id
        self.position = 0
        self.outcomes = 0
        self.channels: dict[str, tuple[grpc.aio.Channel, dict[str, Any]]] = {}

    async def serve(self) -> None:
        self.conn.send(("ready", _raise_priority()))
        try:
            async for phase in _commands(self.conn):
                self.conn.send(await self.run(phase))
        finally:
            for channel, _ in self.channels.values():
                await channel.close()

    def methods(self, target: str) -> dict[str, Any]:
        """One channel per target for the whole process; requests go out as the prebuilt bytes."""
        if target not in self.channels:
            channel = grpc.aio.insecure_channel(target)
            self.channels[target] = (channel, {
                name: channel.unary_unary(DECISION_SERVICE + name, response_deserializer=response.FromString)
                for name, response in RESPONSES.items()
            })
            _raise_priority()  # and the threads the channel started
        return self.channels[target][1]

    def next_request(self) -> PlannedRequest:
        request = self.plan[self.position % len(self.plan)]
        self.position += 1
        return request

    async def run(self, phase: Phase) -> PhaseResult:
        methods = self.methods(phase.target)
        samples = Samples()
        rng = random.Random(phase.seed)
        followers: set[asyncio.Task] = set()

        async def send(request: PlannedRequest, scheduled: float) -> None:
            sent = time.monotonic()
            reply = None
            try:
                reply = await methods[request.method](request.payload, timeout=request.timeout)
                code = 0
                degraded = request.method != "RecordOutcome" and reply.degraded
                mask = (degraded_mask(reply.degraded_reasons) or DEGRADED_BITS["other"]) if degraded else 0
            except grpc.aio.AioRpcError as exc:
                code, mask = exc.code().value[0], 0
            done = time.monotonic()
            samples.add(request.channel, scheduled, done - scheduled, done - sent, code, mask)
            if request.method == "Decide" and reply is not None and reply.offers and rng.random() < phase.outcome_share:
                task = asyncio.ensure_future(record_outcome(reply))
                followers.add(task)
                task.add_done_callback(followers.discard)

        async def record_outcome(reply: decision_pb.DecideResponse) -> None:
            self.outcomes += 1
            payload = outcome_request(f"bench-{self.run_id}-o{self.outcomes}", reply, rng, datetime.now(UTC))
            await send(PlannedRequest(OUTCOME, "RecordOutcome", payload, BUDGETS["outcome"]), time.monotonic())

        if phase.shape == "open":
            offsets = send_times(phase.rate, phase.duration, poisson=phase.poisson, seed=phase.seed)
            start = await run_open_loop(offsets, lambda scheduled: send(self.next_request(), scheduled))
        else:
            async def one() -> None:
                await send(self.next_request(), time.monotonic())

            start = await run_closed_loop(phase.concurrency, phase.duration, one)
        elapsed = time.monotonic() - start
        if followers:
            await asyncio.gather(*followers)
        for i, scheduled in enumerate(samples.sched):
            samples.sched[i] = scheduled - start
        return PhaseResult(samples, start, elapsed)


def ingest_main(conn: Connection, target: str, subjects: Sequence[IngestSubject], skus: Sequence[Sku],
                run_id: str, batch_size: int, by_identifier: float, timeout: float) -> None:
    """Entry point of the ingest driver process; `timeout` is each IngestEvents call's deadline."""
    _child(conn, lambda: _IngestDriver(conn, target, subjects, skus, run_id, batch_size, by_identifier,
                                       timeout).serve())


class _IngestDriver:
    def __init__(self, conn: Connection, target: str, subjects: Sequence[IngestSubject], skus: Sequence[Sku],
                 run_id: str, batch_size: int, by_identifier: float, timeout: float) -> None:
        self.conn = conn
        self.target = target
        self.subjects = subjects
        self.skus = skus
        self.run_id = run_id
        self.batch_size = batch_size
        self.by_identifier = by_identifier
        self.timeout = timeout
        self.batch_no = 0
        self.rng = random.Random(f"ingest-events:{run_id}")

    async def serve(self) -> None:
        # Normal priority: the stream is load, and its own timing matters less than the decisions' (its achieved
        # rate is measured, not assumed).
        self.conn.send(("ready", False))
        async with grpc.aio.insecure_channel(self.target) as channel:
            ingest = channel.unary_unary(
                "/nextbest.profile.v1.ProfileService/IngestEvents",
                request_serializer=profile_pb.IngestEventsRequest.SerializeToString,
                response_deserializer=profile_pb.IngestEventsResponse.FromString,
            )
            async for rate in _commands(self.conn):  # "start at this rate" ...
                stopping = asyncio.Event()
                stream = asyncio.ensure_future(self.stream(ingest, rate, stopping))
                await asyncio.to_thread(self.conn.recv)  # ... until "stop"
                stopping.set()
                self.conn.send(await stream)

    async def stream(self, ingest: Any, rate: float, stopping: asyncio.Event) -> IngestStats:
        stats = IngestStats(target_rate=rate, batch_size=self.batch_size)
        in_flight = 0

        async def send_batch(_scheduled: float) -> None:
            nonlocal in_flight
            if in_flight >= INGEST_MAX_IN_FLIGHT:
                stats.skipped += 1
                return
            number = self.batch_no
            self.batch_no += 1
            now = Timestamp()
            now.GetCurrentTime()
            request = event_batch(self.run_id, number, self.batch_size, self.subjects,
                                  number * self.batch_size, self.skus, self.rng, now, self.by_identifier)
            stats.batches += 1
            stats.events_sent += self.batch_size
            in_flight += 1
            sent = time.monotonic()
            try:
                reply = await ingest(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                stats.failed.append((number, self.batch_size, exc.code().name))
                return
            finally:
                in_flight -= 1
                stats.latencies.append(time.monotonic() - sent)
            stats.batches_ok += 1
            stats.accepted += reply.accepted
            stats.duplicates += reply.duplicates
            stats.rejected += len(reply.rejected)
            for rejection in reply.rejected[: 5 - len(stats.first_rejections)]:
                stats.first_rejections.append(f"{rejection.event_id}: {rejection.field}: {rejection.reason}")

        offsets = takewhile(lambda _: not stopping.is_set(), send_times(rate / self.batch_size, math.inf))
        start = await run_open_loop(offsets, send_batch)
        stats.elapsed = time.monotonic() - start
        return stats
