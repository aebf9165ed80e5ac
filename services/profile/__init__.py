"""The profile service: ingests customer events idempotently, folds them into traits, serves profiles and features."""
