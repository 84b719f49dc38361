"""Correlate: decoded lifecycle events -> what happened to each container.

* :mod:`~otelbridge.correlate.startups`: one state machine per container -> startup records;
* :mod:`~otelbridge.correlate.pods`: completed startups of a pod's containers -> its pod startup;
* :mod:`~otelbridge.correlate.gc`: deletions and snapshot removals -> reclaims, leaks.
"""
