"""Listing and reading container records: one bad record never fails the rest.

A fake containerd (an in-process gRPC server on a unix socket) answers with raw
records, some of which protobuf refuses, as a real containerd does when a client gave a
label that is not UTF-8.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError as ProtobufDecodeError

from otelbridge.containerd._gen import otelbridge_api_pb2 as api
from otelbridge.containerd.client import ContainerdClient
from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import DecodeError
from tests.unit.containerd.test_lenient_records import lenient_record

NS = "tenant-a"
_SERVICE = "containerd.services.containers.v1.Containers"


def good(container_id: str) -> bytes:
    return api.Container(id=container_id, image="img", labels={"app": "web"}).SerializeToString()


BAD = lenient_record(labels={b"bad": b"\xff"}, id_=b"bad-one")
UNREADABLE = BAD[:-3]


class FakeContainers:
    """Containers/{Get,List,ListStream} answering with the records it holds."""

    def __init__(self, records: list[bytes], *, stream: bool = True) -> None:
        self.records = records
        self.stream = stream
        self.calls: list[str] = []

    def list(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls.append("List")
        return b"".join(_field1(r) for r in self.records)

    def list_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self.calls.append("ListStream")
        if not self.stream:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "unknown method ListStream")
        for record in self.records:
            yield _field1(record)

    def get(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        wanted = api.GetContainerRequest.FromString(request).id.encode()
        for record in self.records:
            try:
                found = api.LenientContainer.FromString(record).id == wanted
            except ProtobufDecodeError:
                continue
            if found:
                return _field1(record)
        context.abort(grpc.StatusCode.NOT_FOUND, f"container {wanted!r} not found")
        raise AssertionError  # abort raises


def _field1(record: bytes) -> bytes:
    """``record`` as field 1 of a message (ListContainerMessage, GetContainerResponse,
    one entry of ListContainersResponse)."""
    return api.RawContainerHolder(container=record).SerializeToString()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(fake: FakeContainers, *, max_send: int | None = None) -> str:
        options = [] if max_send is None else [("grpc.max_send_message_length", max_send)]
        server = grpc.server(futures.ThreadPoolExecutor(2), options=options)
        raw: dict[str, Any] = {"request_deserializer": None, "response_serializer": None}
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    _SERVICE,
                    {
                        "List": grpc.unary_unary_rpc_method_handler(fake.list, **raw),
                        "ListStream": grpc.unary_stream_rpc_method_handler(fake.list_stream, **raw),
                        "Get": grpc.unary_unary_rpc_method_handler(fake.get, **raw),
                    },
                ),
            )
        )
        address = str(tmp_path / f"c{len(servers)}.sock")
        server.add_insecure_port("unix://" + address)
        server.start()
        servers.append(server)
        return address

    yield start
    for server in servers:
        server.stop(None)


def test_a_bad_record_is_kept_leniently_counted_and_named(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeContainers([good("c1"), BAD, good("c2")])
    counters = Counters()
    with ContainerdClient(serve(fake), counters=counters) as c:
        infos = c.list_containers(NS)
    assert [i.id for i in infos] == ["c1", "bad-one", "c2"]
    assert dict(infos[1].labels) == {"bad": "\\xff"}
    assert counters.get(semconv.METADATA_MALFORMED) == 1
    named = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(named) == 1 and f"{NS}/bad-one" in named[0] and "'bad'" in named[0]
    assert fake.calls == ["ListStream"]


def test_a_record_that_cannot_be_read_is_skipped_counted_and_named(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeContainers([good("c1"), UNREADABLE, good("c2")])
    counters = Counters()
    with ContainerdClient(serve(fake), counters=counters) as c:
        assert [i.id for i in c.list_containers(NS)] == ["c1", "c2"]
    assert counters.get(semconv.METADATA_MALFORMED) == 1
    assert any(f"{NS}/#1 of the listing" in r.getMessage() for r in caplog.records)


def test_a_bad_record_is_named_once_and_counted_every_time(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    counters = Counters()
    with ContainerdClient(serve(FakeContainers([BAD])), counters=counters) as c:
        for _ in range(3):  # the relist finds it again and again
            c.list_containers(NS)
    assert counters.get(semconv.METADATA_MALFORMED) == 3
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_without_counters_a_bad_record_is_still_read(serve: Any) -> None:
    with ContainerdClient(serve(FakeContainers([BAD]))) as c:
        assert [i.id for i in c.list_containers(NS)] == ["bad-one"]


def test_a_containerd_without_list_stream_is_listed_with_list(serve: Any) -> None:
    fake = FakeContainers([good("c1"), BAD], stream=False)
    counters = Counters()
    with ContainerdClient(serve(fake), counters=counters) as c:
        assert [i.id for i in c.list_containers(NS)] == ["c1", "bad-one"]
        assert [i.id for i in c.list_containers(NS)] == ["c1", "bad-one"]
    assert fake.calls == ["ListStream", "List", "List"]  # asked once, then remembered
    assert counters.get(semconv.METADATA_MALFORMED) == 2


def test_a_listing_larger_than_the_servers_send_limit_is_complete(serve: Any) -> None:
    # containerd refuses to send a message over 16 MiB; here the fake's limit is 64 KiB
    big = [
        api.Container(id=f"c{i}", labels={f"l{j}": "x" * 1000 for j in range(10)})
        for i in range(20)
    ]
    fake = FakeContainers([c.SerializeToString() for c in big])
    with ContainerdClient(serve(fake, max_send=64 * 1024)) as c:
        assert len(c.list_containers(NS)) == 20


def test_get_reads_a_bad_record_leniently(serve: Any) -> None:
    counters = Counters()
    with ContainerdClient(serve(FakeContainers([good("c1"), BAD])), counters=counters) as c:
        info = c.get_container(NS, "bad-one")
        assert dict(info.labels) == {"bad": "\\xff"}
        assert c.get_container(NS, "c1").labels == {"app": "web"}
    assert counters.get(semconv.METADATA_MALFORMED) == 1


def test_get_of_a_record_that_cannot_be_read_raises_decode_error(serve: Any) -> None:
    counters = Counters()
    fake = FakeContainers([])
    fake.get = lambda request, context: _field1(UNREADABLE)  # type: ignore[method-assign]
    with (
        ContainerdClient(serve(fake), counters=counters) as c,
        pytest.raises(DecodeError, match=f"Containers/Get {NS}/x"),
    ):
        c.get_container(NS, "x")
    assert counters.get(semconv.METADATA_MALFORMED) == 1
