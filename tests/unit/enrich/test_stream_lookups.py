"""Container records read on the event connection (:class:`StreamLookups`).

The connection is a fake that records each request; the test completes one by calling
its ``done`` as the connection's reader would.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ContainerdError, ContainerdUnavailable, NotFound
from otelbridge.core.model import ContainerInfo, ContainerKey
from otelbridge.enrich.lookups import StreamLookups

Done = Callable[[bytes | None, ContainerdError | None], None]


class FakeConnection:
    """A :class:`~otelbridge.enrich.lookups.GetConnection` that records requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Done]] = []

    def get_container(self, namespace: str, container_id: str, done: Done) -> None:
        self.requests.append((namespace, container_id, done))

    def ids(self) -> list[str]:
        return [cid for _, cid, _ in self.requests]

    def done(self, container_id: str) -> Done:
        """The ``done`` of the last request for ``container_id``."""
        return next(d for _, cid, d in reversed(self.requests) if cid == container_id)


class Lookups:
    """A :class:`StreamLookups` with recording ``accept`` and ``read``."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.accepted: list[tuple[ContainerKey, bytes]] = []
        self.reads: list[ContainerKey] = []
        self.results = 0
        self.accept_error: Exception | None = None
        self.read_errors: dict[str, Exception] = {}
        self.lookups = StreamLookups(self.accept, self.read, self.counters)
        self.lookups.on_result = self.on_result

    def accept(self, key: ContainerKey, response: bytes) -> ContainerInfo:
        self.accepted.append((key, response))
        if self.accept_error is not None:
            raise self.accept_error
        return ContainerInfo(key.namespace, key.id, image=response.decode())

    def read(self, key: ContainerKey) -> ContainerInfo:
        self.reads.append(key)
        if key.id in self.read_errors:
            raise self.read_errors[key.id]
        return ContainerInfo(key.namespace, key.id, image="read")

    def on_result(self) -> None:
        self.results += 1

    def failed(self) -> int:
        return self.counters.get(semconv.METADATA_FAILED)


def key(cid: str) -> ContainerKey:
    return ContainerKey("default", cid)


@pytest.fixture
def s() -> Lookups:
    return Lookups()


def test_lookups_submitted_before_a_connection_are_sent_on_attach_in_ticket_order(
    s: Lookups,
) -> None:
    """Submitted with no connection, they queue; ``attach`` sends them oldest first."""
    tickets = [s.lookups.submit(key(c)) for c in ("c1", "c2", "c3")]
    assert tickets == sorted(tickets)
    assert s.lookups.take(tickets[0]) == (False, None)
    conn = FakeConnection()
    s.lookups.attach(conn)
    assert conn.ids() == ["c1", "c2", "c3"]
    assert s.counters.get(semconv.METADATA_LOOKUPS) == 3


def test_a_response_is_accepted_and_taken_once(s: Lookups) -> None:
    """``done(bytes, None)`` goes through ``accept``; ``take`` gives the record once."""
    conn = FakeConnection()
    s.lookups.attach(conn)
    ticket = s.lookups.submit(key("c1"))
    conn.done("c1")(b"img", None)
    assert s.accepted == [(key("c1"), b"img")]
    assert s.results == 1
    assert s.lookups.peek(ticket) == (True, ContainerInfo("default", "c1", image="img"))
    assert s.lookups.take(ticket) == (True, ContainerInfo("default", "c1", image="img"))
    assert s.lookups.take(ticket) == (False, None)
    assert s.failed() == 0


def test_a_container_gone_is_a_failed_result_and_counted(s: Lookups) -> None:
    """``done(None, NotFound)``: the lookup is over without a record, counted as failed."""
    conn = FakeConnection()
    s.lookups.attach(conn)
    ticket = s.lookups.submit(key("c1"))
    conn.done("c1")(None, NotFound("gone"))
    assert s.lookups.take(ticket) == (True, None)
    assert s.failed() == 1
    assert s.results == 1
    assert s.accepted == []


def test_a_lookup_cut_by_the_connections_end_is_sent_again_on_the_next(s: Lookups) -> None:
    """``ContainerdUnavailable`` is no result: the lookup (and later ones) go on the next."""
    first, second = FakeConnection(), FakeConnection()
    s.lookups.attach(first)
    t1 = s.lookups.submit(key("c1"))
    first.done("c1")(None, ContainerdUnavailable("connection ended"))
    assert s.lookups.take(t1) == (False, None)
    assert (s.results, s.failed()) == (0, 0)
    t2 = s.lookups.submit(key("c2"))  # not sent on the ended connection
    assert first.ids() == ["c1"]
    s.lookups.attach(second)
    assert second.ids() == ["c1", "c2"]
    second.done("c1")(b"img", None)
    assert s.lookups.take(t1) == (True, ContainerInfo("default", "c1", image="img"))
    assert s.lookups.take(t2) == (False, None)


def test_an_abandoned_lookup_drops_its_result(s: Lookups) -> None:
    """A result arriving after ``abandon`` is ignored; an unsent abandoned one is not sent."""
    conn = FakeConnection()
    s.lookups.attach(conn)
    sent = s.lookups.submit(key("c1"))
    s.lookups.abandon(sent)
    conn.done("c1")(b"img", None)
    assert s.lookups.take(sent) == (False, None)
    assert (s.accepted, s.results) == ([], 0)
    s.lookups.attach(None)
    unsent = s.lookups.submit(key("c2"))
    s.lookups.abandon(unsent)
    later = FakeConnection()
    s.lookups.attach(later)
    assert later.ids() == []


def test_wait_reads_the_still_pending_lookups_synchronously(s: Lookups) -> None:
    """``wait`` reads only the pending ones with ``read``; a read that raises is failed."""
    conn = FakeConnection()
    s.lookups.attach(conn)
    t1, t2, t3 = (s.lookups.submit(key(c)) for c in ("c1", "c2", "c3"))
    conn.done("c1")(b"img", None)
    s.read_errors["c3"] = ContainerdUnavailable("no containerd")
    assert s.lookups.wait([t1, t2, t3], 5.0)
    assert s.reads == [key("c2"), key("c3")]
    assert s.lookups.take(t1) == (True, ContainerInfo("default", "c1", image="img"))
    assert s.lookups.take(t2) == (True, ContainerInfo("default", "c2", image="read"))
    assert s.lookups.take(t3) == (True, None)
    assert s.failed() == 1
    conn.done("c2")(b"late", None)  # the connection's answer after the read: dropped
    assert s.lookups.take(t2) == (False, None)


def test_wait_with_no_time_left_reads_nothing(s: Lookups) -> None:
    """A timeout of zero returns False, leaving the pending lookup unread."""
    ticket = s.lookups.submit(key("c1"))
    assert not s.lookups.wait([ticket], 0.0)
    assert s.reads == []
    assert s.lookups.take(ticket) == (False, None)


def test_a_response_accept_rejects_is_a_failed_result_and_counted(s: Lookups) -> None:
    """``accept`` raising: the lookup is over without a record, counted as failed."""
    conn = FakeConnection()
    s.lookups.attach(conn)
    ticket = s.lookups.submit(key("c1"))
    s.accept_error = ValueError("malformed record")
    conn.done("c1")(b"junk", None)
    assert s.lookups.take(ticket) == (True, None)
    assert s.failed() == 1
    assert s.results == 1
