"""The five services as real processes on a seeded demo retailer, driven through the `nextbest` CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

SERVICES = ("identity", "inventory", "scoring", "profile", "decision")
#: Ports away from the defaults so a developer's running mesh does not interfere.
E2E_PORTS = {"decision": 51050, "identity": 51051, "profile": 51052, "scoring": 51053, "inventory": 51054}
NEXTBEST = str(Path(sys.executable).parent / "nextbest")


@dataclass
class Mesh:
    env: dict[str, str]
    data_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run([NEXTBEST, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"nextbest {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def call(self, *args: str) -> dict:
        """Run a CLI command with --json and parse the reply."""
        return orjson.loads(self.cli(*args, "--json").stdout)

    @property
    def demo(self) -> dict:
        return orjson.loads((self.data_dir / "demo-customers.json").read_bytes())

    def start(self, service: str) -> None:
        log = open(self.data_dir / f"{service}.log", "ab")
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self, service: str) -> None:
        process = self.processes.pop(service)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, f"{service} did not exit cleanly"

    def wait_healthy(self, *services: str) -> None:
        self.cli("mesh", "health", "--timeout", "60", *services, timeout=90)


def mesh_env(data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTBEST_")}
    env.update(NEXTBEST_DATA_DIR=str(data_dir), NEXTBEST_LOG_LEVEL="WARNING")
    for service, port in ports.items():
        env[f"NEXTBEST_{service.upper()}_PORT"] = str(port)
    for service, deps in {"profile": ["identity"], "decision": ["identity", "profile", "scoring", "inventory"]}.items():
        for dep in deps:
            env[f"NEXTBEST_{service.upper()}_{dep.upper()}_TARGET"] = f"127.0.0.1:{ports[dep]}"
    return env


@pytest.fixture(scope="session")
def seeded_dir(tmp_path_factory) -> Path:
    """A small demo retailer (400 customers), seeded once for the whole e2e session."""
    data_dir = tmp_path_factory.mktemp("e2e-data")
    env = mesh_env(data_dir, E2E_PORTS)
    result = subprocess.run(
        [NEXTBEST, "demo", "seed", "--customers", "400"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return data_dir


@pytest.fixture(scope="session")
def mesh(seeded_dir) -> Iterator[Mesh]:
    mesh = Mesh(mesh_env(seeded_dir, E2E_PORTS), seeded_dir)
    for service in SERVICES:
        mesh.start(service)
    try:
        mesh.wait_healthy()
        yield mesh
    finally:
        for service in list(mesh.processes):
            mesh.stop(service)
