"""Benchmarks for greenpool (``python -m bench.pool_bench``)."""
