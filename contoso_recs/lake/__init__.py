"""Shared rules of the lake: how raw rows become typed rows or quarantined ones."""
