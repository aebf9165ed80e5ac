"""Shared runtime of every NextBest service: settings, errors, telemetry, server bootstrap, database, clients."""
