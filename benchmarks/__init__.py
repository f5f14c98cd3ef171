"""Benchmarks (`make bench`): each module `bench_*.py` has a `main(quick)` that stops by itself and returns its figures."""
