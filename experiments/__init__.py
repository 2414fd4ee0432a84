"""Composition root: entry points, sweeps, benchmarks and reports."""
