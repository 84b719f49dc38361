"""Telling a failed connection apart: what waiting heals, and what it never will."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge.containerd.diagnose import SocketState, diagnose, probe_socket
from otelbridge.core.errors import ContainerdMisconfigured, ContainerdUnavailable

UNAVAILABLE = ContainerdUnavailable(
    "Version: UNAVAILABLE: failed to connect to all addresses; last error: ..."
)


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "listening.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
        sock.listen()
        yield path


def test_probe_tells_the_states_of_a_path_apart(tmp_path: Path, listening: str) -> None:
    assert probe_socket(str(tmp_path / "missing.sock"))[0] is SocketState.MISSING
    assert probe_socket(str(tmp_path / "no-dir" / "c.sock"))[0] is SocketState.MISSING
    (tmp_path / "file").write_text("")
    assert probe_socket(str(tmp_path / "file")) == (SocketState.NOT_SOCKET, "not a socket")
    assert probe_socket(str(tmp_path / "file" / "c.sock"))[0] is SocketState.NOT_SOCKET
    assert probe_socket(str(tmp_path)) == (SocketState.NOT_SOCKET, "a directory")
    assert probe_socket(listening) == (SocketState.ACCEPTS, "")


def test_a_socket_nobody_listens_on_refuses(tmp_path: Path) -> None:
    # what a containerd killed without cleaning up leaves behind
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(path)
        assert probe_socket(path)[0] is SocketState.REFUSED


def test_a_datagram_socket_is_not_containerds(tmp_path: Path) -> None:
    path = str(tmp_path / "dgram.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        assert probe_socket(path)[0] is SocketState.NOT_SOCKET


def test_permission_denied_on_the_socket_or_its_directory(listening: str) -> None:
    # a root test process is never denied: the denial is injected
    def denied_connect(path: str, timeout_s: float) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    def denied_stat(path: str) -> os.stat_result:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    assert probe_socket(listening, connect=denied_connect)[0] is SocketState.PERMISSION
    assert probe_socket(listening, stat_path=denied_stat)[0] is SocketState.PERMISSION


def test_a_missing_socket_can_heal_and_says_what_to_check(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    found = diagnose(path, UNAVAILABLE)
    assert found.can_heal and found.kind == "missing"
    assert found.message == (
        f"containerd socket {path} does not exist: is containerd running, and is "
        "--address / CONTAINERD_ADDRESS right? waiting for it"
    )
    # after a connection, a vanished socket is a restart, not a wrong address
    again = diagnose(path, UNAVAILABLE, connected_before=True)
    assert again.can_heal and again.kind == "missing" and "restarting" in again.message
    assert diagnose("unix://" + path, UNAVAILABLE).kind == "missing"


def test_a_refused_connection_can_heal(tmp_path: Path) -> None:
    found = diagnose("/x.sock", UNAVAILABLE, probe=lambda p: (SocketState.REFUSED, ""))
    assert found.can_heal and found.kind == "refused" and "/x.sock" in found.message


def test_what_waiting_cannot_heal_says_what_to_do(tmp_path: Path) -> None:
    denied = diagnose("/x.sock", UNAVAILABLE, probe=lambda p: (SocketState.PERMISSION, "no"))
    assert not denied.can_heal
    assert denied.message == (
        "permission denied on /x.sock: run otelbridge as root or give it access to the socket"
    )
    (tmp_path / "file").write_text("")
    not_socket = diagnose(str(tmp_path / "file"), UNAVAILABLE)
    assert not not_socket.can_heal and not_socket.kind == "not_socket"
    assert "--address / CONTAINERD_ADDRESS" in not_socket.message


def test_a_grpc_server_that_is_not_containerd_cannot_heal(listening: str) -> None:
    error = ContainerdMisconfigured("Version: UNIMPLEMENTED: Method not found!")
    found = diagnose(listening, error)
    assert not found.can_heal and found.kind == "not_containerd"
    assert f"{listening} answers gRPC but is not containerd" in found.message


def test_a_socket_that_accepts_but_does_not_answer_is_retried(listening: str) -> None:
    # containerd starting: its socket is bound before its services answer
    found = diagnose(listening, UNAVAILABLE)
    assert found.can_heal and found.kind == "unavailable"


def test_an_address_that_is_no_unix_path_is_retried_as_unavailable() -> None:
    found = diagnose("dns:///node:10010", UNAVAILABLE)
    assert found.can_heal and found.kind == "unavailable" and "dns:///node:10010" in found.message
