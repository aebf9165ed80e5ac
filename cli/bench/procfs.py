"""CPU time and memory of processes, read from /proc (Linux; no psutil).

CPU: utime + stime of /proc/<pid>/stat (all threads), in clock ticks. Memory: VmRSS (now) and VmHWM (peak
resident set) of /proc/<pid>/status. Writing "5" to /proc/<pid>/clear_refs resets VmHWM to the current RSS, which
lets each phase report its own peak; where the kernel refuses, the peak is the process's lifetime peak.

Two aggregate readings complete the picture: the whole machine's busy time (/proc/stat), which shows whether the
cores were saturated, and the PostgreSQL server's (every process named "postgres"; backends that ended during a
phase are missed, so it is a lower bound).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; every field after its closing parenthesis is numeric.
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15 of the whole line


def machine_busy_seconds() -> dict[str, float]:
    """CPU seconds all cores have spent not idle since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat", encoding="ascii") as file:
        fields = file.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return {"all": (user + nice + system + irq + softirq + steal) / _TICKS}


def postgres_cpu_seconds() -> dict[int, float]:
    """CPU seconds of each process named "postgres" alive now (the server and its backends), by pid."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", encoding="ascii", errors="replace") as file:
                if file.read().strip() != "postgres":
                    continue
        except OSError:
            continue  # it ended
        seconds = cpu_seconds(int(entry.name))
        if seconds is not None:
            found[int(entry.name)] = seconds
    return found


def memory_mb(pid: int) -> dict[str, float] | None:
    """{"rss_mb", "peak_rss_mb"} from VmRSS and VmHWM; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    if len(values) < 2:
        return None  # a zombie has no memory lines
    return {"rss_mb": round(values["VmRSS"], 1), "peak_rss_mb": round(values["VmHWM"], 1)}


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS; False when not permitted or gone."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as file:
            file.write("5")
        return True
    except OSError:
        return False


@dataclass
class Usage:
    cpu_seconds: float
    #: CPU seconds per wall second, in % of one core (200% = both cores of a 2-core machine).
    cpu_percent: float
    peak_rss_mb: float | None
    rss_mb: float | None


Counter = Callable[[], Mapping[object, float]]


def counter_delta(before: Mapping[object, float], after: Mapping[object, float]) -> float:
    """CPU used between two readings of a counter: per key, what it grew by; a key new at the end (a process
    started meanwhile) counts whole; a key gone at the end (a process that ended) is missed."""
    return sum(seconds - before.get(key, 0.0) for key, seconds in after.items())


class Meter:
    """Measures named processes, and named aggregate CPU counters, over one phase: `begin()`, run, `end()`."""

    def __init__(self, pids: Mapping[str, int], counters: Mapping[str, Counter] | None = None) -> None:
        self.pids = dict(pids)
        self.counters = dict(counters or {})
        self._cpu: dict[str, float | None] = {}
        self._counted: dict[str, Mapping[object, float]] = {}
        self._wall = 0.0
        self.peak_resettable = True

    def begin(self, now: float) -> None:
        self._wall = now
        self._cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._counted = {name: read() for name, read in self.counters.items()}
        self.peak_resettable = all([reset_peak(pid) for pid in self.pids.values()])

    def end(self, now: float) -> dict[str, Usage]:
        wall = max(1e-9, now - self._wall)
        usage = {}
        for name, pid in self.pids.items():
            memory = memory_mb(pid)
            usage[name] = self._process_usage(name, cpu_seconds(pid), wall, memory)
        for name, read in self.counters.items():
            usage[name] = self._usage(counter_delta(self._counted[name], read()), wall, None)
        return usage

    def _process_usage(self, name: str, after: float | None, wall: float, memory: dict[str, float] | None) -> Usage:
        before = self._cpu.get(name)
        return self._usage(after - before if after is not None and before is not None else 0.0, wall, memory)

    @staticmethod
    def _usage(used: float, wall: float, memory: dict[str, float] | None) -> Usage:
        return Usage(
            cpu_seconds=round(used, 2),
            cpu_percent=round(100 * used / wall, 1),
            peak_rss_mb=memory["peak_rss_mb"] if memory else None,
            rss_mb=memory["rss_mb"] if memory else None,
        )
