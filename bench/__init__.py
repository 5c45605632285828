"""Benchmarks and planning scripts (never part of the test run)."""
