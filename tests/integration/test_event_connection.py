"""The event connection (``containerd/stream.py``) against a real, private containerd.

:class:`~otelbridge.containerd.stream.EventConnection` is opened as the bridge opens it
(``ContainerdClient.open_events`` with the source's namespace filters) and driven as the
event thread drives it: wait on :meth:`~EventConnection.fileno` with a deadline, call
:meth:`~EventConnection.read` when the socket is readable. What it reads is checked
against an independent subscriber, ``ctr events``, and against ``ctr`` and the gRPC
client for container records.

Tests that stop containerd run one of their own: the session's is shared by every test.
The fixtures of ``tests/conftest.py`` are described here by protocols (rather than
imported) so that type-checking this file does not type-check conftest.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import pytest

from otelbridge.containerd.client import ContainerdClient
from otelbridge.containerd.stream import EventConnection, GetDone
from otelbridge.core.errors import ContainerdError, ContainerdUnavailable, NotFound
from otelbridge.core.model import LifecycleEvent, RawEnvelope
from otelbridge.decode import TYPE_URL_FOR_TOPIC, decode
from otelbridge.source.recording import parse_ctr_line
from otelbridge.testing.containerd import PrivateContainerd, new_container_id
from otelbridge.testing.image import BUSYBOX_BASE_NAME, import_image

pytestmark = pytest.mark.containerd

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
LIFECYCLE = [
    "/containers/create",
    "/tasks/create",
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
    "/containers/delete",
]
# a record over the receive window the connection advertises per stream (1 MiB) and
# over one read (256 KiB): containerd refuses a label pair over 4096 bytes
BIG_LABELS = 200
BIG_LABEL_VALUE = "x" * 4000


class NamespaceFixture(Protocol):
    """``tests.conftest.Namespace``: a fresh namespace with the busybox image."""

    cd: PrivateContainerd
    name: str
    image: str

    def run(self, container_id: str, *cmd: str) -> subprocess.CompletedProcess[str]: ...


class CtrEventsFixture(Protocol):
    """``tests.conftest.CtrEvents``: ``ctr events``, subscribed, in the background."""

    lines: list[str]

    def wait_for(self, text: str, timeout_s: float = 10.0) -> None: ...


class OtherNamespace:
    """A second tenant's namespace (the shape of ``tests.conftest.Namespace``)."""

    def __init__(self, cd: PrivateContainerd, name: str, image: str) -> None:
        self.cd = cd
        self.name = name
        self.image = image

    def run(self, container_id: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return self.cd.run(self.image, container_id, *cmd, namespace=self.name)


@pytest.fixture
def other(containerd: PrivateContainerd, image_tar: Path) -> OtherNamespace:
    name = f"t-{uuid.uuid4().hex[:8]}"
    return OtherNamespace(
        containerd, name, import_image(containerd, image_tar, BUSYBOX_BASE_NAME, name)
    )


@pytest.fixture
def own_containerd(containerd: PrivateContainerd) -> Iterator[PrivateContainerd]:
    """A containerd of this test's own, which the test may stop (the session's one is
    shared). Asking for the session's fixture applies the suite's rule for a machine
    that cannot run containerd: skip, or fail under ``OTELBRIDGE_REQUIRE_CONTAINERD``."""
    cd = PrivateContainerd()
    try:
        cd.start()
        yield cd
    finally:
        pid = cd.pid
        if pid is not None:  # a test that froze it and failed: close() must reach it
            os.kill(pid, signal.SIGCONT)
        cd.close()


class Driven:
    """An :class:`EventConnection` read the way the event thread reads it: a selector on
    its socket, a deadline, ``read()`` whenever the socket is readable."""

    def __init__(self, conn: EventConnection) -> None:
        self.conn = conn
        self.envelopes: list[RawEnvelope] = []
        self.selector = selectors.DefaultSelector()
        self.selector.register(conn.fileno(), selectors.EVENT_READ)

    def read_once(self, timeout_s: float) -> list[RawEnvelope]:
        """One wait (at most ``timeout_s``) and, if the socket became readable, one read."""
        if not self.selector.select(timeout_s):
            return []
        envelopes = self.conn.read()
        self.envelopes += envelopes
        return envelopes

    def pump(self, until: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
        """Reads until ``until()``; raises TimeoutError at the deadline and
        AssertionError if the connection ends first (unless ``until`` says so)."""
        deadline = time.monotonic() + timeout_s
        while not until():
            if self.conn.done.is_set():
                raise AssertionError(f"the connection ended ({self.conn.error!r}) before {what}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {timeout_s} s")
            self.read_once(remaining)

    def pump_until_done(self, what: str, timeout_s: float = 20.0) -> None:
        self.pump(self.conn.done.is_set, what, timeout_s)

    def close(self) -> None:
        self.selector.close()
        self.conn.close()


class Gets:
    """The callbacks of Gets: every call each one received, by a key of the test's."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[bytes | None, ContainerdError | None]]] = defaultdict(list)
        self.asked: list[str] = []

    def ask(self, conn: EventConnection, namespace: str, container_id: str, key: str) -> None:
        self.asked.append(key)
        conn.get_container(namespace, container_id, self.done(key))

    def done(self, key: str) -> GetDone:
        def record(response: bytes | None, error: ContainerdError | None) -> None:
            self.calls[key].append((response, error))

        return record

    def answered(self) -> bool:
        return all(key in self.calls for key in self.asked)

    def outstanding(self) -> int:
        return sum(1 for key in self.asked if key not in self.calls)

    def only(self, key: str) -> tuple[bytes | None, ContainerdError | None]:
        """The one call ``key``'s callback received (it must be called exactly once)."""
        calls = self.calls[key]
        assert len(calls) == 1, f"{key}: called {len(calls)} times: {calls!r}"
        return calls[0]


def has_payload(driven: Driven, marker: str) -> Callable[[], bool]:
    needle = marker.encode()
    return lambda: any(needle in env.payload for env in driven.envelopes)


def wait_subscribed(driven: Driven, probe: Callable[[str], None], tries: int = 20) -> None:
    """containerd registers a subscription asynchronously: ``probe(marker)`` makes it
    publish an event holding ``marker`` until one arrives on the connection."""
    for _ in range(tries):
        marker = f"probe-{uuid.uuid4().hex[:8]}"
        probe(marker)
        try:
            driven.pump(has_payload(driven, marker), f"event of {marker}", timeout_s=1.0)
        except TimeoutError:
            continue
        return
    raise TimeoutError("the event subscription was never registered")


def probe_with_container(ns: NamespaceFixture | OtherNamespace) -> Callable[[str], None]:
    def probe(marker: str) -> None:
        ns.cd.ctr("containers", "create", ns.image, marker, namespace=ns.name)
        ns.cd.ctr("containers", "delete", marker, namespace=ns.name)

    return probe


def probe_with_namespace(cd: PrivateContainerd) -> Callable[[str], None]:
    def probe(marker: str) -> None:
        cd.ctr("namespaces", "create", marker)

    return probe


def has_event(driven: Driven, namespace: str, subject: str, topic: str) -> Callable[[], bool]:
    return lambda: any(
        env.namespace == namespace and env.topic == topic and subject_of(env) == subject
        for env in driven.envelopes
    )


def subject_of(env: RawEnvelope) -> str | None:
    event = decode(env)
    return event.subject if isinstance(event, LifecycleEvent) else None


def of_container(envelopes: list[RawEnvelope], namespace: str, subject: str) -> list[RawEnvelope]:
    """The envelopes about one container (its snapshot's too: their key is its id)."""
    return [e for e in envelopes if e.namespace == namespace and subject_of(e) == subject]


def timeline(envelopes: list[RawEnvelope]) -> list[tuple[str, int]]:
    return [(e.topic, e.timestamp_ns) for e in envelopes]


def lifecycle(envelopes: list[RawEnvelope]) -> list[str]:
    return [e.topic for e in envelopes if e.topic.startswith(("/containers/", "/tasks/"))]


def ctr_saw(ctr_events: CtrEventsFixture) -> list[RawEnvelope]:
    return [parse_ctr_line(line) for line in list(ctr_events.lines)]


def delete_containers(cd: PrivateContainerd, namespace: str, *ids: str) -> None:
    # the session's containerd is shared: leave no record behind
    cd.ctr("containers", "delete", *ids, namespace=namespace, check=False, timeout=60)


def create_container(
    ns: NamespaceFixture | OtherNamespace,
    container_id: str,
    labels: Mapping[str, str],
    env: Mapping[str, str] | None = None,
) -> None:
    args = ["containers", "create"]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    ns.cd.ctr(*args, ns.image, container_id, namespace=ns.name)


# -- 1. the event stream -----------------------------------------------------------------


def test_a_container_run_arrives_in_order_with_the_times_ctr_events_saw_and_filtered(
    namespace: NamespaceFixture, other: OtherNamespace, ctr_events: CtrEventsFixture
) -> None:
    ns = namespace.name
    with ContainerdClient(namespace.cd.address) as client:
        # the filters the source builds (source/live.py): one per namespace, ORed
        only = Driven(client.open_events([f"namespace=={ns}"]))
        both = Driven(client.open_events([f"namespace=={ns}", f"namespace=={other.name}"]))
        try:
            wait_subscribed(only, probe_with_container(namespace))
            wait_subscribed(both, probe_with_container(namespace))

            elsewhere = new_container_id("elsewhere")
            other.run(elsewhere, "/bin/true")  # before ours: it would arrive first
            cid = new_container_id("run")
            namespace.run(cid, "/bin/true")
            for driven in (only, both):
                driven.pump(has_event(driven, ns, cid, "/containers/delete"), f"{cid} deleted")
            ctr_events.wait_for(f'{ns} /containers/delete {{"id":"{cid}"}}')
            assert not only.conn.done.is_set() and not both.conn.done.is_set()
            assert only.conn.error is None and both.conn.error is None
        finally:
            only.close()
            both.close()

    saw = ctr_saw(ctr_events)
    ours = of_container(only.envelopes, ns, cid)
    theirs = of_container(saw, ns, cid)
    assert lifecycle(ours) == LIFECYCLE
    # the same envelopes, to the nanosecond, in the same order as ctr's subscription
    assert timeline(ours) == timeline(theirs)
    assert [decode(e) for e in ours] == [decode(e) for e in theirs]
    for env in ours:
        assert env.type_url == TYPE_URL_FOR_TOPIC[env.topic]
    assert only.conn.newest_ns == max(e.timestamp_ns for e in only.envelopes)

    # the namespace filter: the other tenant's container was published (ctr saw it,
    # before ours) and reached the subscription that asked for its namespace only
    elsewhere_saw = of_container(saw, other.name, elsewhere)
    assert lifecycle(elsewhere_saw) == LIFECYCLE
    assert elsewhere_saw[-1].timestamp_ns < theirs[0].timestamp_ns
    assert {e.namespace for e in only.envelopes} == {ns}
    assert {e.namespace for e in both.envelopes} == {ns, other.name}
    assert timeline(of_container(both.envelopes, other.name, elsewhere)) == timeline(elsewhere_saw)
    assert timeline(of_container(both.envelopes, ns, cid)) == timeline(theirs)


def test_a_filter_containerd_refuses_ends_the_connection_with_its_status(
    containerd: PrivateContainerd,
) -> None:
    # the subscription's trailers-only answer: its grpc-status is the connection's end
    with ContainerdClient(containerd.address) as client:
        driven = Driven(client.open_events(["!!!"]))
        try:
            driven.pump_until_done("the refusal of the filter")
        finally:
            driven.close()
    error = driven.conn.error
    assert type(error) is ContainerdError, repr(error)  # not unavailable: retrying won't help
    assert "event stream: UNKNOWN" in str(error)
    assert "failed parsing subscription filters" in str(error)


# -- 2. container records ------------------------------------------------------------------


def test_get_container_answers_records_container_from_decodes_and_not_found(
    namespace: NamespaceFixture, other: OtherNamespace
) -> None:
    ns = namespace.name
    labelled = new_container_id("labelled")
    twin = new_container_id("twin")  # exists in the other namespace only
    labels = {"traceparent": TRACEPARENT, "team": "otel"}
    create_container(namespace, labelled, labels, env={"TRACEPARENT": TRACEPARENT})
    create_container(other, twin, {"tenant": "other"})
    gets = Gets()
    try:
        with ContainerdClient(namespace.cd.address) as client:
            driven = Driven(client.open_events([f"namespace=={ns}"]))
            try:
                gets.ask(driven.conn, ns, labelled, "labelled")
                gets.ask(driven.conn, ns, "no-such-container", "unknown")
                gets.ask(driven.conn, ns, twin, "twin here")
                gets.ask(driven.conn, other.name, twin, "twin there")
                gets.ask(driven.conn, ns, "no-such-\u00e9t\u00e9", "unicode")
                assert gets.outstanding() == 5  # answered from read() only
                driven.pump(gets.answered, "answers to the Gets")
                assert not driven.conn.done.is_set()

                raw, error = gets.only("labelled")
                assert error is None and raw is not None
                info = client.container_from(ns, labelled, raw)
                # as the gRPC client reads the same record, and as ctr shows it
                assert info == client.get_container(ns, labelled)
                shown = namespace.cd.container_info(labelled, namespace=ns)
                assert (info.namespace, info.id) == (ns, labelled)
                assert info.image == namespace.image == shown["Image"]
                assert dict(info.labels) == shown["Labels"]
                assert info.labels["traceparent"] == TRACEPARENT
                assert info.labels["team"] == "otel"
                assert info.env == {"TRACEPARENT": TRACEPARENT}

                raw, error = gets.only("twin there")
                assert error is None and raw is not None
                info = client.container_from(other.name, twin, raw)
                assert (info.namespace, info.id, info.image) == (other.name, twin, other.image)
                assert info.labels["tenant"] == "other"

                # the namespace of each Get is its own: the twin is unknown in ours
                for key, missing in (("unknown", "no-such-container"), ("twin here", twin)):
                    raw, error = gets.only(key)
                    assert raw is None
                    assert isinstance(error, NotFound), error
                    assert f"Containers/Get {ns}/{missing}" in str(error)
                # grpc-message is percent-encoded UTF-8: containerd's words come back whole
                raw, error = gets.only("unicode")
                assert raw is None and isinstance(error, NotFound), error
                assert 'container "no-such-\u00e9t\u00e9" in namespace' in str(error)
            finally:
                driven.close()
    finally:
        delete_containers(namespace.cd, ns, labelled)
        delete_containers(other.cd, other.name, twin)


def test_gets_in_flight_together_while_events_flow_all_complete(
    namespace: NamespaceFixture,
) -> None:
    ns = namespace.name
    records = {
        new_container_id(f"rec{i}"): {"traceparent": TRACEPARENT, "i": str(i)} for i in range(4)
    }
    big = new_container_id("big")
    big_labels = {f"k{j}": BIG_LABEL_VALUE for j in range(BIG_LABELS)}
    for cid, labels in records.items():
        create_container(namespace, cid, labels)
    create_container(namespace, big, big_labels)
    runs = [new_container_id("flow") for _ in range(3)]
    gets = Gets()
    rounds_during_events = 0
    try:
        with ContainerdClient(namespace.cd.address) as client:
            driven = Driven(client.open_events([f"namespace=={ns}"]))
            try:
                wait_subscribed(driven, probe_with_container(namespace))

                def ask_round(n: int) -> None:
                    for cid in [*records, big]:
                        gets.ask(driven.conn, ns, cid, f"{n}:{cid}")
                    gets.ask(driven.conn, ns, f"missing-{n}", f"{n}:missing")

                def runs_over() -> bool:
                    return all(has_event(driven, ns, cid, "/containers/delete")() for cid in runs)

                with ThreadPoolExecutor(1) as pool:
                    running = pool.submit(
                        namespace.cd.run_parallel, namespace.image, runs, "/bin/true", namespace=ns
                    )
                    ask_round(0)
                    in_flight = gets.outstanding()
                    deadline = time.monotonic() + 60
                    # a new round of Gets whenever events came in, until the runs are over
                    while not (runs_over() and gets.answered()):
                        assert not driven.conn.done.is_set(), driven.conn.error
                        remaining = deadline - time.monotonic()
                        assert remaining > 0, (
                            f"{gets.outstanding()} Gets unanswered, runs over: {runs_over()}"
                        )
                        if driven.read_once(remaining) and not runs_over():
                            rounds_during_events += 1
                            ask_round(rounds_during_events)
                    running.result()
            finally:
                driven.close()
        # the Gets, as the gRPC client reads the same records
        with ContainerdClient(namespace.cd.address) as client:
            expected = {cid: client.get_container(ns, cid) for cid in [*records, big]}
            for key in gets.asked:
                _, cid = key.split(":", 1)
                raw, error = gets.only(key)
                if cid == "missing":
                    assert raw is None and isinstance(error, NotFound), error
                    continue
                assert error is None and raw is not None, error
                assert client.container_from(ns, cid, raw) == expected[cid]
    finally:
        delete_containers(namespace.cd, ns, *records, big)

    assert in_flight == len(records) + 2
    assert rounds_during_events >= 1
    assert dict(expected[big].labels).items() >= big_labels.items()
    for cid, labels in records.items():
        assert dict(expected[cid].labels).items() >= labels.items()
    for cid in runs:
        assert lifecycle(of_container(driven.envelopes, ns, cid)) == LIFECYCLE


def test_more_gets_between_two_reads_than_the_send_window_holds_are_all_answered(
    namespace: NamespaceFixture,
) -> None:
    # 64-hex ids, as the CRI's: 71 bytes of request DATA each, so ~920 fill 64 KiB; a
    # burst of container creates read at once asks that many records before the next read
    ns = namespace.name
    gets = Gets()
    with ContainerdClient(namespace.cd.address) as client:
        driven = Driven(client.open_events([f"namespace=={ns}"]))
        try:
            wait_subscribed(driven, probe_with_container(namespace))
            for i in range(1200):
                gets.ask(driven.conn, ns, uuid.uuid4().hex + uuid.uuid4().hex, f"burst-{i}")
            driven.pump(gets.answered, "answers to the burst of Gets", timeout_s=30)
            assert not driven.conn.done.is_set() and driven.conn.error is None
        finally:
            driven.close()
    refused = [key for key in gets.asked if not isinstance(gets.only(key)[1], NotFound)]
    assert refused == [], (
        f"{len(refused)} of {len(gets.asked)} Gets not answered by containerd, the first: "
        f"{gets.only(refused[0])[1]!r}"
    )


# -- 3. containerd stops ----------------------------------------------------------------------


def test_stopping_containerd_ends_the_connection_as_unavailable(
    own_containerd: PrivateContainerd,
) -> None:
    cd = own_containerd
    with ContainerdClient(cd.address) as client:
        driven = Driven(client.open_events([]))
        try:
            wait_subscribed(driven, probe_with_namespace(cd))
            gets = Gets()
            gets.ask(driven.conn, "default", "no-such-container", "before")
            driven.pump(gets.answered, "an answer while containerd runs")
            assert isinstance(gets.only("before")[1], NotFound)

            cd.stop()  # SIGTERM; returns once containerd has exited
            driven.pump_until_done("the end of the connection")
            assert isinstance(driven.conn.error, ContainerdUnavailable), driven.conn.error
            assert driven.conn.read() == []
            # a Get once it is over is refused at once, with the connection's error
            gets.ask(driven.conn, "default", "no-such-container", "after")
            raw, error = gets.only("after")
            assert raw is None and isinstance(error, ContainerdUnavailable), error
        finally:
            driven.close()
        with pytest.raises(ContainerdUnavailable):
            client.open_events([])


def test_gets_pending_when_containerd_goes_away_are_answered_with_an_error(
    own_containerd: PrivateContainerd,
) -> None:
    cd = own_containerd
    with ContainerdClient(cd.address) as client:
        driven = Driven(client.open_events([]))
        try:
            wait_subscribed(driven, probe_with_namespace(cd))
            pid = cd.pid
            assert pid is not None
            # frozen, containerd cannot answer: the Gets are surely pending when it dies
            os.kill(pid, signal.SIGSTOP)
            gets = Gets()
            for i in range(5):
                gets.ask(driven.conn, "default", f"pending-{i}", f"pending-{i}")
            assert gets.outstanding() == 5
            cd.kill()
            driven.pump_until_done("the end of the connection")
            assert isinstance(driven.conn.error, ContainerdUnavailable), driven.conn.error
            for key in gets.asked:
                raw, error = gets.only(key)
                assert raw is None and isinstance(error, ContainerdUnavailable), error
        finally:
            driven.close()


# -- 4. cancel ---------------------------------------------------------------------------------


def test_cancel_from_another_thread_sets_done_at_once_and_wakes_the_reader(
    namespace: NamespaceFixture,
) -> None:
    with ContainerdClient(namespace.cd.address) as client:
        driven = Driven(client.open_events([f"namespace=={namespace.name}"]))
        try:
            wait_subscribed(driven, probe_with_container(namespace))
            reads_after: list[list[RawEnvelope]] = []
            problems: list[BaseException] = []
            waiting = threading.Event()

            def event_thread() -> None:
                try:
                    deadline = time.monotonic() + 30
                    waiting.set()
                    while not driven.conn.done.is_set() and time.monotonic() < deadline:
                        if driven.selector.select(deadline - time.monotonic()):
                            reads_after.append(driven.conn.read())
                except BaseException as exc:  # reported on the test's thread
                    problems.append(exc)

            reader = threading.Thread(target=event_thread, name="test-event-thread")
            reader.start()
            assert waiting.wait(10)
            driven.conn.cancel()  # from this thread, while the event thread waits
            assert driven.conn.done.is_set()  # at once, whatever the reader does
            reader.join(10)
            assert not reader.is_alive(), "the event thread was not woken by cancel()"
            assert problems == []
            assert driven.conn.error is None  # cancelled is not an error
            assert driven.conn.read() == []
        finally:
            driven.close()
        assert driven.conn.fileno() == -1  # the socket is closed
        assert driven.conn.done.is_set() and driven.conn.error is None
        assert driven.conn.read() == []
        gets = Gets()
        gets.ask(driven.conn, namespace.name, "no-such-container", "after close")
        raw, error = gets.only("after close")
        assert raw is None and isinstance(error, ContainerdUnavailable)


def test_cancel_then_close_answers_every_get_once(namespace: NamespaceFixture) -> None:
    ns = namespace.name
    known = new_container_id("known")
    create_container(namespace, known, {"traceparent": TRACEPARENT})
    try:
        with ContainerdClient(namespace.cd.address) as client:
            driven = Driven(client.open_events([f"namespace=={ns}"]))
            gets = Gets()
            try:
                for i in range(10):
                    gets.ask(driven.conn, ns, known, f"known-{i}")
                    gets.ask(driven.conn, ns, f"missing-{i}", f"missing-{i}")
                canceller = threading.Thread(target=driven.conn.cancel, name="test-cancel")
                canceller.start()
                canceller.join(10)
                assert driven.conn.done.is_set()
                driven.read_once(0)  # what the event thread does next, if readable
            finally:
                driven.close()
            assert driven.conn.error is None
            for key in gets.asked:
                raw, error = gets.only(key)  # answered, or ended by the cancel: once
                if error is None:
                    assert key.startswith("known-") and raw is not None
                    assert client.container_from(ns, known, raw).labels["traceparent"] == (
                        TRACEPARENT
                    )
                elif key.startswith("missing-"):  # answered NotFound, or ended by the cancel
                    assert raw is None and isinstance(error, NotFound | ContainerdUnavailable)
                else:
                    assert raw is None and isinstance(error, ContainerdUnavailable), error
    finally:
        delete_containers(namespace.cd, ns, known)
