"""Enrich: container records, trace context and attribute limits for a startup."""
