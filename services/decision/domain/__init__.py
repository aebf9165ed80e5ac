"""The decision's pure domain: validation, eligibility, stock, arbitration, channel experience, call priority.

No gRPC, no SQL: the orchestrator (services/decision/orchestrator.py) does the I/O and calls into these modules.
"""
