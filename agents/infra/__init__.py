"""The infra agent: readiness of every component, queues, stores, sizing."""
