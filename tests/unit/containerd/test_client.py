"""The containerd client is read-only, and translates gRPC errors at its edge."""

from __future__ import annotations

import grpc
import pytest

from otelbridge.containerd import client
from otelbridge.containerd.client import (
    ALLOWED_METHODS,
    ContainerdClient,
    grpc_target,
    socket_path,
    translate,
)
from otelbridge.core.errors import (
    ContainerdError,
    ContainerdMisconfigured,
    ContainerdUnavailable,
    MethodNotAllowed,
    NotFound,
)

WRITES = [
    "/containerd.services.tasks.v1.Tasks/Kill",
    "/containerd.services.tasks.v1.Tasks/Delete",
    "/containerd.services.containers.v1.Containers/Delete",
    "/containerd.services.containers.v1.Containers/Update",
    "/containerd.services.events.v1.Events/Publish",
    "/containerd.services.snapshots.v1.Snapshots/Remove",
]


@pytest.mark.parametrize("method", WRITES)
def test_a_method_outside_the_allow_list_is_refused_before_it_is_sent(method: str) -> None:
    # no containerd listens on this socket: a refusal proves nothing was sent
    with ContainerdClient("/nonexistent/containerd.sock") as c:
        call = c.channel.unary_unary(
            method, request_serializer=lambda _: b"", response_deserializer=lambda b: b
        )
        with pytest.raises(MethodNotAllowed, match="allow-list"):
            call(b"", timeout=1)


def test_streaming_methods_are_checked_too() -> None:
    with ContainerdClient("/nonexistent/containerd.sock") as c:
        call = c.channel.unary_stream(
            "/containerd.services.events.v1.Events/Forward",
            request_serializer=lambda _: b"",
            response_deserializer=lambda b: b,
        )
        with pytest.raises(MethodNotAllowed):
            next(iter(call(b"", timeout=1)))


def test_the_allow_list_holds_only_read_methods() -> None:
    verbs = {m.rsplit("/", 1)[1] for m in ALLOWED_METHODS}
    assert verbs <= {"Subscribe", "Get", "List", "ListStream", "Version"}
    assert {
        client.M_SUBSCRIBE,
        client.M_CONTAINER_GET,
        client.M_CONTAINER_LIST_STREAM,
        client.M_TASK_LIST,
    } <= ALLOWED_METHODS


def test_an_allowed_call_to_a_missing_socket_is_unavailable() -> None:
    with (
        ContainerdClient("/nonexistent/containerd.sock", timeout_s=0.5) as c,
        pytest.raises(ContainerdUnavailable),
    ):
        c.version()


class FakeRpcError(grpc.RpcError):
    """A grpc.RpcError as grpc raises them (code() and details()); no server involved."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "detail"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.UNAVAILABLE, ContainerdUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, ContainerdUnavailable),
        (grpc.StatusCode.PERMISSION_DENIED, ContainerdError),
        # the socket answers gRPC, but not containerd's methods: waiting cannot heal that
        (grpc.StatusCode.UNIMPLEMENTED, ContainerdMisconfigured),
    ],
)
def test_grpc_errors_are_translated(code: grpc.StatusCode, expected: type[Exception]) -> None:
    err = translate(FakeRpcError(code), "Containers/Get ns/id")
    assert type(err) is expected
    assert "Containers/Get ns/id" in str(err) and code.name in str(err)


def test_addresses_follow_ctr() -> None:
    assert (
        grpc_target("/run/containerd/containerd.sock") == "unix:///run/containerd/containerd.sock"
    )
    assert grpc_target("unix:///x.sock") == "unix:///x.sock"


@pytest.mark.parametrize(
    ("address", "path"),
    [
        ("/run/containerd/containerd.sock", "/run/containerd/containerd.sock"),
        ("unix:///run/containerd/containerd.sock", "/run/containerd/containerd.sock"),
        ("unix:relative.sock", "relative.sock"),
        ("unix-abstract:containerd", None),
        ("dns:///containerd.example:10010", None),
        ("", None),
    ],
)
def test_the_socket_path_of_an_address(address: str, path: str | None) -> None:
    assert socket_path(address) == path
