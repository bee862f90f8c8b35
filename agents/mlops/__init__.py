"""The ml-ops agent: models, versions, promotion, rollback, experiments, retraining."""
