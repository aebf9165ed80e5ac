"""CPU time and memory of processes, read from /proc (Linux; no psutil).

CPU: utime + stime of /proc/<pid>/stat (all threads), in clock ticks. Memory: VmRSS (now) and VmHWM (peak
resident set) of /proc/<pid>/status. Writing "5" to /proc/<pid>/clear_refs resets VmHWM to the current RSS, which
lets each phase report its own peak; where the kernel refuses, the peak is the process's lifetime peak.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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


class Meter:
    """Measures named processes over one phase: `begin()`, run the phase, `end()`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._cpu: dict[str, float | None] = {}
        self._wall = 0.0
        self.peak_resettable = True

    def begin(self, now: float) -> None:
        self._wall = now
        self._cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.peak_resettable = all([reset_peak(pid) for pid in self.pids.values()])

    def end(self, now: float) -> dict[str, Usage]:
        wall = max(1e-9, now - self._wall)
        usage = {}
        for name, pid in self.pids.items():
            before, after, memory = self._cpu.get(name), cpu_seconds(pid), memory_mb(pid)
            used = after - before if after is not None and before is not None else 0.0
            usage[name] = Usage(
                cpu_seconds=round(used, 2),
                cpu_percent=round(100 * used / wall, 1),
                peak_rss_mb=memory["peak_rss_mb"] if memory else None,
                rss_mb=memory["rss_mb"] if memory else None,
            )
        return usage
