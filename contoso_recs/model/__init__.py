"""The recommender in Dagster: candidate training through Pipes, evaluation, the gate, promotion."""
