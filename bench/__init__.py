"""Benchmarks: `make bench` (docs/performance.md)."""
