"""Resources, one module per system the code location talks to."""
