"""The client side of HTTP/2 (RFC 9113) that gRPC calls on one connection need.

:class:`Http2Client` is a codec without I/O: :meth:`Http2Client.request` and
:meth:`Http2Client.receive` turn calls and received bytes into bytes to send
(:attr:`Http2Client.outbound`) and into calls of a :class:`Handler`. What it keeps of the
protocol: the preface and the SETTINGS exchange; HEADERS and CONTINUATION, decoded with
HPACK (the ``hpack`` library, whose dynamic table every header block goes through);
DATA, padding removed; the flow control of what is received (WINDOW_UPDATEs once a
quarter of the window is used) and of what is sent; PING answered; RST_STREAM and
GOAWAY handed to the handler; the peer's frame size and concurrent stream limits obeyed
(a request beyond them waits its turn). What it leaves out: server push (refused in our
SETTINGS), priorities (ignored), request bodies larger than the peer's stream window
(refused: gRPC requests of the hot path are a few hundred bytes).

Why not a general HTTP/2 library: the ``h2`` state machine, validation and per-frame
logging cost the event thread about 0.9 ms of CPU per container startup, a fifth of its
work (issue 12, docs/performance.md); this does only what the calls need.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from typing import Protocol

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADER = struct.Struct(">IBI")  # length (24 bits) and type (8), flags, stream id
_SETTING = struct.Struct(">HI")
_U32 = struct.Struct(">I")

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x5, 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
_HEADER_TABLE_SIZE, _ENABLE_PUSH, _MAX_CONCURRENT = 0x1, 0x2, 0x3
_INITIAL_WINDOW, _MAX_FRAME, _MAX_HEADER_LIST = 0x4, 0x5, 0x6
CANCEL = 0x8  # RST_STREAM error code

_DEFAULT_WINDOW = 65_535
_DEFAULT_FRAME = 16_384  # the largest frame we accept: we never advertise more
_MAX_STREAM_ID = (1 << 31) - 1


class ProtocolError(Exception):
    """The peer broke HTTP/2: the connection cannot go on."""


class RequestTooLarge(Exception):
    """A request body larger than the peer lets one stream send."""


class Handler(Protocol):
    """What the codec hands received frames to (the tags are the requests')."""

    def on_headers(self, tag: object, fields: list[tuple[bytes, bytes]], end: bool) -> None: ...
    def on_data(self, tag: object, data: bytes, end: bool) -> None: ...
    def on_reset(self, tag: object, code: int) -> None: ...
    def on_goaway(self, code: int, debug: bytes) -> None: ...


class Stream:
    """One request's stream: ``id`` is 0 until its HEADERS are sent."""

    __slots__ = ("body", "headers", "id", "tag", "unacked")

    def __init__(self, tag: object, headers: bytes, body: bytes) -> None:
        self.tag = tag
        self.headers = headers
        self.body = body
        self.id = 0
        self.unacked = 0  # DATA received and not yet given back as window


def _frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack((len(payload) << 8) | ftype, flags, stream_id) + payload


def _integer(value: int, prefix_bits: int) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541 section 5.1), first byte's high
    bits zero."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(fields: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literal fields "without indexing" with literal names: it
    changes no HPACK table, so the encoder keeps no state (requests are few)."""
    out = bytearray()
    for name, value in fields:
        out.append(0x00)
        out += _integer(len(name), 7)
        out += name
        out += _integer(len(value), 7)
        out += value
    return bytes(out)


class Http2Client:
    """One client connection's HTTP/2 state (see the module docstring). Not thread-safe."""

    def __init__(self, handler: Handler, *, window: int, max_header_list: int = 1 << 16) -> None:
        self._handler = handler
        self._window = window
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = max_header_list
        self._max_header_block = max_header_list * 2  # compressed, before decoding
        self.outbound = bytearray(PREFACE)
        """Bytes to send, in order; the caller deletes what it sent."""
        settings = _SETTING.pack(_ENABLE_PUSH, 0) + _SETTING.pack(_INITIAL_WINDOW, window)
        settings += _SETTING.pack(_MAX_HEADER_LIST, max_header_list)
        self.outbound += _frame(SETTINGS, 0, 0, settings)
        if window > _DEFAULT_WINDOW:  # the connection's window starts at 65,535 whatever we say
            self.outbound += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(window - _DEFAULT_WINDOW))
        self._buffer = bytearray()
        self._streams: dict[int, Stream] = {}  # open: sent, not ended
        self._waiting: deque[Stream] = deque()  # not sent yet (limits)
        self._next_id = 1
        self._unacked = 0  # connection-level DATA not yet given back
        self._continuing: tuple[int, int, bytearray] | None = None  # stream, flags, block
        # what the peer allows us (its SETTINGS, its WINDOW_UPDATEs)
        self._send_window = _DEFAULT_WINDOW
        self._peer_stream_window = _DEFAULT_WINDOW
        self._peer_max_frame = _DEFAULT_FRAME
        self._peer_max_streams = 1 << 31

    @property
    def active(self) -> int:
        """Streams sent or waiting to be, not ended."""
        return len(self._streams) + len(self._waiting)

    # -- sending ---------------------------------------------------------------------------
    def request(self, fields: list[tuple[bytes, bytes]], body: bytes, tag: object) -> Stream:
        """A request (HEADERS, then the body as DATA ending the stream), sent now or as
        soon as the peer's limits allow. Raises :class:`RequestTooLarge`."""
        if len(body) > self._peer_stream_window:
            raise RequestTooLarge(
                f"a request of {len(body)} bytes (containerd takes {self._peer_stream_window})"
            )
        stream = Stream(tag, encode_headers(fields), body)
        self._waiting.append(stream)
        self._send_waiting()
        return stream

    def cancel(self, stream: Stream) -> None:
        """Ends ``stream`` from our side (RST_STREAM CANCEL); nothing more is handed on."""
        if stream.id and self._streams.pop(stream.id, None) is not None:
            self.outbound += _frame(RST_STREAM, 0, stream.id, _U32.pack(CANCEL))
            self._send_waiting()
        elif not stream.id:
            with contextlib.suppress(ValueError):  # sent and ended meanwhile
                self._waiting.remove(stream)

    def _send_waiting(self) -> None:
        waiting = self._waiting
        while waiting:
            stream = waiting[0]
            if len(self._streams) >= self._peer_max_streams:
                return
            if len(stream.body) > self._send_window:
                return  # the peer gives window back as it reads
            if self._next_id > _MAX_STREAM_ID:
                raise ProtocolError("the connection's stream ids are used up")
            waiting.popleft()
            stream.id = self._next_id
            self._next_id += 2
            self._streams[stream.id] = stream
            self._send(stream)

    def _send(self, stream: Stream) -> None:
        out = self.outbound
        block, size = stream.headers, self._peer_max_frame
        first, rest = block[:size], block[size:]
        out += _frame(HEADERS, 0 if rest else END_HEADERS, stream.id, first)
        while rest:
            piece, rest = rest[:size], rest[size:]
            out += _frame(CONTINUATION, 0 if rest else END_HEADERS, stream.id, piece)
        body = stream.body
        self._send_window -= len(body)
        if not body:
            out += _frame(DATA, END_STREAM, stream.id)
        for start in range(0, len(body), size):
            piece = body[start : start + size]
            last = start + size >= len(body)
            out += _frame(DATA, END_STREAM if last else 0, stream.id, piece)
        stream.headers = stream.body = b""

    # -- receiving -------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Takes received bytes; complete frames go to the handler, in order. Raises
        :class:`ProtocolError` (the connection is then unusable)."""
        buffer = self._buffer
        if buffer:
            buffer += data
            view: bytes | bytearray = buffer
        else:
            view = data
        size = len(view)
        pos = 0
        unpack = _HEADER.unpack_from
        while size - pos >= 9:
            length_type, flags, stream_id = unpack(view, pos)
            length = length_type >> 8
            if length > _DEFAULT_FRAME:
                raise ProtocolError(f"a frame of {length} bytes (we take {_DEFAULT_FRAME})")
            end = pos + 9 + length
            if end > size:
                break
            payload = bytes(view[pos + 9 : end])
            pos = end
            self._frame(length_type & 0xFF, flags, stream_id & _MAX_STREAM_ID, payload)
        if buffer:
            del buffer[:pos]
        elif pos < size:
            buffer += data[pos:]
        self._give_back()

    def _frame(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuing is not None:
            self._continuation(ftype, flags, stream_id, payload)
        elif ftype == DATA:
            self._data(flags, stream_id, payload)
        elif ftype == HEADERS:
            self._headers(flags, stream_id, payload)
        elif ftype == RST_STREAM:
            if len(payload) != 4 or not stream_id:
                raise ProtocolError("a malformed RST_STREAM")
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                self._handler.on_reset(stream.tag, _U32.unpack(payload)[0])
                self._send_waiting()
        elif ftype == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif ftype == PING:
            if len(payload) != 8 or stream_id:
                raise ProtocolError("a malformed PING")
            if not flags & ACK:
                self.outbound += _frame(PING, ACK, 0, payload)
        elif ftype == GOAWAY:
            if len(payload) < 8:
                raise ProtocolError("a malformed GOAWAY")
            self._handler.on_goaway(_U32.unpack_from(payload, 4)[0], payload[8:])
        elif ftype == WINDOW_UPDATE:
            if len(payload) != 4:
                raise ProtocolError("a malformed WINDOW_UPDATE")
            if not stream_id:
                self._send_window += _U32.unpack(payload)[0] & _MAX_STREAM_ID
                self._send_waiting()
        elif ftype == PUSH_PROMISE:
            raise ProtocolError("a PUSH_PROMISE, refused in our SETTINGS")
        elif ftype == CONTINUATION:
            raise ProtocolError("a CONTINUATION that continues nothing")
        # PRIORITY and unknown types are ignored (RFC 9113 section 4.1)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError("DATA on stream 0")
        self._unacked += len(payload)  # padding included: all of it is flow-controlled
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # a stream we cancelled or never opened: its window comes back anyway
        stream.unacked += len(payload)
        if flags & PADDED:
            payload = _unpad(payload)
        end = bool(flags & END_STREAM)
        if end:
            del self._streams[stream_id]
        self._handler.on_data(stream.tag, payload, end)
        if end:
            self._send_waiting()

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not stream_id:
            raise ProtocolError("HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload)
        else:
            self._continuing = (stream_id, flags, bytearray(payload))

    def _continuation(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        assert self._continuing is not None
        continued, first_flags, block = self._continuing
        if ftype != CONTINUATION or stream_id != continued:
            raise ProtocolError("a header block interrupted by another frame")
        block += payload
        if len(block) > self._max_header_block:
            raise ProtocolError(f"a header block of more than {self._max_header_block} bytes")
        if flags & END_HEADERS:
            self._continuing = None
            self._header_block(stream_id, first_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        try:  # every block is decoded, a stream's we ignore too: the table is shared
            fields = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:
            raise ProtocolError(f"a header block HPACK cannot decode: {exc}") from exc
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        end = bool(flags & END_STREAM)
        if end:
            del self._streams[stream_id]
        self._handler.on_headers(stream.tag, fields, end)  # type: ignore[arg-type]
        if end:
            self._send_waiting()

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) % 6:
            raise ProtocolError("a malformed SETTINGS")
        if flags & ACK:
            return
        for offset in range(0, len(payload), 6):
            code, value = _SETTING.unpack_from(payload, offset)
            if code == _INITIAL_WINDOW:
                self._peer_stream_window = value
            elif code == _MAX_FRAME:
                if not _DEFAULT_FRAME <= value < 1 << 24:
                    raise ProtocolError(f"SETTINGS_MAX_FRAME_SIZE {value}")
                self._peer_max_frame = value
            elif code == _MAX_CONCURRENT:
                self._peer_max_streams = value
            # HEADER_TABLE_SIZE: our encoder indexes nothing; others do not concern us
        self.outbound += _frame(SETTINGS, ACK, 0)
        self._send_waiting()

    def _give_back(self) -> None:
        """WINDOW_UPDATEs for what was received, once a quarter of a window is used."""
        threshold = self._window >> 2
        if self._unacked >= threshold:
            self.outbound += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._unacked))
            self._unacked = 0
        for stream in self._streams.values():
            if stream.unacked >= threshold:
                self.outbound += _frame(WINDOW_UPDATE, 0, stream.id, _U32.pack(stream.unacked))
                stream.unacked = 0


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ProtocolError("padding longer than its frame")
    return payload[1 : len(payload) - payload[0]]


__all__ = ["Handler", "Http2Client", "ProtocolError", "RequestTooLarge", "Stream"]
