"""The one reader of the ``OTEL_EXPORTER_OTLP_*`` variables, for traces and metrics alike.

The OpenTelemetry conventions: for each setting (``ENDPOINT``, ``PROTOCOL``, ``HEADERS``,
``TIMEOUT``, ``INSECURE``, ``COMPRESSION``, ``CERTIFICATE``) the signal's own variable
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``..._METRICS_...``) wins over the generic one;
empty values count as unset; with an HTTP protocol the generic endpoint is a base URL
that gets the signal's path (``/v1/traces``, ``/v1/metrics``) appended, while the signal's
own endpoint is used as is; ``_TIMEOUT`` is milliseconds; ``_HEADERS`` (like
``OTEL_RESOURCE_ATTRIBUTES``) is ``k=v,k2=v2`` percent-encoded.

:meth:`OtlpConfig.from_env` reads them once, at startup, and raises
:class:`~otelbridge.core.errors.ConfigError` listing every invalid variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import urllib.parse
from collections.abc import Mapping
from typing import Final, Literal, TypeAlias

from otelbridge.core.errors import ConfigError

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_GRPC_ENDPOINT",
    "DEFAULT_HTTP_ENDPOINT",
    "PROTOCOLS",
    "TRACES_PATH",
    "Compression",
    "OtlpConfig",
    "OtlpProtocol",
    "endpoint_problem",
    "parse_key_values",
]

OtlpProtocol: TypeAlias = Literal["grpc", "http/protobuf", "http/json"]
Compression: TypeAlias = Literal["none", "gzip"]
Signal: TypeAlias = Literal["TRACES", "METRICS"]

PROTOCOLS: Final[tuple[OtlpProtocol, ...]] = ("grpc", "http/protobuf", "http/json")
COMPRESSIONS: Final[tuple[Compression, ...]] = ("none", "gzip")
DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
DEFAULT_HTTP_BASE: Final = "http://localhost:4318"
TRACES_PATH: Final = "/v1/traces"
METRICS_PATH: Final = "/v1/metrics"
DEFAULT_HTTP_ENDPOINT: Final = DEFAULT_HTTP_BASE + TRACES_PATH
DEFAULT_TIMEOUT_S: Final = 10.0
_PREFIX: Final = "OTEL_EXPORTER_OTLP_"
_PATHS: Final[dict[str, str]] = {"TRACES": TRACES_PATH, "METRICS": METRICS_PATH}


@dataclasses.dataclass(frozen=True)
class OtlpConfig:
    """Where and how one signal is sent over OTLP. Defaults live here and nowhere else."""

    endpoint: str = DEFAULT_GRPC_ENDPOINT
    """Full target. gRPC: ``http://host:port`` (plaintext), ``https://host:port`` (TLS) or
    ``host:port`` (TLS unless ``insecure``). HTTP: the complete URL, path included."""

    protocol: OtlpProtocol = "grpc"
    """``grpc``, ``http/protobuf`` or ``http/json``."""

    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Sent with every request (gRPC metadata, keys lowercased; or HTTP headers)."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    """Time allowed for one export attempt, in seconds."""

    insecure: bool = False
    """gRPC only, for an endpoint without a scheme: plaintext instead of TLS."""

    compression: Compression = "none"
    """``gzip`` compresses request bodies; ``none`` does not."""

    certificate: str | None = None
    """PEM file of the CA(s) that sign the receiver's certificate (TLS); ``None`` uses the
    system's trust store."""

    def validate(self, protocols: tuple[str, ...] = PROTOCOLS) -> list[str]:
        """Every problem of this configuration (empty when it is usable)."""
        problems: list[str] = []
        if self.protocol not in protocols:
            problems.append(f"protocol: {self.protocol!r} is not one of {', '.join(protocols)}")
        else:
            reason = endpoint_problem(self.endpoint, self.protocol)
            if reason:
                problems.append(f"endpoint: {reason}")
        if any(not key.strip() for key in self.headers):
            problems.append("headers: a header name is empty")
        if not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            problems.append("timeout_s: must be a positive duration")
        if self.compression not in COMPRESSIONS:
            problems.append(
                f"compression: {self.compression!r} is not one of {', '.join(COMPRESSIONS)}"
            )
        if self.certificate is not None and not os.path.isfile(self.certificate):
            problems.append(f"certificate: {self.certificate!r} is not a readable file")
        return problems

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        signal: Signal = "TRACES",
        *,
        protocols: tuple[OtlpProtocol, ...] = PROTOCOLS,
    ) -> OtlpConfig:
        """The settings of ``signal`` from the ``OTEL_EXPORTER_OTLP_*`` variables (see the
        module docstring). ``protocols``: those the signal's exporter can speak; a generic
        ``OTEL_EXPORTER_OTLP_PROTOCOL=http/json`` meant for spans sends a signal without a
        JSON exporter as ``http/protobuf`` to the same receiver, while the signal's own
        variable naming an unsupported protocol is an error."""
        reader = _Reader(environ, signal)
        name, raw = reader.lookup("PROTOCOL")
        protocol: OtlpProtocol = "grpc"
        if raw is not None:
            value = raw.lower()
            if value in protocols:
                protocol = _protocol(value)
            elif value == "http/json" and name == _PREFIX + "PROTOCOL":
                protocol = "http/protobuf"
            else:
                reader.problems.append(f"{name}: {raw!r} is not one of {', '.join(protocols)}")
        config = cls(
            endpoint=reader.endpoint(protocol),
            protocol=protocol,
            headers=reader.headers(),
            timeout_s=reader.millis("TIMEOUT", DEFAULT_TIMEOUT_S),
            insecure=reader.boolean("INSECURE"),
            compression=reader.compression(),
            certificate=reader.certificate(),
        )
        if reader.problems:
            raise ConfigError(reader.problems)
        return config


class _Reader:
    """Reads the settings of one signal, collecting every problem."""

    def __init__(self, environ: Mapping[str, str], signal: str) -> None:
        self.environ = environ
        self.signal = signal
        self.problems: list[str] = []

    def get(self, name: str) -> str | None:
        value = self.environ.get(name, "").strip()
        return value or None

    def lookup(self, setting: str) -> tuple[str, str | None]:
        """The signal's variable if set, else the generic one: (name, value)."""
        specific = f"{_PREFIX}{self.signal}_{setting}"
        value = self.get(specific)
        if value is not None:
            return specific, value
        return _PREFIX + setting, self.get(_PREFIX + setting)

    def endpoint(self, protocol: str) -> str:
        path = _PATHS[self.signal]
        endpoint = DEFAULT_GRPC_ENDPOINT if protocol == "grpc" else DEFAULT_HTTP_BASE + path
        specific_name = f"{_PREFIX}{self.signal}_ENDPOINT"
        specific = self.get(specific_name)
        generic = self.get(_PREFIX + "ENDPOINT")
        if specific is not None:
            endpoint, name = specific, specific_name
        elif generic is not None:
            name = _PREFIX + "ENDPOINT"
            endpoint = generic if protocol == "grpc" else generic.rstrip("/") + path
        else:
            return endpoint
        reason = endpoint_problem(endpoint, protocol)
        if reason:
            self.problems.append(f"{name}: {reason}")
        return endpoint

    def headers(self) -> dict[str, str]:
        name, raw = self.lookup("HEADERS")
        if raw is None:
            return {}
        headers, problems = parse_key_values(raw)
        self.problems.extend(f"{name}: {p}" for p in problems)
        return headers

    def millis(self, setting: str, default_s: float) -> float:
        name, raw = self.lookup(setting)
        if raw is None:
            return default_s
        try:
            value = float(raw) / 1000.0
        except ValueError:
            self.problems.append(f"{name}: {raw!r} is not a number of milliseconds")
            return default_s
        if not math.isfinite(value) or value <= 0:
            self.problems.append(f"{name}: {raw!r}: must be a positive duration")
            return default_s
        return value

    def boolean(self, setting: str) -> bool:
        name, raw = self.lookup(setting)
        if raw is None:
            return False
        if raw.lower() not in ("true", "false"):
            self.problems.append(f"{name}: {raw!r} is neither true nor false")
            return False
        return raw.lower() == "true"

    def compression(self) -> Compression:
        name, raw = self.lookup("COMPRESSION")
        if raw is None or raw.lower() == "none":
            return "none"
        if raw.lower() == "gzip":
            return "gzip"
        self.problems.append(f"{name}: {raw!r} is not one of {', '.join(COMPRESSIONS)}")
        return "none"

    def certificate(self) -> str | None:
        name, certificate = self.lookup("CERTIFICATE")
        if certificate is not None and not os.path.isfile(certificate):
            self.problems.append(f"{name}: {certificate!r} is not a readable file")
        return certificate


def _protocol(value: str) -> OtlpProtocol:
    if value == "http/protobuf":
        return "http/protobuf"
    if value == "http/json":
        return "http/json"
    return "grpc"


def parse_key_values(text: str) -> tuple[dict[str, str], list[str]]:
    """Parses ``k=v,k2=v2`` with percent-decoding (the format of ``OTEL_*_HEADERS`` and
    ``OTEL_RESOURCE_ATTRIBUTES``). Returns the pairs and a problem per bad entry."""
    pairs: dict[str, str] = {}
    problems: list[str] = []
    for item in text.split(","):
        if not item.strip():
            continue  # a trailing or doubled comma is harmless
        key, sep, value = item.partition("=")
        key = urllib.parse.unquote(key.strip())
        if not sep or not key:
            problems.append(f"{item.strip()!r} is not key=value")
            continue
        pairs[key] = urllib.parse.unquote(value.strip())
    return pairs, problems


def endpoint_problem(endpoint: str, protocol: str) -> str | None:
    """Why ``endpoint`` is not a usable OTLP endpoint for ``protocol``, or None."""
    url = endpoint
    if "://" not in endpoint:
        if protocol != "grpc":
            return f"{endpoint!r} is not an http:// or https:// URL"
        url = "http://" + endpoint  # the host:port form of gRPC: parse it like a URL
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"{endpoint!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{endpoint!r}: the scheme must be http or https"
    if not parts.hostname:
        return f"{endpoint!r} has no host"
    return None
