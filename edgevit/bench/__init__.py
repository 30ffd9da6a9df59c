"""Validation (accuracy vs the float model), latency benchmarks and run reports."""
