"""The ``probe`` readiness source: ready when the container's target answers.

A container names its target in its ``otelbridge.io/readiness`` label or annotation
(:attr:`~otelbridge.core.model.ContainerInfo.readiness`):

* ``tcp://HOST:PORT``: ready when a connection is accepted;
* ``http://HOST:PORT[/PATH][?QUERY]``: ready when ``GET PATH`` answers with a status
  from 200 to 399, as a Kubernetes ``httpGet`` probe.

Where it is probed (PRODUCT.md section 8, security): ALWAYS from inside the container's
own network namespace, never the node's. The target is written by a tenant: probed from
the node, ``tcp://127.0.0.1:PORT`` would tell the tenant which of the node's loopback
ports are open (the span's outcome), and a container serving on its own ``127.0.0.1``
would never be found ready. So every probe socket is created in ``/proc/<pid>/ns/net``
of the container's init process (:attr:`ReadinessRequest.pid`) by
:class:`ContainerNetns`: one helper thread enters that namespace (``setns``), creates the
socket (a socket stays in the namespace it was created in) and returns to the bridge's
own namespace, saved as a file descriptor at start; the socket is then connected from
the probe thread's event loop. A helper thread that cannot return is never used again:
it is logged and replaced. When the pid is unknown (0) or its namespace cannot be entered
(the process is gone, no permission), the attempt fails saying why and the probe ends
``not_ready`` at its deadline: there is no fall-back to the node's namespace. A
host-network container shares the node's namespace, so its probes reach the node's
ports, as they would from inside it. Entering a namespace takes ``CAP_SYS_ADMIN`` and the
containers' pids as the bridge sees them (the host's PID namespace). Host names other
than IP literals are resolved with the bridge's own resolver (asyncio's default
executor); only the connection is made from the container's namespace. What remains is
pid reuse: should the container's process die and its pid go to another process before
the exit event cancels the probe (milliseconds), one attempt could start there.

Threads: :meth:`ProbeSource.watch` and :meth:`ProbeSource.cancel` are called on the
pipeline's event thread and only hand the request to the probe thread (they never block).
Every probe runs on that ONE thread, in an asyncio event loop started by
:meth:`ProbeSource.start`: thousands of waiting probes cost a task each, not a thread
each. A global semaphore (``max_concurrent_probes``) bounds the attempts in flight, so a
burst of pods cannot flood the node with connections.

Time: every moment reported (:attr:`~otelbridge.core.model.ReadySignal.at_ns`, taken when
an attempt succeeded: the connection was accepted, or the status line arrived) and every
deadline (:attr:`ReadinessRequest.deadline_ns`) is in the time of the injected
:class:`~otelbridge.core.clock.Clock`, and the pause between attempts is the injected
``sleep``; tests advance a fake clock instead of sleeping. The reported moment is off by
at most about one ``probe_interval_s`` plus the attempt's own latency. One attempt's own
timeout (``probe_timeout_s``: a server that accepts and never answers) and the wait for a
free slot are bounded in real time (the loop's), by the timeout and by what the clock
says is left before the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from otelbridge import __version__
from otelbridge.core import semconv
from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.config import ReadinessConfig
from otelbridge.core.counters import Counters
from otelbridge.core.limits import MAX_READINESS_TARGET
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerInfo, ContainerKey, ReadySignal
from otelbridge.readiness import SOURCE_PROBE, ReadinessRequest, Report
from otelbridge.readiness.netns import ContainerNetns, SocketFactory

__all__ = [
    "DEADLINE_REASON",
    "ProbeSource",
    "ProbeTarget",
    "Sleep",
    "parse_target",
]

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)

_NS = 1_000_000_000

DEADLINE_REASON = "probe did not succeed by its deadline"
"""The ``reason`` of the not-ok verdict given at a request's deadline."""

_SCHEMES = ("tcp", "http")
# a tenant writes the target: printable ASCII without spaces only, so nothing it holds
# can smuggle a header or a second request line into the probe's GET
_TARGET_CHARS = re.compile(r"[\x21-\x7e]+")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_LINE_LIMIT = 8 * 1024  # longest status or header line read from a probed server
_MAX_INTERIM = 5  # 1xx interim responses skipped before the final status
_DRAIN_LIMIT = 10 * 1024  # body read before closing (as the kubelet), so it is not reset
_JOIN_TIMEOUT_S = 5.0
_UNWIND_TIMEOUT_S = 1.0

Sleep = Callable[[float], Awaitable[None]]
"""Pauses the probe for so many seconds of the source's clock (``asyncio.sleep``)."""


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A parsed readiness target. ``path`` (http only) is the request target: the path,
    ``/`` at least, with its query."""

    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def authority(self) -> str:
        """``HOST:PORT`` as the ``Host`` header writes it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def parse_target(text: str) -> ProbeTarget:
    """Parses ``tcp://HOST:PORT`` or ``http://HOST:PORT[/PATH]``; raises ``ValueError``
    saying what is wrong. The port is required; credentials, fragments and a path on a
    tcp target are refused. Pure; any thread."""
    if not text or len(text) > MAX_READINESS_TARGET:
        raise ValueError("empty or too long")
    if not _TARGET_CHARS.fullmatch(text):
        raise ValueError("contains spaces, control or non-ASCII characters")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a bad port or a bad IPv6 literal
        raise ValueError(str(exc)) from exc
    if parts.scheme not in _SCHEMES:
        raise ValueError("the scheme must be tcp:// or http://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials are not allowed")
    host = parts.hostname or ""
    if not host:
        raise ValueError("no host")
    if not _valid_host(host):
        raise ValueError("the host is neither an IP address nor a host name")
    if not port:  # None (absent) or 0
        raise ValueError("no port")
    if parts.fragment or text.endswith("#"):
        raise ValueError("a fragment is not allowed")
    if parts.scheme == "tcp":
        if parts.path or parts.query or text.endswith("?"):
            raise ValueError("a tcp target has no path")
        return ProbeTarget("tcp", host, port)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return ProbeTarget("http", host, port, path)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST_NAME.fullmatch(host)) and len(host) <= 253


class ProbeSource:
    """Readiness by probing the container's target (see the module docstring).

    Contract (:class:`~otelbridge.readiness.ReadinessSource`): ``applies``, ``watch`` and
    ``cancel`` are called on the pipeline's event thread and never block; ``report`` is
    called on the probe thread, exactly once per watched request unless it is cancelled
    (or superseded by a new ``watch`` of the same container), and never after
    :meth:`shutdown` has returned. ``start`` comes before any ``watch``. ``report``
    should return quickly: while it runs, every probe waits (``Pipeline.offer`` blocks only
    while the pipeline's queue is full).

    ``clock`` gives every reported moment and is the time of ``deadline_ns``; ``sleep``
    pauses between attempts (in that clock's seconds); ``sockets`` makes the probe
    sockets. The defaults (the wall clock, ``asyncio.sleep``, :class:`ContainerNetns`,
    started and stopped with the source) are the product; tests inject a fake clock and
    sleep, and a factory of plain sockets on loopback. An injected factory's lifecycle
    is its owner's.
    """

    name = SOURCE_PROBE

    def __init__(
        self,
        config: ReadinessConfig,
        counters: Counters,
        *,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        sockets: SocketFactory | None = None,
    ) -> None:
        self._config = config
        self._counters = counters
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._sleep: Sleep = sleep if sleep is not None else asyncio.sleep
        self._netns: ContainerNetns | None = None  # ours to start and stop
        if sockets is None:
            sockets = self._netns = ContainerNetns()
        self._sockets: SocketFactory = sockets
        self._interval_ns = int(config.probe_interval_s * _NS)
        self._timeout_s = config.probe_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._slots: asyncio.Semaphore | None = None
        self._attempts = counters.cell(semconv.READINESS_PROBES)  # probe thread only
        # probe thread only: the running probe of each container
        self._probes: dict[ContainerKey, asyncio.Task[None]] = {}
        self._lingering: set[asyncio.Task[None]] = set()  # probe thread only
        # held while a verdict is handed over, so shutdown() can promise that none is
        # handed over after it returns (reentrant: a report may end in shutdown())
        self._report_lock = threading.RLock()
        self._closed = False

    # -- the protocol (event thread) -----------------------------------------------------
    def applies(self, info: ContainerInfo) -> bool:
        """True when probing is enabled and the container names a valid target. A
        malformed target is logged (throttled) and counted, and the container falls
        through to the next source."""
        if not self._config.probe or not info.readiness:
            return False
        try:
            parse_target(info.readiness)
        except ValueError as exc:
            self._counters.inc(semconv.READINESS_INVALID_TARGET)
            _tlog.warning(
                "invalid_target",
                "%s: readiness target %r ignored: %s",
                info.key,
                info.readiness[:100],
                exc,
            )
            return False
        return True

    def watch(self, request: ReadinessRequest, report: Report) -> None:
        """Starts probing ``request.info.readiness`` (hands it to the probe thread).
        After :meth:`shutdown` the request is dropped: nothing may be reported any more.
        Raises ``RuntimeError`` before :meth:`start` (a wiring bug)."""
        loop = self._loop
        if loop is None:
            if self._closed:
                return
            raise RuntimeError("ProbeSource.watch() before start()")
        try:
            loop.call_soon_threadsafe(self._begin, request, report)
        except RuntimeError:  # the loop closed under us: shutdown() is running
            _log.debug("%s: probe dropped, the source is shut down", request.key)

    def cancel(self, key: ContainerKey) -> None:
        """Stops the probe of ``key`` (hands it to the probe thread); nothing is reported."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # closed: nothing is probing any more
            loop.call_soon_threadsafe(self._cancel, key)

    # -- lifecycle (any thread) ----------------------------------------------------------
    def start(self) -> None:
        """Starts the probe thread. Idempotent; does nothing after :meth:`shutdown`."""
        with self._report_lock:
            if self._loop is not None or self._closed:
                return
            loop = asyncio.new_event_loop()
            self._slots = asyncio.Semaphore(self._config.max_concurrent_probes)
            self._thread = threading.Thread(
                target=self._run, args=(loop,), name="otelbridge-probes", daemon=True
            )
            if self._netns is not None:
                self._netns.start()
            # set before the thread runs: watch() may queue work at once, and the loop
            # runs it as soon as it starts
            self._loop = loop
            self._thread.start()

    def shutdown(self) -> None:
        """Stops every probe without a verdict and stops the probe thread. Waits for a
        verdict being handed over right now, then no verdict is handed over any more.
        Idempotent; works without :meth:`start`."""
        with self._report_lock:
            if self._closed:
                return
            self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop died already
            loop.call_soon_threadsafe(self._stop_all)
        if thread is threading.current_thread():
            return  # a report called shutdown(): the loop stops once it returns
        thread.join(_JOIN_TIMEOUT_S)
        if thread.is_alive():
            _log.error("the probe thread did not stop in %.1fs", _JOIN_TIMEOUT_S)

    # -- the probe thread ----------------------------------------------------------------
    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(_log_loop_error)
        try:
            loop.run_forever()
            # shutdown: the cancelled probes unwind (close their sockets) before the
            # loop closes
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=_UNWIND_TIMEOUT_S))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:
            _log.exception("the probe thread failed")
        finally:
            # close() does not wait for the executor's threads: a name lookup hanging
            # in one must not hold shutdown up
            loop.close()
            if self._netns is not None:  # no probe is left to make a socket
                self._netns.shutdown()

    def _stop_all(self) -> None:
        for task in (*self._probes.values(), *self._lingering):
            task.cancel()
        self._probes.clear()
        asyncio.get_running_loop().stop()

    def _begin(self, request: ReadinessRequest, report: Report) -> None:
        if self._closed:
            return
        previous = self._probes.pop(request.key, None)
        if previous is not None:  # a new attempt of the container supersedes the old
            previous.cancel()
        task = asyncio.get_running_loop().create_task(
            self._probe(request, report), name=f"probe {request.key}"
        )
        self._probes[request.key] = task
        task.add_done_callback(lambda t: self._forget(request.key, t))

    def _forget(self, key: ContainerKey, task: asyncio.Task[None]) -> None:
        if self._probes.get(key) is task:
            del self._probes[key]

    def _cancel(self, key: ContainerKey) -> None:
        task = self._probes.pop(key, None)
        if task is not None:
            task.cancel()

    def _deliver(self, report: Report, signal: ReadySignal) -> None:
        """Hands a verdict over, unless shutdown() has begun (then it must not be)."""
        with self._report_lock:
            if self._closed:
                return
            try:
                report(signal)
            except Exception:  # the receiver's bug must not kill the probe thread
                _log.exception("%s: handing over the readiness verdict failed", signal.key)

    async def _probe(self, request: ReadinessRequest, report: Report) -> None:
        """Attempts until one succeeds or the deadline (of the clock); reports once.
        Cancellation (cancel, supersession, shutdown) ends it without a report."""
        key, attempt, deadline_ns = request.key, request.attempt, request.deadline_ns
        last = "no attempt"
        tries = 0
        try:
            target = parse_target(request.info.readiness)
            while (began := self._clock.now_ns()) < deadline_ns:
                tries += 1
                at_ns, last = await self._attempt(target, request.pid, deadline_ns)
                if at_ns is not None:
                    signal = ReadySignal(key, attempt, at_ns, SOURCE_PROBE, ok=True)
                    self._deliver(report, signal)
                    return
                # attempts start every interval (a slow attempt is followed at once);
                # the last pause ends at the deadline, not after it
                wake_ns = min(began + self._interval_ns, deadline_ns)
                now = self._clock.now_ns()
                if wake_ns > now:
                    await self._sleep((wake_ns - now) / _NS)
        except Exception as exc:  # a bug costs this probe, never the probe thread
            self._counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "bug", "%s: readiness probe failed", key, exc_info=True)
            signal = ReadySignal(
                key,
                attempt,
                self._clock.now_ns(),
                SOURCE_PROBE,
                ok=False,
                reason=f"probe failed: {exc}",
            )
            self._deliver(report, signal)
            return
        _tlog.info(
            "deadline",
            "%s: readiness probe of %s gave up after %d attempt(s); last: %s",
            key,
            request.info.readiness[:100],
            tries,
            last,
        )
        signal = ReadySignal(
            key, attempt, deadline_ns, SOURCE_PROBE, ok=False, reason=DEADLINE_REASON
        )
        self._deliver(report, signal)

    def _left_s(self, deadline_ns: int) -> float:
        return (deadline_ns - self._clock.now_ns()) / _NS

    async def _attempt(
        self, target: ProbeTarget, pid: int, deadline_ns: int
    ) -> tuple[int | None, str]:
        """One attempt from the network namespace of ``pid``: (the moment it succeeded,
        or None; what happened). Waits for a slot first; neither the wait nor the
        attempt outlasts the deadline."""
        assert self._slots is not None
        try:
            async with asyncio.timeout(max(0.0, self._left_s(deadline_ns))):
                await self._slots.acquire()
        except TimeoutError:
            return None, "no probe slot was free before the deadline"
        try:
            self._attempts.value += 1
            limit_s = min(self._timeout_s, max(0.0, self._left_s(deadline_ns)))
            async with asyncio.timeout(limit_s):
                if target.scheme == "tcp":
                    return await self._tcp(target, pid)
                return await self._http(target, pid)
        except TimeoutError:
            return None, f"no answer within {limit_s:.3g}s"
        except (OSError, EOFError, ValueError) as exc:  # refused, reset, no namespace
            return None, f"{type(exc).__name__}: {exc}"
        finally:
            self._slots.release()

    async def _connect(self, target: ProbeTarget, pid: int) -> socket.socket:
        """A socket connected to ``target`` from the network namespace of ``pid``,
        trying each address of a host name in turn."""
        loop = asyncio.get_running_loop()
        try:
            ip = ipaddress.ip_address(target.host)
            addresses: list[tuple[int, Any]] = [
                (socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (target.host, target.port))
            ]
        except ValueError:  # a name: resolved by the bridge, connected from the container
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
            addresses = [(info[0], info[4]) for info in infos]
        error: OSError = OSError(f"{target.host} has no address")
        for family, address in addresses:
            sock = await self._sockets(pid, family)
            try:
                sock.setblocking(False)  # sock_connect needs it, whoever made the socket
                await loop.sock_connect(sock, address)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:  # cancelled (a timeout): the socket must not leak
                sock.close()
                raise
        raise error

    async def _tcp(self, target: ProbeTarget, pid: int) -> tuple[int | None, str]:
        sock = await self._connect(target, pid)
        at_ns = self._clock.now_ns()
        sock.close()
        return at_ns, "connected"

    async def _http(self, target: ProbeTarget, pid: int) -> tuple[int | None, str]:
        sock = await self._connect(target, pid)
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=_LINE_LIMIT)
        except BaseException:
            sock.close()
            raise
        answered = False
        try:
            request = (
                f"GET {target.path} HTTP/1.1\r\n"
                f"Host: {target.authority}\r\n"
                f"User-Agent: otelbridge-probe/{__version__}\r\n"
                "Accept: */*\r\n"
                "Connection: close\r\n"
                "\r\n"
            )
            writer.write(request.encode("ascii"))
            await writer.drain()
            for _ in range(_MAX_INTERIM + 1):
                status = _status(await reader.readline())
                at_ns = self._clock.now_ns()
                if status is None:
                    return None, "no HTTP status line"
                if status >= 200:
                    break
                while (await reader.readline()).strip():  # the interim response's headers
                    pass
            else:
                return None, "too many interim responses"
            answered = True
            self._linger(reader, writer)
            if status < 400:
                return at_ns, f"HTTP {status}"
            return None, f"HTTP {status}"
        finally:
            if not answered:
                writer.close()

    def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads the rest of a response, then closes, apart from the attempt: the verdict
        must not wait for it (nor be lost to the deadline while it runs)."""
        task = asyncio.get_running_loop().create_task(_drain(reader, writer, self._timeout_s))
        self._lingering.add(task)  # a strong reference until it is done
        task.add_done_callback(self._lingering.discard)


async def _drain(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit_s: float
) -> None:
    # the kubelet reads the body too: closing with unread data would reset the connection,
    # and the server might log that as an error
    try:
        with contextlib.suppress(TimeoutError, OSError, ValueError, EOFError):
            async with asyncio.timeout(limit_s):
                left = _DRAIN_LIMIT
                while left > 0:
                    chunk = await reader.read(left)
                    if not chunk:
                        break
                    left -= len(chunk)
    finally:
        writer.close()


def _status(line: bytes) -> int | None:
    """The status code of an HTTP/1.x status line; None if it is not one."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return None
    code = parts[1]
    if len(code) != 3 or not code.isdigit() or code < b"100":
        return None
    return int(code)


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    _tlog.log(logging.ERROR, "loop", "probe thread: %s", context.get("message"))
