"""Real-time recommendations: the serving bundle, the scorer and the online scoring script."""
