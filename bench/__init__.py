"""Benchmarks. Each bench writes bench/results/<name>.json; bench.report turns them into docs/benchmarks.md."""
