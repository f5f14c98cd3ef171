"""Benchmarks (`make bench`): each module `bench_*.py` has a `main(seconds)` that stops by itself."""
