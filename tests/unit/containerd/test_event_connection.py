"""EventConnection speaks just enough gRPC over one HTTP/2 connection, read without threads.

A fake containerd (an ``h2`` server on the other end of a socket pair) is driven step by
step with the connection: the client sends, the server reads, the server answers, the
client reads. Nothing waits and nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import threading
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest
from google.protobuf import any_pb2, timestamp_pb2

from otelbridge.containerd._gen import otelbridge_api_pb2 as api
from otelbridge.containerd.client import status_error
from otelbridge.containerd.methods import ALLOWED_METHODS, M_CONTAINER_GET, M_SUBSCRIBE
from otelbridge.containerd.stream import EventConnection
from otelbridge.core.errors import (
    ContainerdError,
    ContainerdUnavailable,
    MethodNotAllowed,
    NotFound,
)
from otelbridge.core.model import RawEnvelope

MAX_MESSAGE = 4096
NS = 1_000_000_000
_PREFIX = struct.Struct(">BI")
TYPE_URL = "containerd.events.TaskStart"
PAYLOAD = b"\x0a\x01c"  # TaskStart{container_id: "c"}


def frame(payload: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """One gRPC length-prefixed message (``length`` overrides the announced length)."""
    return _PREFIX.pack(int(compressed), len(payload) if length is None else length) + payload


def envelope(seconds: int, nanos: int = 0, *, topic: str = "/tasks/start") -> bytes:
    return api.Envelope(
        timestamp=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        namespace="k8s.io",
        topic=topic,
        event=any_pb2.Any(type_url=TYPE_URL, value=PAYLOAD),
    ).SerializeToString()


def expected(seconds: int, nanos: int = 0, *, topic: str = "/tasks/start") -> RawEnvelope:
    """The RawEnvelope that ``envelope(seconds, nanos, topic=topic)`` reads as."""
    return RawEnvelope(seconds * NS + nanos, "k8s.io", topic, TYPE_URL, PAYLOAD)


def container(container_id: str) -> bytes:
    response = api.GetContainerResponse(container=api.Container(id=container_id, image="busybox"))
    return response.SerializeToString()


@dataclasses.dataclass
class Request:
    """One call as the fake containerd received it."""

    stream_id: int
    path: bytes
    namespace: bytes | None
    body: bytearray = dataclasses.field(default_factory=bytearray)
    ended: bool = False

    def message(self) -> bytes:
        """The request's one message (its prefix checked)."""
        compressed, length = _PREFIX.unpack_from(self.body)
        assert (compressed, len(self.body)) == (0, 5 + length)
        return bytes(self.body[5:])


class FakeContainerd:
    """The server end: records requests and sends answers in whatever pieces a test picks."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.initiate_connection()
        self.requests: list[Request] = []
        self.resets: list[int] = []
        """Streams the client reset (RST_STREAM received)."""
        self.flush()

    # -- receiving -----------------------------------------------------------------------
    def receive(self) -> None:
        """Reads and handles every frame the client has sent so far."""
        data = bytearray()
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        by_id = {r.stream_id: r for r in self.requests}
        for event in self.h2.receive_data(bytes(data)):
            if isinstance(event, h2.events.RequestReceived):
                fields = dict(event.headers or ())
                request = Request(
                    event.stream_id, fields[b":path"], fields.get(b"containerd-namespace")
                )
                assert fields[b":method"] == b"POST"
                assert fields[b"content-type"] == b"application/grpc"
                self.requests.append(request)
                by_id[event.stream_id] = request
            elif isinstance(event, h2.events.DataReceived):
                by_id[event.stream_id].body += event.data or b""
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                by_id[event.stream_id].ended = True
            elif isinstance(event, h2.events.StreamReset):
                self.resets.append(event.stream_id)
        self.flush()

    def last(self, path: str) -> Request:
        return [r for r in self.requests if r.path == path.encode()][-1]

    # -- sending -------------------------------------------------------------------------
    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def headers(self, stream_id: int, *, status: bytes | None = None, message: bytes = b"") -> None:
        """Response headers; with ``status``, a trailers-only answer that ends the stream."""
        fields = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        if status is not None:
            fields += [(b"grpc-status", status), (b"grpc-message", message)]
        self.h2.send_headers(stream_id, fields, end_stream=status is not None)
        self.flush()

    def data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """``data`` in DATA frames (as few as the frame size allows)."""
        size = self.h2.max_outbound_frame_size
        for start in range(0, len(data), size):
            self.h2.send_data(stream_id, data[start : start + size])
        if end_stream:
            self.h2.end_stream(stream_id)
        self.flush()

    def trailers(self, stream_id: int, status: bytes = b"0", message: bytes = b"") -> None:
        fields = [(b"grpc-status", status)]
        if message:
            fields.append((b"grpc-message", message))
        self.h2.send_headers(stream_id, fields, end_stream=True)
        self.flush()

    def answer(self, stream_id: int, *messages: bytes) -> None:
        """A whole successful answer: headers, the messages, grpc-status 0."""
        self.headers(stream_id)
        self.data(stream_id, b"".join(frame(m) for m in messages))
        self.trailers(stream_id)


class Results:
    """A Get's ``done``: records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes | None, ContainerdError | None]] = []

    def __call__(self, message: bytes | None, error: ContainerdError | None) -> None:
        self.calls.append((message, error))

    @property
    def error(self) -> ContainerdError:
        assert len(self.calls) == 1, self.calls
        message, error = self.calls[0]
        assert message is None
        assert error is not None
        return error


def connect(
    *, allowed: frozenset[str] = ALLOWED_METHODS, max_message: int = MAX_MESSAGE
) -> tuple[EventConnection, FakeContainerd]:
    """A connection and its fake containerd, the HTTP/2 handshake done."""
    client_sock, server_sock = socket.socketpair()
    client_sock.setblocking(False)  # as EventConnection.open leaves it
    conn = EventConnection(
        client_sock,
        allowed=allowed,
        status_error=status_error,
        max_message=max_message,
        timeout_s=1.0,
    )
    server = FakeContainerd(server_sock)
    server.receive()  # the client's preface and settings
    assert conn.read() == []  # the server's settings
    server.receive()  # the client's settings ack
    return conn, server


@pytest.fixture
def pair() -> Iterator[tuple[EventConnection, FakeContainerd]]:
    conn, server = connect()
    yield conn, server
    conn.close()
    server.sock.close()


def subscribed(conn: EventConnection, server: FakeContainerd) -> int:
    """Subscribes and answers with response headers; returns the subscription's stream."""
    conn.subscribe(["namespace==k8s.io"])
    server.receive()
    stream_id = server.last(M_SUBSCRIBE).stream_id
    server.headers(stream_id)
    assert conn.read() == []
    return stream_id


def get(conn: EventConnection, server: FakeContainerd, container_id: str) -> tuple[int, Results]:
    """Sends a Get for ``k8s.io/<container_id>``; returns its stream and its results."""
    results = Results()
    conn.get_container("k8s.io", container_id, results)
    server.receive()
    return server.last(M_CONTAINER_GET).stream_id, results


# -- the subscription ------------------------------------------------------------------------
def test_subscribe_posts_the_filters_to_the_subscribe_method(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """subscribe() sends one POST to Events/Subscribe carrying the filters, no namespace."""
    conn, server = pair
    conn.subscribe(["namespace==k8s.io", 'topic~="/tasks/"'])
    server.receive()
    (request,) = server.requests
    assert request.path == M_SUBSCRIBE.encode()
    assert request.namespace is None
    assert request.ended
    sent = api.SubscribeRequest.FromString(request.message())
    assert list(sent.filters) == ["namespace==k8s.io", 'topic~="/tasks/"']


def test_envelopes_come_back_as_raw_envelopes_and_newest_ns_is_the_max(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """Each envelope becomes a RawEnvelope (ns time, namespace, topic, Any); newest_ns is
    the largest time read, not the last one."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    assert conn.newest_ns is None
    server.data(stream_id, frame(envelope(100, 5)) + frame(envelope(300, 7)))
    server.data(stream_id, frame(envelope(200, topic="/tasks/exit")))
    assert conn.read() == [
        expected(100, 5),
        expected(300, 7),
        expected(200, topic="/tasks/exit"),
    ]
    assert conn.newest_ns == 300 * NS + 7
    assert not conn.done.is_set()


# -- reassembling messages -------------------------------------------------------------------
def test_a_message_split_across_data_frames_and_reads_is_reassembled(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """A message arriving in several DATA frames, each read separately, is handed on once,
    when its last byte has been read."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    message = frame(envelope(42))
    pieces = [message[:3], message[3:10], message[10:-1], message[-1:]]
    for piece in pieces[:-1]:
        server.data(stream_id, piece)
        assert conn.read() == []
    server.data(stream_id, pieces[-1])
    assert conn.read() == [expected(42)]


def test_a_data_frame_split_across_socket_reads_is_reassembled(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """An HTTP/2 frame cut in the middle by the socket is read whole once the rest comes."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    server.h2.send_data(stream_id, frame(envelope(7)))
    raw = server.h2.data_to_send()
    server.sock.sendall(raw[:6])
    assert conn.read() == []
    server.sock.sendall(raw[6:])
    assert conn.read() == [expected(7)]


def test_several_messages_in_one_frame_are_all_handed_on_in_order(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """One DATA frame holding three messages yields three envelopes, in their order."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    server.data(stream_id, b"".join(frame(envelope(s)) for s in (3, 1, 2)))
    assert conn.read() == [expected(3), expected(1), expected(2)]


def test_a_prefix_split_inside_its_five_bytes_waits_for_the_rest(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """A message whose 5-byte prefix is cut after 2 bytes (after a whole message) is read
    when the rest of the prefix and the body arrive."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    second = frame(envelope(2))
    server.data(stream_id, frame(envelope(1)) + second[:2])
    assert conn.read() == [expected(1)]
    server.data(stream_id, second[2:4])
    assert conn.read() == []
    server.data(stream_id, second[4:])
    assert conn.read() == [expected(2)]


def test_a_long_subscription_keeps_the_flow_control_windows_open() -> None:
    """Reading acknowledges the data: more than the initial stream and connection windows
    (1 MiB + 64 KiB) pass without the server ever running out of window."""
    conn, server = connect(max_message=1 << 16)
    try:
        stream_id = subscribed(conn, server)
        big = api.Envelope(
            timestamp=timestamp_pb2.Timestamp(seconds=1),
            event=any_pb2.Any(type_url=TYPE_URL, value=b"x" * 30_000),
        ).SerializeToString()
        for _ in range(45):  # ~1.35 MB in all
            server.data(stream_id, frame(big))  # h2 raises FlowControlError without window
            (env,) = conn.read()
            assert len(env.payload) == 30_000
            server.receive()
        assert server.h2.local_flow_control_window(stream_id) > 1 << 19
    finally:
        conn.close()
        server.sock.close()


# -- Containers/Get --------------------------------------------------------------------------
def test_get_sends_the_namespace_header_and_the_container_id(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """get_container POSTs to Containers/Get with containerd-namespace and the id."""
    conn, server = pair
    get(conn, server, "c1")
    request = server.last(M_CONTAINER_GET)
    assert request.namespace == b"k8s.io"
    assert request.ended
    assert api.GetContainerRequest.FromString(request.message()).id == "c1"


def test_get_done_receives_the_serialized_response(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """done is called once, from read(), with the response message still serialized."""
    conn, server = pair
    stream_id, results = get(conn, server, "c1")
    assert results.calls == []
    server.answer(stream_id, container("c1"))
    assert conn.read() == []
    assert results.calls == [(container("c1"), None)]
    assert not conn.done.is_set()


def test_two_gets_answered_out_of_order_each_reach_their_own_done(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """Two Gets in flight, answered second-first with interleaved frames: each done gets
    its own container."""
    conn, server = pair
    first, first_results = get(conn, server, "c1")
    second, second_results = get(conn, server, "c2")
    assert first != second
    server.headers(second)
    server.headers(first)
    body_1, body_2 = frame(container("c1")), frame(container("c2"))
    server.data(second, body_2[:4])
    server.data(first, body_1[:9])
    server.data(second, body_2[4:])
    server.trailers(second)
    assert conn.read() == []
    assert second_results.calls == [(container("c2"), None)]
    assert first_results.calls == []
    server.data(first, body_1[9:])
    server.trailers(first)
    conn.read()
    assert first_results.calls == [(container("c1"), None)]


# -- errors of one call ----------------------------------------------------------------------
def test_trailers_only_not_found_is_not_found_with_the_message_decoded(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """A trailers-only answer with grpc-status 5 fails the Get with NotFound; the
    percent-encoded grpc-message is decoded (UTF-8 included)."""
    conn, server = pair
    stream_id, results = get(conn, server, "c1")
    server.headers(
        stream_id, status=b"5", message=b"container%20%22c1%22%3A%20not%20found%20%C3%A9"
    )
    conn.read()
    error = results.error
    assert isinstance(error, NotFound)
    assert 'container "c1": not found é' in str(error)
    assert "Containers/Get k8s.io/c1" in str(error)
    assert not conn.done.is_set()


def test_status_unavailable_in_the_trailers_is_containerd_unavailable(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """grpc-status 14 in the trailers (after headers) fails the Get as ContainerdUnavailable."""
    conn, server = pair
    stream_id, results = get(conn, server, "c1")
    server.headers(stream_id)
    server.trailers(stream_id, b"14", b"shutting%20down")
    conn.read()
    assert isinstance(results.error, ContainerdUnavailable)
    assert "shutting down" in str(results.error)


def test_a_grpc_status_that_is_not_a_number_is_unknown(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """A non-numeric grpc-status is UNKNOWN: a plain ContainerdError, even with a message."""
    conn, server = pair
    stream_id, results = get(conn, server, "c1")
    server.headers(stream_id)
    server.data(stream_id, frame(container("c1")))
    server.trailers(stream_id, b"ok")
    conn.read()
    assert type(results.error) is ContainerdError
    assert "UNKNOWN" in str(results.error)


def test_a_get_ending_without_grpc_status_fails(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """A stream that ends (END_STREAM on DATA) with no grpc-status is not a success, even
    with one whole message: ContainerdUnavailable."""
    conn, server = pair
    stream_id, results = get(conn, server, "c1")
    server.headers(stream_id)
    server.data(stream_id, frame(container("c1")), end_stream=True)
    conn.read()
    assert isinstance(results.error, ContainerdUnavailable)
    assert "without a gRPC status" in str(results.error)


@pytest.mark.parametrize("count", [0, 2])
def test_a_get_answered_with_other_than_one_message_fails(
    pair: tuple[EventConnection, FakeContainerd], count: int
) -> None:
    """A unary Get answered with zero or two messages (and status 0) fails with a
    ContainerdError naming the count."""
    conn, server = pair
    stream_id, results = get(conn, server, "c1")
    server.answer(stream_id, *[container("c1")] * count)
    conn.read()
    assert type(results.error) is ContainerdError
    assert f"{count} messages, not one" in str(results.error)


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        (frame(b"", compressed=True, length=10), "compressed"),
        (frame(b"", length=MAX_MESSAGE + 1), "oversized"),
    ],
)
def test_an_unreadable_message_fails_that_get_only(
    pair: tuple[EventConnection, FakeContainerd], prefix: bytes, problem: str
) -> None:
    """A compressed-flag or over-max_message prefix fails that Get at once (before the body
    arrives) and resets its stream; the rest of its answer is ignored, and the
    subscription and later Gets carry on."""
    conn, server = pair
    subscription = subscribed(conn, server)
    stream_id, results = get(conn, server, "c1")
    server.headers(stream_id)
    server.data(stream_id, prefix + b"x" * 8)
    assert conn.read() == []
    assert type(results.error) is ContainerdError, problem
    assert "Containers/Get k8s.io/c1: unreadable message" in str(results.error)
    # the server, not yet aware of the reset, sends more of its answer: ignored
    server.data(stream_id, b"y" * 100)
    server.data(subscription, frame(envelope(9)))
    assert conn.read() == [expected(9)]
    server.receive()
    assert server.resets == [stream_id]
    assert len(results.calls) == 1
    later, later_results = get(conn, server, "c2")
    server.answer(later, container("c2"))
    conn.read()
    assert later_results.calls == [(container("c2"), None)]
    assert not conn.done.is_set()


def test_a_message_of_exactly_max_message_is_accepted(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """max_message is inclusive: a response of exactly that many bytes is handed on
    (still serialized: the connection does not parse a Get's answer)."""
    conn, server = pair
    stream_id, results = get(conn, server, "c1")
    padded = b"x" * MAX_MESSAGE
    server.answer(stream_id, padded)
    conn.read()
    assert results.calls == [(padded, None)]


def test_a_malformed_envelope_is_handed_on_empty_and_the_stream_goes_on(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """An envelope protobuf cannot parse becomes RawEnvelope(0, "", "", "", raw bytes) for
    the decoder to count; newest_ns ignores it and the next envelopes still flow."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    bad = b"\x0a\xff\x01"  # field 1 claims 255 bytes that are not there
    server.data(stream_id, frame(envelope(5)) + frame(bad))
    assert conn.read() == [expected(5), RawEnvelope(0, "", "", "", bad)]
    server.data(stream_id, frame(envelope(6)))
    assert conn.read() == [expected(6)]
    assert conn.newest_ns == 6 * NS
    assert not conn.done.is_set()


def test_rst_stream_on_a_get_fails_that_get_only(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """RST_STREAM from containerd fails that Get (a ContainerdError, not Unavailable:
    the lookups would take that for the connection's end), not the connection."""
    conn, server = pair
    subscription = subscribed(conn, server)
    stream_id, results = get(conn, server, "c1")
    server.headers(stream_id)
    server.h2.reset_stream(stream_id, error_code=8)
    server.flush()
    conn.read()
    assert type(results.error) is ContainerdError
    assert "reset by containerd" in str(results.error)
    server.data(subscription, frame(envelope(1)))
    assert conn.read() == [expected(1)]
    assert not conn.done.is_set()


# -- the end of the connection ---------------------------------------------------------------
def test_goaway_ends_the_connection_and_fails_pending_gets(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """GOAWAY: done is set, error is ContainerdUnavailable, pending Gets get an error."""
    conn, server = pair
    subscribed(conn, server)
    _, results = get(conn, server, "c1")
    server.h2.close_connection()
    server.flush()
    assert conn.read() == []
    assert conn.done.is_set()
    assert isinstance(conn.error, ContainerdUnavailable)
    assert isinstance(results.error, ContainerdUnavailable)


def test_the_server_closing_the_socket_ends_the_connection(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """EOF on the socket: done is set, error is ContainerdUnavailable, pending Gets fail."""
    conn, server = pair
    subscribed(conn, server)
    _, results = get(conn, server, "c1")
    server.sock.close()
    assert conn.read() == []
    assert conn.done.is_set()
    assert isinstance(conn.error, ContainerdUnavailable)
    assert "closed the connection" in str(conn.error)
    assert isinstance(results.error, ContainerdUnavailable)


def test_envelopes_read_with_the_eof_come_first_and_the_end_next(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """Data followed by EOF: the read returns the envelopes; the end is seen at the next."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    server.data(stream_id, frame(envelope(1)))
    server.sock.close()
    assert conn.read() == [expected(1)]
    assert conn.read() == []
    assert conn.done.is_set()
    assert isinstance(conn.error, ContainerdUnavailable)


def test_the_subscription_ending_with_status_0_ends_the_connection(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """The subscription's end, even a clean grpc-status 0, is the connection's end:
    ContainerdUnavailable, and pending Gets fail."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    _, results = get(conn, server, "c1")
    server.data(stream_id, frame(envelope(1)))
    server.trailers(stream_id, b"0")
    assert conn.read() == [expected(1)]
    assert conn.done.is_set()
    assert isinstance(conn.error, ContainerdUnavailable)
    assert "ended by containerd" in str(conn.error)
    assert isinstance(results.error, ContainerdUnavailable)
    assert conn.read() == []


def test_the_subscription_failing_ends_the_connection_with_its_status(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """A non-zero grpc-status on the subscription is translated into the connection's
    error (here NotFound), as the gRPC client would."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    server.trailers(stream_id, b"5", b"no%20namespace")
    conn.read()
    assert isinstance(conn.error, NotFound)
    assert "event stream" in str(conn.error)


def test_an_http2_protocol_error_ends_the_connection(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """Bytes that are not HTTP/2 (a DATA frame on stream 0) end the connection with a
    ContainerdError."""
    conn, server = pair
    subscribed(conn, server)
    server.sock.sendall(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    assert conn.read() == []
    assert conn.done.is_set()
    assert isinstance(conn.error, ContainerdError)
    assert "protocol error" in str(conn.error)


# -- the allow-list and calls after the end --------------------------------------------------
def test_subscribe_outside_the_allow_list_raises_and_sends_nothing() -> None:
    """With Subscribe off the allow-list, subscribe() raises MethodNotAllowed and no request
    leaves the process."""
    conn, server = connect(allowed=frozenset({M_CONTAINER_GET}))
    try:
        with pytest.raises(MethodNotAllowed):
            conn.subscribe([])
        server.receive()
        assert server.requests == []
    finally:
        conn.close()
        server.sock.close()


def test_get_outside_the_allow_list_is_refused_through_done() -> None:
    """With Get off the allow-list, get_container sends nothing and calls done at once
    with MethodNotAllowed."""
    conn, server = connect(allowed=frozenset({M_SUBSCRIBE}))
    try:
        results = Results()
        conn.get_container("k8s.io", "c1", results)
        assert isinstance(results.error, MethodNotAllowed)
        server.receive()
        assert server.requests == []
    finally:
        conn.close()
        server.sock.close()


def test_get_after_the_end_calls_done_with_the_error_instead_of_raising(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """Once the connection is over, get_container calls done now with the connection's
    error, and subscribe raises it."""
    conn, server = pair
    subscribed(conn, server)
    server.sock.close()
    conn.read()
    results = Results()
    conn.get_container("k8s.io", "c1", results)
    assert results.error is conn.error
    with pytest.raises(ContainerdUnavailable):
        conn.subscribe([])


def test_get_after_close_calls_done_with_unavailable(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """After close() (no error of its own) get_container's done gets ContainerdUnavailable."""
    conn, _ = pair
    conn.close()
    results = Results()
    conn.get_container("k8s.io", "c1", results)
    assert isinstance(results.error, ContainerdUnavailable)
    assert "closed" in str(results.error)


# -- cancel, close, idle reads ---------------------------------------------------------------
def test_cancel_from_another_thread_sets_done_now_and_read_sees_the_end(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """cancel() from another thread sets done before any read; the next read returns [],
    ends the pending Gets, and leaves error None (a cancel is not a failure)."""
    conn, server = pair
    subscribed(conn, server)
    _, results = get(conn, server, "c1")
    canceller = threading.Thread(target=conn.cancel)
    canceller.start()
    canceller.join()
    assert conn.done.is_set()
    assert results.calls == []
    assert conn.read() == []
    assert conn.error is None
    assert isinstance(results.error, ContainerdUnavailable)
    assert conn.read() == []


def test_after_cancel_read_hands_on_nothing_already_buffered(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """cancel()'s contract: done is set now and the next read sees the end; read()'s: once
    the connection is over (done set), it returns []. Envelopes and Get answers that
    were already in the socket when cancel() came must not be handed on."""
    conn, server = pair
    stream_id = subscribed(conn, server)
    get_stream, results = get(conn, server, "c1")
    server.data(stream_id, frame(envelope(1)))
    server.answer(get_stream, container("c1"))
    conn.cancel()
    assert conn.read() == []
    assert conn.newest_ns is None
    assert results.calls == [] or results.calls[0][0] is None


def test_close_ends_pending_gets_and_is_idempotent(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """close() calls each pending Get's done with ContainerdUnavailable, sets done, keeps
    error None; a second close() and a read() afterwards are harmless."""
    conn, server = pair
    subscribed(conn, server)
    _, first = get(conn, server, "c1")
    _, second = get(conn, server, "c2")
    conn.close()
    assert isinstance(first.error, ContainerdUnavailable)
    assert isinstance(second.error, ContainerdUnavailable)
    assert conn.done.is_set()
    assert conn.error is None
    conn.close()
    assert conn.read() == []
    assert len(first.calls) == len(second.calls) == 1


def test_read_on_an_empty_socket_returns_nothing_without_waiting(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """With nothing to read, read() returns [] at once (the socket is non-blocking) and
    the connection stays open."""
    conn, server = pair
    subscribed(conn, server)
    assert conn.read() == []
    assert conn.read() == []
    assert not conn.done.is_set()
    assert conn.error is None


def test_a_get_ending_inside_a_second_message_fails(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """A Get whose answer ends in the middle of a message (one whole message, then part
    of another) is a broken answer, as in gRPC, not a success."""
    conn, server = pair
    stream_id, results = get(conn, server, "c1")
    server.headers(stream_id)
    server.data(stream_id, frame(container("c1")) + frame(container("c2"))[:8])
    server.trailers(stream_id)
    conn.read()
    assert isinstance(results.error, ContainerdError)


def test_gets_beyond_the_servers_stream_limit_wait_for_a_free_stream(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """With the server's MAX_CONCURRENT_STREAMS (100 for h2) all in use, a further Get is
    not refused: it is sent once a stream ends, and answered."""
    conn, server = pair
    conn.read()  # the server's SETTINGS
    pending = [Results() for _ in range(100)]
    for n, results in enumerate(pending):
        conn.get_container("k8s.io", f"c{n}", results)
    waiting = Results()
    conn.get_container("k8s.io", "one-too-many", waiting)
    server.receive()
    assert len(server.requests) == 100
    assert waiting.calls == []
    server.answer(server.requests[0].stream_id, container("c0"))
    conn.read()
    assert pending[0].calls == [(container("c0"), None)]
    server.receive()
    assert len(server.requests) == 101
    server.answer(server.requests[100].stream_id, container("one-too-many"))
    conn.read()
    assert waiting.calls == [(container("one-too-many"), None)]
    assert not conn.done.is_set()


def test_a_request_larger_than_one_frame_is_sent_whole(
    pair: tuple[EventConnection, FakeContainerd],
) -> None:
    """A request bigger than the HTTP/2 default max frame size (16 KiB: here ~1000
    namespace filters) is sent in several DATA frames, as any gRPC client does."""
    conn, server = pair
    filters = [f"namespace==tenant-{n:04d}-namespace" for n in range(1000)]
    conn.subscribe(filters)
    server.receive()
    (request,) = server.requests
    assert request.ended
    assert list(api.SubscribeRequest.FromString(request.message()).filters) == filters
