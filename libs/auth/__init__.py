"""Client authentication and authorization for every service: API keys, roles and scopes, audit, rate limits.

keystore.py holds the clients and hashed keys, policy.py who may call what, server.py the interceptor that
enforces both, ratelimit.py the per-client token buckets, client.py the bearer token on outbound calls.
"""
