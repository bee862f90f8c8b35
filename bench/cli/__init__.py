"""Benchmark of the CLI's start-up: opsloop commands against ``mlflow --help``, one run (bench/README.md)."""
