"""The pipeline: the stages of one bridge wired into a chain, and the threads that run it.

See :mod:`otelbridge.pipeline.pipeline` for the parts and how they fit.
"""

from otelbridge.core.model import SourceItem
from otelbridge.pipeline.emitter import SpanSink
from otelbridge.pipeline.pipeline import Pipeline
from otelbridge.pipeline.records import MetadataLookup
from otelbridge.pipeline.runner import Source

__all__ = ["MetadataLookup", "Pipeline", "Source", "SourceItem", "SpanSink"]
