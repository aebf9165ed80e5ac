"""The bench records the PostgreSQL server's version and the settings that change what it measures."""

from __future__ import annotations

import pytest

from cli.bench.dataset import POSTGRES_SETTINGS, postgres_settings

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


async def test_the_servers_settings_are_read_with_their_units(postgres_url):
    settings = await postgres_settings(postgres_url)
    assert set(settings) == {*POSTGRES_SETTINGS, "server_version"}
    assert settings["autovacuum"] in ("on", "off") and settings["synchronous_commit"] in ("on", "off", "local",
                                                                                           "remote_write", "remote_apply")
    assert settings["shared_buffers"].endswith("MB") and int(settings["shared_buffers"][:-2]) > 0
    assert settings["server_version"][:2].isdigit()
