"""The identity service: resolves identifiers to one customer id, links identifiers seen together, keeps consent."""
