"""otelbridge: containerd events -> OpenTelemetry container-startup traces.

The data flows through one module per stage::

    source -> decode -> correlate -> enrich -> emit -> export

``otelbridge.pipeline`` wires the stages; ``otelbridge.cli`` is the command line.
"""

__version__ = "0.1.0"
