"""The cost agent: LLM spend by tenant, key, route, model, backend and day; what changed."""
