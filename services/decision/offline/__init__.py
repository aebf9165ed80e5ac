"""Offline analyses of the decision policy that run next to the service, never inside it (no gRPC, no database)."""
