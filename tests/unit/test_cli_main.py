"""The `nextbest` entry point: a reader that goes away early (`| head`) ends the command quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_a_closed_output_pipe_ends_the_command_without_a_traceback():
    child = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "settings", "--markdown"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    child.stdout.close()  # before the command writes anything: every write fails with EPIPE
    _, errors = child.communicate(timeout=60)
    assert child.returncode == 1
    assert errors == b""
