"""Demo and real retail data written into local stand-ins for the four source systems."""
