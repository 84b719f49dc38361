"""Emit: completed startup records become OTLP spans (``spans``), named by ``semconv``."""
