"""Fixtures of the integration tier beyond the shared ones in tests/conftest.py."""

from tests.integration.telemetry_support import json_logs, mesh_database, telemetry  # noqa: F401 - fixtures
