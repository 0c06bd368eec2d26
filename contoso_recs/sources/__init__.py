"""Extracts, one module per source system, each ending in conformed lake tables."""
