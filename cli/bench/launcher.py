"""Processes the bench starts and always stops: the five services, the three baseline servers.

Every process gets its own session (Ctrl-C reaches only the runner, which stops them in order: SIGTERM, then
SIGKILL after a timeout) and asks the kernel for SIGKILL when the runner dies (PR_SET_PDEATHSIG, set by a short
boot shim before it execs the real command), so not even a killed runner leaves one behind — SIGKILL, not
SIGTERM, because a service whose clients vanished mid-call may not finish a graceful stop on its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cli.mesh import DEPENDENCIES, SERVICES, wait_healthy

#: Offsets from the port base: the services (as the default ports 50050..50054), the fault proxy, the baseline.
PORT_OFFSETS = {
    "decision": 0, "identity": 1, "profile": 2, "scoring": 3, "inventory": 4, "proxy": 5,
    "baseline_front": 10, "baseline_backend_a": 11, "baseline_backend_b": 12,
}
STOP_TIMEOUT_SECONDS = 10.0
_BOOT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)  # the runner died before prctl took effect\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def ports_from(base: int) -> dict[str, int]:
    return {name: base + offset for name, offset in PORT_OFFSETS.items()}


def busy_ports(ports: Sequence[int], host: str = "127.0.0.1") -> list[int]:
    """The ports something already listens on (another bench, a developer's mesh)."""
    busy = []
    for port in ports:
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                busy.append(port)
    return busy


class ManagedProcess:
    """One child process with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        """Start it (call from the main thread: the death signal is tied to the thread that forks)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(os.getpid()), sys.executable, *self.argv],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    async def stop(self) -> int | None:
        """SIGTERM, wait (it drains), SIGKILL after STOP_TIMEOUT_SECONDS; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.popen.wait, STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                await asyncio.to_thread(self.popen.wait)
        return self.popen.returncode

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def mesh_env(data_dir: Path, database_url: str | None, ports: Mapping[str, int],
             inventory_via_proxy: bool = False) -> dict[str, str]:
    """The services' environment: the operator's minus every NEXTBEST_ setting (the bench's mesh must not follow
    a developer's configuration), plus the bench's data dir, database, ports and dependency targets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    env.update(NEXTBEST_DATA_DIR=str(data_dir), NEXTBEST_LOG_LEVEL="WARNING", NEXTBEST_SHUTDOWN_GRACE_SECONDS="1")
    if database_url:
        env["NEXTBEST_DATABASE_URL"] = database_url
    for service in SERVICES:
        env[f"NEXTBEST_{service.upper()}_PORT"] = str(ports[service])
    for service, dependencies in DEPENDENCIES.items():
        for dependency in dependencies:
            env[f"NEXTBEST_{service.upper()}_{dependency.upper()}_TARGET"] = f"127.0.0.1:{ports[dependency]}"
    if inventory_via_proxy:
        env["NEXTBEST_DECISION_INVENTORY_TARGET"] = f"127.0.0.1:{ports['proxy']}"
    return env


class StartupError(RuntimeError):
    pass


class Mesh:
    """The five services as processes (`python -m services.<name>`), logs in `<log_dir>/<service>.log`."""

    def __init__(self, env: Mapping[str, str], ports: Mapping[str, int], log_dir: Path) -> None:
        self.env = dict(env)
        self.ports = dict(ports)
        self.processes = {
            s: ManagedProcess(s, ["-m", f"services.{s}"], env, log_dir / f"{s}.log") for s in SERVICES
        }

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.pid is not None}

    async def start(self, timeout: float) -> None:
        for process in self.processes.values():
            process.start()
        await self.wait_healthy(SERVICES, timeout)

    async def wait_healthy(self, services: Sequence[str], timeout: float) -> None:
        healthy = await asyncio.gather(*(wait_healthy(self.target(s), timeout) for s in services))
        failed = [s for s, ok in zip(services, healthy, strict=True) if not ok]
        if failed:
            details = "\n".join(f"--- {s} ({self.processes[s].log_path}):\n{self.processes[s].log_tail()}"
                                for s in failed)
            raise StartupError(f"not healthy within {timeout:.0f}s: {', '.join(failed)}\n{details}")

    async def stop_service(self, service: str) -> None:
        await self.processes[service].stop()

    def start_service(self, service: str, env: Mapping[str, str] | None = None) -> None:
        old = self.processes[service]
        self.processes[service] = ManagedProcess(service, old.argv, env or self.env, old.log_path)
        self.processes[service].start()

    async def stop(self) -> None:
        # Decision first (it calls the others), so nothing logs a storm of failures while the mesh goes down.
        for service in reversed(SERVICES):
            await self.processes[service].stop()


class Baseline:
    """The front and its two backends (cli.bench.baseline), each its own process."""

    def __init__(self, ports: Mapping[str, int], log_dir: Path) -> None:
        env = dict(os.environ)
        module = ["-m", "cli.bench.baseline"]
        self.front_port = ports["baseline_front"]
        backends = [ports["baseline_backend_a"], ports["baseline_backend_b"]]
        self.processes = {
            "front": ManagedProcess("front", [*module, "front", "--port", str(self.front_port),
                                              *(f"--backend=127.0.0.1:{p}" for p in backends)],
                                    env, log_dir / "baseline-front.log"),
            "backend_a": ManagedProcess("backend_a", [*module, "backend", "--port", str(backends[0])], env,
                                        log_dir / "baseline-backend-a.log"),
            "backend_b": ManagedProcess("backend_b", [*module, "backend", "--port", str(backends[1])], env,
                                        log_dir / "baseline-backend-b.log"),
        }
        self.ports = {"front": self.front_port, "backend_a": backends[0], "backend_b": backends[1]}

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.front_port}"

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.pid is not None}

    async def start(self, timeout: float = 30.0) -> None:
        for process in self.processes.values():
            process.start()
        deadline = asyncio.get_running_loop().time() + timeout
        for name, port in self.ports.items():
            while busy_ports([port]) != [port]:
                if not self.processes[name].running() or asyncio.get_running_loop().time() > deadline:
                    raise StartupError(f"baseline {name} did not listen on {port}:\n{self.processes[name].log_tail()}")
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for process in self.processes.values():
            await process.stop()
