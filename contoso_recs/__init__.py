"""Personalised product recommendations for Contoso Retail, as a Dagster code location."""
