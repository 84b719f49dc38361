"""Sockets in a container's network namespace: where readiness probes connect from.

A readiness target is written by the tenant; probed from the node it would reach the
node's own loopback (and tell which ports are open), while a container serving on its own
127.0.0.1 would never be found ready. So every probe socket is created inside
``/proc/<pid>/ns/net`` of the container's init process: a socket belongs to the network
namespace it was created in, whatever the thread does afterwards. Python 3.11 has no
``os.setns``, so one helper thread calls ``setns(2)`` through ctypes, creates the socket,
and returns to the bridge's own namespace (saved as an fd when it starts); a helper that
cannot return is never used again. Nothing ever falls back to the node's namespace.

Needs, in a DaemonSet: the host's PID namespace (``hostPID``), ``CAP_SYS_ADMIN`` (setns)
and read access to other processes' ``/proc/<pid>/ns`` (root, or ``CAP_SYS_PTRACE``);
without them every attempt fails with the reason, and the probe ends ``not_ready``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import queue
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import NamedTuple

_log = logging.getLogger(__name__)

_HELPER_JOIN_TIMEOUT_S = 1.0
_CLONE_NEWNET = 0x40000000  # <sched.h>: setns() must find a network namespace


SocketFactory = Callable[[int, int], Awaitable[socket.socket]]
"""``(pid, family) -> socket``: a new non-blocking, unconnected TCP socket of address
``family`` in the network namespace of process ``pid``; raises ``OSError`` (e.g.
:class:`NamespaceUnavailable`) saying why it cannot. Awaited on an event loop."""


class NamespaceUnavailable(OSError):
    """A probe socket cannot be created in the container's network namespace (the pid is
    unknown, the process is gone, no permission): the attempt fails; the node's own
    namespace is never used instead."""


class _Job(NamedTuple):
    pid: int
    family: int
    future: concurrent.futures.Future[socket.socket]


class ContainerNetns:
    """The default :data:`SocketFactory`: sockets created in ``/proc/<pid>/ns/net``.

    One helper thread does every ``setns``: enter the container's namespace, create the
    socket, return to the bridge's own (the namespace :meth:`start` was called in, kept
    as a file descriptor). Only that thread ever changes namespace, and it runs nothing
    else, so no other code can run in a tenant's namespace. A helper that cannot return
    logs, starts its replacement and ends. When the bridge's own namespace cannot be
    opened or entered, every call fails (never a socket in some other namespace).

    Contract: :meth:`start` once, before the first call; calls (awaited on any event
    loop) are then handled one at a time in order; :meth:`shutdown` (idempotent, any
    thread but the helper) fails the calls still queued.
    """

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards what follows
        self._home: int | None = None
        self._helper: threading.Thread | None = None
        self._broken = ""  # why no socket can be made at all
        self._started = False
        self._closed = False

    def start(self) -> None:
        """Saves the bridge's network namespace and starts the helper. Never raises: a
        failure is logged and fails every call. Idempotent."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            try:
                self._home = os.open(f"{self._proc}/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                self._fail(f"cannot open the bridge's own network namespace: {exc}")
                return
            self._spawn()

    def shutdown(self) -> None:
        """Stops the helper and fails the calls still waiting for it. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            helper, home = self._helper, self._home
            self._jobs.put(None)
        if helper is not None:
            helper.join(_HELPER_JOIN_TIMEOUT_S)
            if helper.is_alive():  # stuck in a syscall: it may still need the fd to return
                _log.error("the probe namespace helper did not stop")
                return
        with self._lock:
            self._drain("the probe source is shut down")
            if home is not None:
                os.close(home)
                self._home = None

    async def __call__(self, pid: int, family: int) -> socket.socket:
        if pid <= 0:
            raise NamespaceUnavailable(
                "the container's pid is unknown: its network namespace cannot be entered"
            )
        future: concurrent.futures.Future[socket.socket] = concurrent.futures.Future()
        with self._lock:
            if self._broken or self._closed or not self._started:
                raise NamespaceUnavailable(self._broken or "the namespace helper is not running")
            self._jobs.put(_Job(pid, family, future))
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(_close_result)  # made after we stopped waiting
            raise

    # -- the helper thread ---------------------------------------------------------------
    def _spawn(self) -> None:  # under the lock
        self._helper = threading.Thread(target=self._work, name="otelbridge-netns", daemon=True)
        self._helper.start()

    def _fail(self, reason: str) -> None:  # under the lock
        _log.error("readiness probes cannot run: %s", reason)
        self._broken = reason
        self._drain(reason)

    def _drain(self, reason: str) -> None:  # under the lock
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(NamespaceUnavailable(reason))

    def _work(self) -> None:
        home = self._home
        assert home is not None
        try:
            # a replacement starts in the namespace its failed predecessor was left in
            _setns(home)
        except OSError as exc:
            with self._lock:
                self._fail(f"cannot enter the bridge's own network namespace: {exc}")
            return
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller stopped waiting
            try:
                job.future.set_result(self._create(job.pid, job.family, home))
            except _Stranded as stranded:
                if stranded.sock is not None:  # made in the right namespace: usable
                    job.future.set_result(stranded.sock)
                else:
                    job.future.set_exception(NamespaceUnavailable(str(stranded.error)))
                _log.error(
                    "the probe namespace helper could not return to the bridge's network "
                    "namespace (%s): it is replaced",
                    stranded.error,
                )
                with self._lock:
                    if not self._closed:
                        self._spawn()
                return
            except OSError as exc:
                job.future.set_exception(exc)
            except BaseException as exc:  # a bug: the caller learns of it, the helper lives
                job.future.set_exception(exc)

    def _create(self, pid: int, family: int, home: int) -> socket.socket:
        """Runs on the helper thread; leaves it in its own namespace unless it raises
        :class:`_Stranded`."""
        try:
            fd = os.open(f"{self._proc}/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise NamespaceUnavailable(
                f"the container's process {pid} is gone: its network namespace cannot be entered"
            ) from None
        except OSError as exc:
            raise NamespaceUnavailable(
                f"cannot open the network namespace of process {pid}: {exc.strerror}"
            ) from None
        try:
            _setns(fd)  # a failed setns leaves the thread where it was
        except OSError as exc:
            raise NamespaceUnavailable(
                f"cannot enter the network namespace of process {pid}: {exc.strerror}"
            ) from None
        finally:
            with contextlib.suppress(OSError):  # nothing may skip the way home below
                os.close(fd)
        sock: socket.socket | None = None
        error: BaseException | None = None
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
        except BaseException as exc:
            error = exc
        try:
            _setns(home)
        except OSError as exc:
            if sock is None:
                raise _Stranded(None, exc) from error
            raise _Stranded(sock, exc) from None
        if error is not None:
            raise error
        assert sock is not None
        return sock


class _Stranded(Exception):
    """The helper could not return home (``sock`` may still be good)."""

    def __init__(self, sock: socket.socket | None, error: OSError) -> None:
        super().__init__(str(error))
        self.sock = sock
        self.error = error


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    """Moves the calling thread into the network namespace ``fd`` refers to (Python 3.11
    has no ``os.setns``)."""
    if _libc().setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _close_result(future: concurrent.futures.Future[socket.socket]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
