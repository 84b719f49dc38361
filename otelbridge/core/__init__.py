"""The bottom layer: what every stage shares, importing nothing else of otelbridge.

Names (:mod:`~otelbridge.core.semconv`), W3C trace context
(:mod:`~otelbridge.core.tracecontext`), deterministic IDs (:mod:`~otelbridge.core.ids`),
the values passed between stages (:mod:`~otelbridge.core.model`), configuration
(:mod:`~otelbridge.core.config`), "now" (:mod:`~otelbridge.core.clock`), backoff
(:mod:`~otelbridge.core.backoff`), errors (:mod:`~otelbridge.core.errors`), counters
(:mod:`~otelbridge.core.counters`) and throttled logging (:mod:`~otelbridge.core.logutil`).
"""
