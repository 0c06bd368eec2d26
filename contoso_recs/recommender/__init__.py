"""The recommender core: data, baselines, two-tower model, blend and evaluation (no Dagster)."""
