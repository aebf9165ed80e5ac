"""The five NextBest services; each folder is one process with its own port, schema and health check."""
