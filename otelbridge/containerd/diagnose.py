"""What is wrong when containerd cannot be reached, and whether waiting can heal it.

gRPC reports every failure to reach a unix socket as ``UNAVAILABLE`` with a long detail
string, whether the socket is missing (containerd not started yet: wait), refuses
connections (containerd restarting: wait) or may not be opened (permission denied:
waiting never helps). :func:`diagnose` tells these apart by looking at the socket
itself (``stat``, then a plain ``connect``) and at the error the call raised, and says in
one line what is wrong and what to do.

Only the socket path is looked at; nothing is sent to it (the plain connect is closed at
once, before any byte is written).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from otelbridge.containerd.client import socket_path
from otelbridge.core.errors import ContainerdError, ContainerdMisconfigured

_WHERE = "--address / CONTAINERD_ADDRESS"
_PROBE_TIMEOUT_S = 1.0


class SocketState(Enum):
    """What a plain look at a unix socket path found."""

    MISSING = "missing"
    """Nothing at the path (or a directory on the way is missing)."""
    REFUSED = "refused"
    """A socket nobody listens on (a containerd that stopped or is restarting)."""
    PERMISSION = "permission"
    """The path or the socket may not be used by this process."""
    NOT_SOCKET = "not_socket"
    """Something other than a socket is at the path."""
    ACCEPTS = "accepts"
    """Something listens and accepted a connection."""
    UNKNOWN = "unknown"
    """Any other error (see the detail)."""


@dataclass(frozen=True)
class Diagnosis:
    """Why a connection attempt failed."""

    kind: str
    """A stable name of the problem (``missing``, ``refused``, ``permission``,
    ``not_socket``, ``not_containerd``, ``unavailable``); equal kinds are the same
    problem for the purpose of saying it once."""

    message: str
    """One line: what is wrong and what to do."""

    can_heal: bool
    """True when waiting may help (containerd starting or restarting)."""


def _connect(path: str, timeout_s: float) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(path)


def probe_socket(
    path: str,
    *,
    stat_path: Callable[[str], os.stat_result] = os.stat,
    connect: Callable[[str, float], None] = _connect,
) -> tuple[SocketState, str]:
    """Looks at a unix socket path: (state, detail). Never raises. ``stat_path`` and
    ``connect`` are injectable for tests (a root test process is never denied)."""
    try:
        st = stat_path(path)
    except FileNotFoundError:
        return SocketState.MISSING, ""
    except PermissionError as exc:
        return SocketState.PERMISSION, exc.strerror or str(exc)
    except NotADirectoryError:
        return SocketState.NOT_SOCKET, "a component of the path is not a directory"
    except OSError as exc:
        return SocketState.UNKNOWN, str(exc)
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a socket"
        return SocketState.NOT_SOCKET, kind
    try:
        connect(path, _PROBE_TIMEOUT_S)
    except PermissionError as exc:
        return SocketState.PERMISSION, exc.strerror or str(exc)
    except ConnectionRefusedError:
        return SocketState.REFUSED, ""
    except FileNotFoundError:  # removed between stat and connect: containerd restarting
        return SocketState.MISSING, ""
    except OSError as exc:
        if exc.errno == errno.ENOTSOCK:
            return SocketState.NOT_SOCKET, "not a socket"
        if exc.errno == errno.EPROTOTYPE:  # a datagram socket: not containerd's
            return SocketState.NOT_SOCKET, "not a stream socket"
        return SocketState.UNKNOWN, str(exc)
    return SocketState.ACCEPTS, ""


def diagnose(
    address: str,
    error: ContainerdError,
    *,
    connected_before: bool = False,
    probe: Callable[[str], tuple[SocketState, str]] = probe_socket,
) -> Diagnosis:
    """What a failed connection attempt to ``address`` means. ``connected_before``:
    the bridge was connected earlier, so a missing socket is a restart, not a typo."""
    if isinstance(error, ContainerdMisconfigured):
        return Diagnosis(
            "not_containerd",
            f"{address} answers gRPC but is not containerd ({error}): point {_WHERE} at "
            "containerd's socket (usually /run/containerd/containerd.sock)",
            can_heal=False,
        )
    path = socket_path(address)
    if path is None:
        return _unavailable(address, error)
    state, detail = probe(path)
    if state is SocketState.MISSING:
        if connected_before:
            message = (
                f"containerd socket {path} is gone: containerd stopped or is restarting; "
                "waiting for it"
            )
        else:
            message = (
                f"containerd socket {path} does not exist: is containerd running, and is "
                f"{_WHERE} right? waiting for it"
            )
        return Diagnosis("missing", message, can_heal=True)
    if state is SocketState.REFUSED:
        return Diagnosis(
            "refused",
            f"containerd socket {path} refuses connections: containerd is not running "
            "(or restarting); waiting for it",
            can_heal=True,
        )
    if state is SocketState.PERMISSION:
        return Diagnosis(
            "permission",
            f"permission denied on {path}: run otelbridge as root or give it access to the socket",
            can_heal=False,
        )
    if state is SocketState.NOT_SOCKET:
        return Diagnosis(
            "not_socket",
            f"{path} is not containerd's socket ({detail}): point {_WHERE} at containerd's "
            "socket (usually /run/containerd/containerd.sock)",
            can_heal=False,
        )
    return _unavailable(address, error, detail)


def _unavailable(address: str, error: ContainerdError, detail: str = "") -> Diagnosis:
    # the socket accepts connections (or is not a unix socket we can look at) and the
    # call still failed: containerd starting, overloaded, or a network address down
    why = f"{error}" + (f" ({detail})" if detail else "")
    return Diagnosis(
        "unavailable",
        f"containerd at {address} is not usable yet: {why}; retrying",
        can_heal=True,
    )


__all__ = ["Diagnosis", "SocketState", "diagnose", "probe_socket"]
