"""containerd's event stream and container records on one HTTP/2 connection, read by the
event thread itself.

gRPC's Python client reads a stream on threads of its own (its C core's event engine
and the thread iterating the call), and each event then crosses to the event thread: on
a small node that is three thread wake-ups per containerd event, most of the bridge's
CPU (issue 12). :class:`EventConnection` speaks the little of gRPC the hot path needs,
``Events/Subscribe`` and ``Containers/Get``, as streams of one HTTP/2 connection over
the unix socket (:mod:`otelbridge.containerd.http2` keeps the protocol's state), without
a thread: the
event thread waits on :meth:`EventConnection.fileno` with its other inputs and calls
:meth:`EventConnection.read` when the socket is readable.

What it keeps of gRPC: requests are length-prefixed protobuf messages, uncompressed;
``grpc-status`` of the trailers (or of a trailers-only answer) decides the outcome, and
is translated like the gRPC client's errors (:func:`~otelbridge.containerd.client.status_error`).
Both methods are on the client's read-only allow-list; nothing else can be asked here.

Threads: the source thread opens the connection and subscribes; from the moment it is
handed to the event thread (the runner's ``attach``), only that thread uses it, except
:meth:`EventConnection.cancel`, which any thread may call.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError as ProtobufDecodeError

from otelbridge.containerd._gen import otelbridge_api_pb2 as api
from otelbridge.containerd.http2 import Http2Client, ProtocolError, RequestTooLarge
from otelbridge.containerd.http2 import Stream as Http2Stream
from otelbridge.containerd.methods import M_CONTAINER_GET, M_SUBSCRIBE
from otelbridge.core.errors import ContainerdError, ContainerdUnavailable, MethodNotAllowed
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import RawEnvelope

_PREFIX = struct.Struct(">BI")  # gRPC message framing: compressed flag, length
_READ_SIZE = 256 * 1024
_READS = 16  # at most this many reads per read(): the event thread has other work too
# the receive window: large, so a burst of events is not held up by WINDOW_UPDATEs
_WINDOW = 1 << 20
_NS = 1_000_000_000
_tlog = ThrottledLogger(logging.getLogger(__name__))

GetDone = Callable[[bytes | None, ContainerdError | None], None]
"""Called with a Get's response message (still serialized), or the error that ended it."""


class _Call:
    """One gRPC call on the connection: its response messages reassembled."""

    __slots__ = ("buffer", "done", "messages", "status", "stream", "what")

    def __init__(self, what: str, done: GetDone | None) -> None:
        self.what = what
        self.stream: Http2Stream | None = None
        self.done = done  # None: the subscription, whose messages are envelopes
        self.buffer = bytearray()
        self.messages: list[bytes] = []
        self.status: tuple[int, str] | None = None


class EventConnection:
    """One HTTP/2 connection to containerd (see the module docstring).

    ``status_error(code, message, what)`` turns a non-zero ``grpc-status`` into the
    project's error (the client's translation, shared); ``allowed`` is its allow-list.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        allowed: frozenset[str],
        status_error: Callable[[int, str, str], ContainerdError],
        max_message: int,
        timeout_s: float,
    ) -> None:
        self._sock = sock
        self._allowed = allowed
        self._status_error = status_error
        self._max_message = max_message
        self._timeout_s = timeout_s
        self._http = Http2Client(self, window=_WINDOW)
        self._calls: set[_Call] = set()  # sent, not finished
        self._envelopes: list[RawEnvelope] = []  # completed by the read under way
        self._cancelled = False
        self._ended = False
        self.done = threading.Event()
        """Set once the connection is over: ended by containerd, failed, or cancelled."""
        self.error: ContainerdError | None = None
        """Why the stream ended, when containerd or the socket ended it."""
        self.newest_ns: int | None = None
        """The newest envelope time read (where the next session's listing starts)."""
        self._flush()

    @classmethod
    def open(
        cls,
        path: str,
        *,
        allowed: frozenset[str],
        status_error: Callable[[int, str, str], ContainerdError],
        max_message: int,
        timeout_s: float,
    ) -> EventConnection:
        """Connects to the unix socket ``path``; raises :class:`ContainerdUnavailable`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(path)
            sock.setblocking(False)  # read only when readable; a timeout would wait in recv
            return cls(
                sock,
                allowed=allowed,
                status_error=status_error,
                max_message=max_message,
                timeout_s=timeout_s,
            )
        except OSError as exc:
            sock.close()
            raise ContainerdUnavailable(f"event stream: cannot connect to {path}: {exc}") from exc

    def fileno(self) -> int:
        return self._sock.fileno()

    # -- calls -----------------------------------------------------------------------------
    def subscribe(self, filters: Sequence[str]) -> None:
        """Opens the event subscription (containerd filter syntax)."""
        request = api.SubscribeRequest(filters=list(filters)).SerializeToString()
        self._start(M_SUBSCRIBE, request, "", _Call("event stream", None))

    def get_container(self, namespace: str, container_id: str, done: GetDone) -> None:
        """Asks for one container's record; ``done`` is called from :meth:`read` (or now,
        when the request cannot be sent)."""
        what = f"Containers/Get {namespace}/{container_id}"
        request = api.GetContainerRequest(id=container_id).SerializeToString()
        try:
            self._start(M_CONTAINER_GET, request, namespace, _Call(what, done))
        except ContainerdError as exc:
            done(None, exc)

    def _start(self, method: str, request: bytes, namespace: str, call: _Call) -> None:
        if method not in self._allowed:
            raise MethodNotAllowed(f"containerd method {method} is not on the read-only allow-list")
        if self._ended:
            raise self.error or ContainerdUnavailable(f"{call.what}: the connection is closed")
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", method.encode()),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        if namespace:
            headers.append((b"containerd-namespace", namespace.encode()))
        try:  # sent now, or once containerd's limits (streams, window) let it
            call.stream = self._http.request(headers, _PREFIX.pack(0, len(request)) + request, call)
        except RequestTooLarge as exc:
            raise ContainerdError(f"{call.what}: {exc}") from exc
        except ProtocolError as exc:
            self._end(ContainerdUnavailable(f"event stream: {exc}"))
            raise ContainerdUnavailable(f"{call.what}: {exc}") from exc
        self._calls.add(call)
        self._flush()

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> list[RawEnvelope]:
        """Reads what the socket holds (it does not wait) and returns the envelopes it
        completed; finished Gets are handed to their ``done`` on the way. Once the
        connection is over, :attr:`done` is set and this returns ``[]``."""
        if self._ended:
            return []
        if self._cancelled:  # what is still in the socket is not handed on
            self._end(None)
            return []
        envelopes: list[RawEnvelope] = []
        chunks: list[bytes] = []
        for _ in range(_READS):  # a full read may have left more: take it too
            try:
                chunk = self._sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._end(ContainerdUnavailable(f"event stream: {exc}"))
                return envelopes
            if not chunk:
                if not chunks:
                    closed = "event stream: containerd closed the connection"
                    self._end(ContainerdUnavailable(closed))
                    return envelopes
                break  # the end is read next time, after what came before it
            chunks.append(chunk)
            if len(chunk) < _READ_SIZE:
                break
        if not chunks:
            return envelopes
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._envelopes = envelopes
        try:
            self._http.receive(data)
        except ProtocolError as exc:
            self._end(ContainerdError(f"event stream: HTTP/2 protocol error: {exc}"))
            return envelopes
        finally:
            self._envelopes = []
        if not self._ended:
            self._flush()
        return envelopes

    # -- the codec's handler (http2.Handler) -------------------------------------------------
    def on_headers(self, tag: object, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        assert isinstance(tag, _Call)
        status = message = None
        for name, value in fields:
            if name == b"grpc-status":
                status = value
            elif name == b"grpc-message":
                message = value
        if status is not None:
            tag.status = (_int(status), _unquote(message) if message else "")
        if end:
            self._finish(tag, None)

    def on_data(self, tag: object, data: bytes, end: bool) -> None:
        assert isinstance(tag, _Call)
        if tag in self._calls:
            self._data(tag, data, self._envelopes)
        if end:
            self._finish(tag, None)

    def on_reset(self, tag: object, code: int) -> None:
        assert isinstance(tag, _Call)
        # this call only: the connection goes on (a Get fails, counted, not retried)
        self._finish(tag, ContainerdError(f"{tag.what}: reset by containerd (HTTP/2 error {code})"))

    def on_goaway(self, code: int, debug: bytes) -> None:
        why = f" ({debug.decode('utf-8', 'replace')})" if debug else ""
        self._end(ContainerdUnavailable(f"event stream: containerd ended the connection{why}"))

    def _data(self, call: _Call, data: bytes, envelopes: list[RawEnvelope]) -> None:
        buffer = call.buffer
        buffer += data
        while len(buffer) >= 5:
            compressed, length = _PREFIX.unpack_from(buffer)
            if compressed or length > self._max_message:
                self._fail_call(call, f"unreadable message ({length} bytes)")
                return
            if len(buffer) < 5 + length:
                return
            message = bytes(buffer[5 : 5 + length])
            del buffer[: 5 + length]
            if call.done is not None:
                call.messages.append(message)
                continue
            try:
                env = api.Envelope.FromString(message)
            except ProtobufDecodeError:
                # one unreadable envelope: handed on empty, the decoder counts it
                envelopes.append(RawEnvelope(0, "", "", "", message))
                continue
            ts = env.timestamp
            timestamp_ns = ts.seconds * _NS + ts.nanos
            if self.newest_ns is None or timestamp_ns > self.newest_ns:
                self.newest_ns = timestamp_ns
            envelopes.append(
                RawEnvelope(
                    timestamp_ns, env.namespace, env.topic, env.event.type_url, env.event.value
                )
            )

    def _fail_call(self, call: _Call, problem: str) -> None:
        if call.stream is not None:
            self._http.cancel(call.stream)
        self._finish(call, ContainerdError(f"{call.what}: {problem}"))

    def _finish(self, call: _Call, error: ContainerdError | None) -> None:
        if call not in self._calls:
            return
        self._calls.discard(call)
        if error is None and call.buffer:
            error = ContainerdError(f"{call.what}: the answer ended inside a message")
        if error is None and call.status is not None and call.status[0] != 0:
            error = self._status_error(call.status[0], call.status[1], call.what)
        if error is None and call.status is None:
            error = ContainerdUnavailable(f"{call.what}: ended without a gRPC status")
        if call.done is None:  # the subscription: its end is the connection's
            self._end(error or ContainerdUnavailable("event stream: ended by containerd"))
            return
        if error is None and len(call.messages) != 1:
            error = ContainerdError(f"{call.what}: {len(call.messages)} messages, not one")
        _answer(call, call.messages[0] if error is None else None, error)

    # -- sending and ending -------------------------------------------------------------------
    def _flush(self) -> None:
        outbound = self._http.outbound
        if not outbound:
            return
        data = bytes(outbound)
        outbound.clear()
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._end(ContainerdUnavailable(f"event stream: {exc}"))
            return
        if sent == len(data):
            return
        # a full socket buffer (containerd is not reading): rare, and our frames are
        # small, so wait for room (at most the call timeout) rather than keep a send queue
        try:
            self._sock.settimeout(self._timeout_s)
            self._sock.sendall(data[sent:])
        except OSError as exc:
            self._end(ContainerdUnavailable(f"event stream: {exc}"))
        finally:
            with contextlib.suppress(OSError):
                self._sock.setblocking(False)

    def _end(self, error: ContainerdError | None) -> None:
        if self._ended:
            return
        self._ended = True
        if not self._cancelled:
            self.error = error
        calls, self._calls = self._calls, set()
        self.done.set()  # before the callbacks: whatever they do, the end is known
        for call in calls:
            if call.done is not None:
                _answer(call, None, error or ContainerdUnavailable(f"{call.what}: cancelled"))

    def cancel(self) -> None:
        """Ends the connection from any thread: :attr:`done` is set now, and the reader
        sees the end at its next read."""
        self._cancelled = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self.done.set()

    def close(self) -> None:
        """Ends pending calls and closes the socket (the thread that reads it)."""
        self._cancelled = True
        self._end(None)
        self._sock.close()


def _answer(call: _Call, response: bytes | None, error: ContainerdError | None) -> None:
    """Hands a Get its outcome; a callback's bug costs that Get, not the connection."""
    assert call.done is not None
    try:
        call.done(response, error)
    except Exception:
        _tlog.log(logging.ERROR, "done", "%s: its callback failed", call.what, exc_info=True)


def _int(value: bytes) -> int:
    """A ``grpc-status``; one that is not a number is UNKNOWN (2)."""
    try:
        return int(value)
    except ValueError:
        return 2


def _unquote(value: bytes) -> str:
    """A ``grpc-message``: percent-encoded UTF-8."""
    from urllib.parse import unquote_to_bytes  # noqa: PLC0415 - errors only

    return unquote_to_bytes(value).decode("utf-8", "replace")


__all__ = ["EventConnection", "GetDone"]
