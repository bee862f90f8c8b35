-- The official image creates POSTGRES_DB (opsloop) owned by POSTGRES_USER; MLflow's runs and
-- registry go to a second database of the same owner.
CREATE DATABASE mlflow OWNER opsloop;
