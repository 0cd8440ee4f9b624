"""Shared pieces of the evaluation benchmarks (a package, so `make bench` does not run it)."""
