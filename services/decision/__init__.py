"""Decision service: the orchestrator that answers Decide, RecordOutcome and PrioritizeCall."""
