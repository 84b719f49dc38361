"""The collector-side processor: startup spans in, a verdict per rollout out.

``otelbridge processor`` receives OTLP spans (gRPC and HTTP) from the Collector (whose
``loadbalancing`` exporter routes them by trace ID, so a rollout lives on one replica),
keeps per rollout (trace ID) and per namespace the startups and their three SLA durations
in mergeable quantile sketches, and answers the rollout gate.
"""
