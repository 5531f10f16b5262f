"""Benchmarks and fault suites that drive the real product (importable as ``bench`` so the fault
harness in :mod:`bench.faultlib` can be used by tests run from the repository root)."""
