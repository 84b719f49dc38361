"""A read-only containerd client.

The bridge must never change containerd's state, so every call goes through one gRPC
client interceptor holding an allow-list of read methods (:data:`ALLOWED_METHODS`);
anything else is refused with :class:`~otelbridge.core.errors.MethodNotAllowed` before it
leaves the process. gRPC errors are translated at this edge: ``UNAVAILABLE`` and friends
become :class:`~otelbridge.core.errors.ContainerdUnavailable`, ``NOT_FOUND`` becomes
:class:`~otelbridge.core.errors.NotFound`.

Addresses follow ``ctr``: a socket path (``/run/containerd/containerd.sock``) or a gRPC
target with a scheme (``unix:///...``). Every call but ``Version`` carries containerd's
namespace in the ``containerd-namespace`` metadata header.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from otelbridge.containerd import records
from otelbridge.containerd._gen import otelbridge_api_pb2 as api
from otelbridge.core.errors import (
    ContainerdError,
    ContainerdUnavailable,
    MethodNotAllowed,
    NotFound,
)
from otelbridge.core.model import ContainerInfo, RawEnvelope, TaskInfo

M_SUBSCRIBE = "/containerd.services.events.v1.Events/Subscribe"
M_CONTAINER_GET = "/containerd.services.containers.v1.Containers/Get"
M_CONTAINER_LIST = "/containerd.services.containers.v1.Containers/List"
M_TASK_LIST = "/containerd.services.tasks.v1.Tasks/List"
M_NAMESPACE_LIST = "/containerd.services.namespaces.v1.Namespaces/List"
M_VERSION = "/containerd.services.version.v1.Version/Version"

#: The only containerd methods the bridge may call. All of them read.
ALLOWED_METHODS = frozenset(
    {M_SUBSCRIBE, M_CONTAINER_GET, M_CONTAINER_LIST, M_TASK_LIST, M_NAMESPACE_LIST, M_VERSION}
)

_NAMESPACE_HEADER = "containerd-namespace"
_UNAVAILABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
_MAX_MESSAGE = 64 * 1024 * 1024  # a node's container list can exceed gRPC's 4 MiB default


def grpc_target(address: str) -> str:
    return address if "://" in address else "unix://" + address


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
    code = exc.code() if hasattr(exc, "code") else None
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    message = f"{what}: {code.name if code else 'error'}: {detail}"
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code in _UNAVAILABLE:
        return ContainerdUnavailable(message)
    return ContainerdError(message)


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


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
    ) -> None:
        """``env_keys``: the process environment variables container records keep (the
        trace-context carrier's; the rest of the environment may hold secrets)."""
        self.address = address
        self._timeout = timeout_s
        self._env_keys = env_keys
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
            ],
        )
        self._raw = raw
        self.channel = grpc.intercept_channel(raw, _AllowList(ALLOWED_METHODS))
        self._subscribe = self.channel.unary_stream(
            M_SUBSCRIBE,
            request_serializer=_serialize,
            response_deserializer=api.Envelope.FromString,
        )
        self._get = self._unary(M_CONTAINER_GET, api.GetContainerResponse)
        self._list = self._unary(M_CONTAINER_LIST, api.ListContainersResponse)
        self._tasks = self._unary(M_TASK_LIST, api.ListTasksResponse)
        self._namespaces = self._unary(M_NAMESPACE_LIST, api.ListNamespacesResponse)
        self._version = self._unary(M_VERSION, api.VersionResponse)

    def _unary(self, method: str, response: Any) -> Any:
        # requests serialize themselves; Version's (google.protobuf.Empty) is passed as None
        return self.channel.unary_unary(
            method,
            request_serializer=lambda m: b"" if m is None else _serialize(m),
            response_deserializer=response.FromString,
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

    def get_container(self, namespace: str, container_id: str) -> ContainerInfo:
        try:
            resp = self._get(
                api.GetContainerRequest(id=container_id),
                timeout=self._timeout,
                metadata=self._ns(namespace),
            )
        except grpc.RpcError as exc:
            raise translate(exc, f"Containers/Get {namespace}/{container_id}") from exc
        return records.container_info(namespace, resp.container, self._env_keys)

    def list_containers(self, namespace: str) -> list[ContainerInfo]:
        try:
            resp = self._list(
                api.ListContainersRequest(), timeout=self._timeout, metadata=self._ns(namespace)
            )
        except grpc.RpcError as exc:
            raise translate(exc, f"Containers/List {namespace}") from exc
        return [records.container_info(namespace, c, self._env_keys) for c in resp.containers]

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
