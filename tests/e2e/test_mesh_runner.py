"""`nextbest mesh run` starts all five services, reports them healthy, and stops them all on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess

import pytest

from tests.e2e.conftest import NEXTBEST, mesh_env

pytestmark = pytest.mark.e2e
RUNNER_PORTS = {"decision": 52050, "identity": 52051, "profile": 52052, "scoring": 52053, "inventory": 52054}


def test_mesh_run_starts_every_service_and_stops_cleanly_on_interrupt(seeded_dir):
    env = mesh_env(seeded_dir, RUNNER_PORTS)
    runner = subprocess.Popen([NEXTBEST, "mesh", "run", "--no-seed"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        health = subprocess.run([NEXTBEST, "mesh", "health", "--timeout", "60"], env=env, capture_output=True,
                                text=True, timeout=90)
        assert health.returncode == 0, health.stdout + health.stderr
        assert health.stdout.count("SERVING") == 5
        decide = subprocess.run([NEXTBEST, "decide", "--channel", "web", "--email", "nobody@example.com"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert decide.returncode == 0, decide.stderr
        assert "decision" in decide.stdout
    finally:
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    assert "NextBest mesh is up" in out and "nextbest decide --channel web" in out
    after = subprocess.run([NEXTBEST, "mesh", "health", "--timeout", "1"], env=env, capture_output=True, text=True)
    assert after.returncode == 1, "every service stopped"
