"""Benchmarks of opsloop, each against a named peer driven in the same run (see bench/README.md)."""
