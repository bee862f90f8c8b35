"""The performance agent: bounded load tests against the SLO."""
