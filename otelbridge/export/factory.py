"""Exporters and the resource, built from the standard ``OTEL_*`` environment variables.

Both functions read configuration only at startup and raise
:class:`~otelbridge.core.errors.ConfigError` listing every problem found, so a bad deployment
fails once with the whole list instead of one problem per restart.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otelbridge.core.errors import ConfigError
from otelbridge.core.semconv import DEFAULT_SERVICE_NAME, HOST_NAME, SERVICE_NAME
from otelbridge.export import SpanExporter
from otelbridge.export.files import ConsoleExporter, JsonlExporter, NoneExporter
from otelbridge.export.otlp import create_exporter
from otelbridge.export.otlpenv import OtlpConfig, parse_key_values

__all__ = ["EXPORTER_NAMES", "build_exporters", "build_resource"]

#: The values ``OTEL_TRACES_EXPORTER`` accepts (comma-separated).
EXPORTER_NAMES = ("otlp", "console", "jsonl", "none")


def build_exporters(
    environ: Mapping[str, str], *, jsonl_path: str | os.PathLike[str] | None = None
) -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names, in order; ``otlp`` when unset.

    ``otlp`` is configured by ``OTEL_EXPORTER_OTLP_*`` (see
    :meth:`~otelbridge.export.otlp.OtlpConfig.from_env`); ``jsonl`` writes to
    ``jsonl_path`` (standard output when ``None`` or ``-``); ``none`` gives a single
    :class:`~otelbridge.export.files.NoneExporter` and cannot be combined with others.
    Names are case-insensitive and repeated names count once.
    """
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    names: list[str] = []
    for item in raw.split(",") if raw else ["otlp"]:
        name = item.strip().lower()
        if name and name not in names:
            names.append(name)
    if not names:
        names = ["otlp"]

    problems: list[str] = []
    unknown = [n for n in names if n not in EXPORTER_NAMES]
    if unknown:
        problems.append(
            f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(EXPORTER_NAMES)}"
        )
    if "none" in names and len(names) > 1:
        problems.append("OTEL_TRACES_EXPORTER: 'none' cannot be combined with other exporters")
    otlp_config: OtlpConfig | None = None
    if "otlp" in names:
        try:
            otlp_config = OtlpConfig.from_env(environ)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)

    exporters: list[SpanExporter] = []
    try:
        for name in names:
            if name == "otlp" and otlp_config is not None:
                exporters.append(create_exporter(otlp_config))
            elif name == "console":
                exporters.append(ConsoleExporter())
            elif name == "jsonl":
                try:
                    exporters.append(JsonlExporter(jsonl_path))
                except OSError as exc:
                    raise ConfigError([f"jsonl: cannot open {str(jsonl_path)!r}: {exc}"]) from exc
            elif name == "none":
                exporters.append(NoneExporter())
    except ConfigError:
        # Do not leak the channels and files of the exporters already made.
        for exporter in exporters:
            exporter.shutdown()
        raise
    return exporters


def build_resource(
    environ: Mapping[str, str],
    *,
    service_name_default: str = DEFAULT_SERVICE_NAME,
    extra: Mapping[str, str] | None = None,
) -> Resource:
    """The bridge's resource, from lowest to highest precedence:

    1. ``service.name`` = ``service_name_default`` and ``host.name`` = the host name;
    2. ``extra`` (what the caller detected or was told, e.g. ``k8s.node.name``);
    3. ``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, percent-decoded);
    4. ``OTEL_SERVICE_NAME`` for ``service.name``.

    Every attribute is a string. Raises :class:`~otelbridge.core.errors.ConfigError` when an
    entry of ``OTEL_RESOURCE_ATTRIBUTES`` is not ``key=value``.
    """
    attributes: dict[str, str] = {
        SERVICE_NAME: service_name_default,
        HOST_NAME: socket.gethostname(),
    }
    attributes.update(extra or {})
    raw = environ.get("OTEL_RESOURCE_ATTRIBUTES", "").strip()
    if raw:
        parsed, problems = parse_key_values(raw)
        if problems:
            raise ConfigError([f"OTEL_RESOURCE_ATTRIBUTES: {p}" for p in problems])
        attributes.update(parsed)
    service_name = environ.get("OTEL_SERVICE_NAME", "").strip()
    if service_name:
        attributes[SERVICE_NAME] = service_name
    return Resource(
        attributes=[
            KeyValue(key=key, value=AnyValue(string_value=value))
            for key, value in attributes.items()
        ]
    )
