"""Benchmarks: the product's work at stated scale, beside the reference it must beat."""
