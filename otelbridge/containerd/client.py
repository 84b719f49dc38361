"""A read-only containerd client.

The bridge must never change containerd's state, so every call goes through one gRPC
client interceptor holding an allow-list of read methods (:data:`ALLOWED_METHODS`);
anything else is refused with :class:`~otelbridge.core.errors.MethodNotAllowed` before it
leaves the process. gRPC errors are translated at this edge: ``UNAVAILABLE`` and friends
become :class:`~otelbridge.core.errors.ContainerdUnavailable`, ``NOT_FOUND`` becomes
:class:`~otelbridge.core.errors.NotFound`, ``UNIMPLEMENTED`` (the socket answers gRPC but
is not containerd) becomes :class:`~otelbridge.core.errors.ContainerdMisconfigured`.

Container records are decoded here, one by one, never as one response: containerd keeps
whatever bytes a client gave it, and a record protobuf refuses (a label that is not
UTF-8) must cost at most that record, never the listing of its namespace. Such a record
is read leniently (:func:`~otelbridge.containerd.records.parse_container`), counted
(``otelbridge.metadata.malformed``) and named in the log; one that cannot be read at all
is skipped, counted and named. Listings are streamed (``Containers/ListStream``, one
message per container), because containerd refuses to send a message over 16 MiB and a
busy namespace's records exceed that; a containerd without ListStream is listed with
``Containers/List``.

Addresses follow ``ctr``: a socket path (``/run/containerd/containerd.sock``) or a gRPC
target with a scheme (``unix:///...``). Every call but ``Version`` carries containerd's
namespace in the ``containerd-namespace`` metadata header.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import grpc.experimental
from google.protobuf.message import DecodeError as ProtobufDecodeError

from otelbridge.containerd import records
from otelbridge.containerd._gen import otelbridge_api_pb2 as api
from otelbridge.containerd.methods import (
    ALLOWED_METHODS,
    M_CONTAINER_GET,
    M_CONTAINER_LIST,
    M_CONTAINER_LIST_STREAM,
    M_NAMESPACE_LIST,
    M_SUBSCRIBE,
    M_TASK_LIST,
    M_VERSION,
)
from otelbridge.containerd.stream import EventConnection
from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import (
    ContainerdError,
    ContainerdMisconfigured,
    ContainerdUnavailable,
    DecodeError,
    MethodNotAllowed,
    NotFound,
)
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerInfo, RawEnvelope, TaskInfo

_log = logging.getLogger(__name__)
# one line per bad record at first; a namespace full of them is throttled
_tlog = ThrottledLogger(_log)

_NAMESPACE_HEADER = "containerd-namespace"
_UNAVAILABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
_MAX_MESSAGE = 64 * 1024 * 1024  # a node's container list can exceed gRPC's 4 MiB default
# bad records named in the log once each (repeats, e.g. at every relist, go to DEBUG);
# bounded, a tenant can create any number of them
_NAMED_RECORDS = 1024


def grpc_target(address: str) -> str:
    return address if "://" in address else "unix://" + address


def socket_path(address: str) -> str | None:
    """The unix socket path of an address (``/x.sock``, ``unix:///x.sock``,
    ``unix:x.sock``), or ``None`` when it is not a unix socket path (``tcp://``,
    an abstract socket)."""
    if address.startswith("unix://"):
        return address[len("unix://") :] or None
    if address.startswith("unix:"):
        return address[len("unix:") :] or None
    if "://" in address or address.startswith("unix-abstract:"):
        return None
    return address or None


class _AllowList(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Refuses every method outside :data:`ALLOWED_METHODS`."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self._allowed = allowed

    def _check(self, details: Any) -> None:
        if details.method not in self._allowed:
            raise MethodNotAllowed(
                f"containerd method {details.method} is not on the read-only allow-list"
            )

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        self._check(details)
        return continuation(details, request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        self._check(details)
        return continuation(details, request)


def translate(exc: grpc.RpcError, what: str) -> ContainerdError:
    """A grpc error as an otelbridge error (``raise translate(e, ...) from e``)."""
    code = _code(exc)
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    return status_error(code.value[0] if code is not None else 2, detail or "", what)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_error(code: int, detail: str, what: str) -> ContainerdError:
    """A gRPC status (its number) as an otelbridge error: the one translation of both
    the gRPC client's errors and the event connection's trailers."""
    status = _CODES.get(code)
    message = f"{what}: {status.name if status else 'error'}: {detail}"
    if status == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if status in _UNAVAILABLE:
        return ContainerdUnavailable(message)
    if status == grpc.StatusCode.UNIMPLEMENTED:
        # every method translated here exists in every containerd since 1.0 (ListStream's
        # absence is handled before translating): whoever answers is not containerd
        return ContainerdMisconfigured(message)
    return ContainerdError(message)


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = exc.code() if hasattr(exc, "code") else None
    return code if isinstance(code, grpc.StatusCode) else None


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


def _raw(data: bytes) -> bytes:
    """A response deserializer that does not decode: records are decoded one by one."""
    return data


class Subscription:
    """A live event stream. Iterate for envelopes; :meth:`cancel` from any thread ends it.

    Iteration raises :class:`ContainerdUnavailable` when containerd goes away and ends
    quietly after :meth:`cancel`.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __iter__(self) -> Iterator[RawEnvelope]:
        try:
            for env in self._call:
                ts = env.timestamp
                yield RawEnvelope(
                    ts.seconds * 1_000_000_000 + ts.nanos,
                    env.namespace,
                    env.topic,
                    env.event.type_url,
                    env.event.value,
                )
        except grpc.RpcError as exc:
            if self._cancelled:
                return
            raise translate(exc, "event stream") from exc
        if not self._cancelled:
            raise ContainerdUnavailable("event stream: ended by containerd")


class ContainerdClient:
    """Read-only access to one containerd. Thread-safe (gRPC channels are)."""

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 5.0,
        env_keys: tuple[str, ...] = records.CARRIER_ENV,
        counters: Counters | None = None,
    ) -> None:
        """``env_keys``: the process environment variables container records keep (the
        trace-context carrier's; the rest of the environment may hold secrets).
        ``counters``: where malformed records are counted (``otelbridge.metadata.malformed``);
        without it they are only logged."""
        self.address = address
        self._timeout = timeout_s
        self._env_keys = env_keys
        self._counters = counters
        # False once containerd answered ListStream with UNIMPLEMENTED: List from then on
        self._streaming = True
        self._named: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._named_lock = threading.Lock()
        raw = grpc.insecure_channel(
            grpc_target(address),
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                # a unix socket has no authority; grpc wants one for HTTP/2
                ("grpc.default_authority", "localhost"),
                # grpc's own reconnect backoff (1 s, growing 1.6x up to 2 min) would keep
                # the channel failing fast for seconds after containerd is back, while
                # containers start unseen; a local socket is cheap to retry
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
                # a streaming call read on the caller's thread: without this, gRPC spins a
                # thread per channel that receives each message and hands it over, and
                # the reader polls for it every 100 ms (issue 12: a third of the stream's
                # CPU per event, and most of an idle bridge's)
                (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
            ],
        )
        self._raw = raw
        self.channel = grpc.intercept_channel(raw, _AllowList(ALLOWED_METHODS))
        self._subscribe = self.channel.unary_stream(
            M_SUBSCRIBE,
            request_serializer=_serialize,
            response_deserializer=api.Envelope.FromString,
        )
        # container records arrive undecoded (see the module docstring)
        self._get = self._unary(M_CONTAINER_GET, _raw)
        self._list = self._unary(M_CONTAINER_LIST, _raw)
        self._list_stream = self.channel.unary_stream(
            M_CONTAINER_LIST_STREAM, request_serializer=_serialize, response_deserializer=_raw
        )
        self._tasks = self._unary(M_TASK_LIST, api.ListTasksResponse.FromString)
        self._namespaces = self._unary(M_NAMESPACE_LIST, api.ListNamespacesResponse.FromString)
        self._version = self._unary(M_VERSION, api.VersionResponse.FromString)

    def _unary(self, method: str, deserialize: Callable[[bytes], Any]) -> Any:
        # requests serialize themselves; Version's (google.protobuf.Empty) is passed as None
        return self.channel.unary_unary(
            method,
            request_serializer=lambda m: b"" if m is None else _serialize(m),
            response_deserializer=deserialize,
        )

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _ns(namespace: str) -> tuple[tuple[str, str]]:
        return ((_NAMESPACE_HEADER, namespace),)

    def version(self, timeout_s: float | None = None) -> str:
        try:
            resp = self._version(None, timeout=timeout_s or self._timeout, wait_for_ready=False)
        except grpc.RpcError as exc:
            raise translate(exc, "Version") from exc
        return str(resp.version)

    def subscribe(self, filters: Sequence[str] = ()) -> Subscription:
        """Starts an event subscription (containerd filter syntax, e.g. ``namespace==k8s.io``)."""
        call = self._subscribe(api.SubscribeRequest(filters=list(filters)))
        return Subscription(call)

    def open_events(self, filters: Sequence[str] = ()) -> EventConnection:
        """An event subscription on a connection of its own, read without threads
        (:mod:`otelbridge.containerd.stream`); it carries ``Containers/Get`` too. Raises
        :class:`ContainerdUnavailable`, or ``ValueError`` when the address is not a unix
        socket (:meth:`subscribe` serves those)."""
        path = socket_path(self.address)
        if path is None:
            raise ValueError(f"{self.address} is not a unix socket")
        connection = EventConnection.open(
            path,
            allowed=ALLOWED_METHODS,
            status_error=status_error,
            max_message=_MAX_MESSAGE,
            timeout_s=self._timeout,
        )
        connection.subscribe(filters)
        return connection

    def get_container(self, namespace: str, container_id: str) -> ContainerInfo:
        """The record of one container. Raises :class:`NotFound` when it is gone,
        :class:`DecodeError` when containerd's answer cannot be read even leniently
        (counted and named), other :class:`ContainerdError` when the call fails."""
        what = f"Containers/Get {namespace}/{container_id}"
        try:
            raw = self._get(
                api.GetContainerRequest(id=container_id),
                timeout=self._timeout,
                metadata=self._ns(namespace),
            )
        except grpc.RpcError as exc:
            raise translate(exc, what) from exc
        return self.container_from(namespace, container_id, raw)

    def container_from(self, namespace: str, container_id: str, raw: bytes) -> ContainerInfo:
        """A ``GetContainerResponse`` (serialized) as a record, decoded as
        :meth:`get_container` decodes it (the event connection's Gets)."""
        info = self._decode(namespace, _held(raw), container_id)
        if info is None:
            raise DecodeError(
                f"Containers/Get {namespace}/{container_id}: the record cannot be decoded"
            )
        return info

    def list_containers(self, namespace: str) -> list[ContainerInfo]:
        """Every container of ``namespace`` that can be read, leniently if need be (see
        the module docstring): a bad record is counted and named, never raised."""
        infos = []
        for index, raw in enumerate(self._container_records(namespace)):
            info = self._decode(namespace, raw, f"#{index} of the listing")
            if info is not None:
                infos.append(info)
        return infos

    def _container_records(self, namespace: str) -> list[bytes | None]:
        """The serialized Container records of a namespace (``None`` for a message that
        held no readable record)."""
        request = api.ListContainersRequest()
        metadata = self._ns(namespace)
        if self._streaming:
            what = f"Containers/ListStream {namespace}"
            try:
                # the timeout bounds the whole listing, as it bounded a List call
                call = self._list_stream(request, timeout=self._timeout, metadata=metadata)
                return [_held(message) for message in call]
            except grpc.RpcError as exc:
                if _code(exc) != grpc.StatusCode.UNIMPLEMENTED:
                    raise translate(exc, what) from exc
            self._streaming = False
            _log.info(
                "containerd at %s has no Containers/ListStream: listing with Containers/List",
                self.address,
            )
        what = f"Containers/List {namespace}"
        try:
            raw = self._list(request, timeout=self._timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise translate(exc, what) from exc
        try:
            return list(api.RawContainerList.FromString(raw).containers)
        except ProtobufDecodeError as exc:  # the framing itself is broken: nothing to split
            raise ContainerdError(f"{what}: the response cannot be decoded: {exc}") from exc

    def _decode(self, namespace: str, raw: bytes | None, where: str) -> ContainerInfo | None:
        """One record as a :class:`ContainerInfo`, or ``None`` when it cannot be read;
        a malformed record is counted and named (``where`` names it if its id cannot
        be read)."""
        parsed = (
            records.parse_container(raw)
            if raw is not None
            else records.ParsedContainer(None, "", "the message holding it cannot be decoded")
        )
        if parsed.problem:
            self._malformed(namespace, parsed.id or where, parsed)
        if parsed.container is None:
            return None
        return records.container_info(namespace, parsed.container, self._env_keys)

    def _malformed(self, namespace: str, name: str, parsed: records.ParsedContainer) -> None:
        if self._counters is not None:
            self._counters.inc(semconv.METADATA_MALFORMED)
        with self._named_lock:
            key = (namespace, name)
            first = key not in self._named
            self._named[key] = None
            self._named.move_to_end(key)
            while len(self._named) > _NAMED_RECORDS:
                self._named.popitem(last=False)
        fate = "skipped" if parsed.container is None else "kept"
        if first:
            _tlog.warning(
                "malformed",
                "container record %s/%s from containerd: %s (%s)",
                namespace,
                name,
                parsed.problem,
                fate,
            )
        else:  # the same record again (every relist): said already
            _log.debug("container record %s/%s again: %s", namespace, name, parsed.problem)

    def list_tasks(self, namespace: str) -> list[TaskInfo]:
        try:
            resp = self._tasks(
                api.ListTasksRequest(), timeout=self._timeout, metadata=self._ns(namespace)
            )
        except grpc.RpcError as exc:
            raise translate(exc, f"Tasks/List {namespace}") from exc
        return [records.task_info(namespace, p) for p in resp.tasks]

    def list_namespaces(self) -> list[str]:
        try:
            resp = self._namespaces(api.ListNamespacesRequest(), timeout=self._timeout)
        except grpc.RpcError as exc:
            raise translate(exc, "Namespaces/List") from exc
        return [n.name for n in resp.namespaces]


def _held(raw: bytes) -> bytes | None:
    """The Container record inside a GetContainerResponse or ListContainerMessage, still
    serialized; ``None`` when the message around it cannot be decoded."""
    try:
        return bytes(api.RawContainerHolder.FromString(raw).container)
    except ProtobufDecodeError:
        return None
