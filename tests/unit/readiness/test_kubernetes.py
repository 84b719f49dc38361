"""The ``kubernetes`` readiness source against a stand-in API server.

No Kubernetes API server runs on these machines, so these tests run the source (with
the real ``kubernetes`` client library, configured from a kubeconfig file or in-cluster
files) against :class:`otelbridge.testing.kubeapi.FakeKubeAPI`: a real HTTP server on
loopback speaking the list/watch protocol as kube-apiserver does, fed with realistic v1
Pod objects. Each test steers the server (a status change, a paused or dropped watch, a
410 Gone) and waits for the source's verdicts, polling with short waits; time is a fake
clock, except where the test is about real time (two tests wait for a 1 s watch timeout).
The last test runs the source inside a real Pipeline.

Absence of a verdict is checked with a *barrier*: a marker container that becomes
ready after the change under test. The source handles watch events in order and
delivers verdicts in order, so once the marker's verdict is in, any verdict the earlier
change could have caused would be in too.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import Config, ReadinessConfig, StateConfig
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    CriInfo,
    Outcome,
    RawEnvelope,
    ReadySignal,
    StartupRecord,
)
from otelbridge.pipeline import Pipeline, SourceItem
from otelbridge.readiness import SOURCE_KUBERNETES, ReadinessRequest
from otelbridge.readiness.kubernetes import KubernetesSource
from otelbridge.testing.events import Timeline
from otelbridge.testing.kubeapi import ContainerSpec, FakeKubeAPI, make_pod, set_container

NODE = "node-a"
NS = "k8s.io"
T0 = 1_700_000_000_000_000_000
FAR_NS = T0 + 3600 * 1_000_000_000
WAIT_S = 5.0


def cid() -> str:
    """A containerd container id: 64 hex digits."""
    return uuid.uuid4().hex + uuid.uuid4().hex


class Sink:
    def submit(self, spans: list[Span]) -> None:
        pass


class Reports:
    """Collects verdicts from the source's thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.signals: list[ReadySignal] = []

    def __call__(self, signal: ReadySignal) -> None:
        with self._cond:
            self.signals.append(signal)
            self._cond.notify_all()

    def wait_for(self, key: ContainerKey, timeout_s: float = WAIT_S) -> ReadySignal:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [s for s in self.signals if s.key == key]
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no verdict for {key}; got {self.signals}")
                self._cond.wait(remaining)

    def of(self, key: ContainerKey) -> list[ReadySignal]:
        with self._cond:
            return [s for s in self.signals if s.key == key]


def request(
    pod_uid: str,
    container: str,
    container_id: str,
    *,
    deadline_ns: int = FAR_NS,
    kind: str = "container",
    attempt: int = 1,
) -> ReadinessRequest:
    info = ContainerInfo(
        NS,
        container_id,
        cri=CriInfo(
            kind,
            sandbox_id="sandbox-" + pod_uid[:8],
            pod_name="web-0",
            pod_namespace="shop",
            pod_uid=pod_uid,
            container_name=container,
        ),
    )
    return ReadinessRequest(ContainerKey(NS, container_id), attempt, info, T0, deadline_ns)


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def counters() -> Counters:
    return Counters()


@pytest.fixture
def kubeconfig(api: FakeKubeAPI, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def source(
    api: FakeKubeAPI, kubeconfig: Path, clock: FakeClock, counters: Counters
) -> Iterator[KubernetesSource]:
    src = KubernetesSource(
        ReadinessConfig(kubernetes=True, kubeconfig=str(kubeconfig)),
        counters,
        node_name=NODE,
        clock=clock,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    src.start()
    try:
        yield src
    finally:
        src.shutdown()


def barrier(api: FakeKubeAPI, source: KubernetesSource, reports: Reports) -> None:
    """Returns once the source has handled every change made to ``api`` before."""
    uid, marker = str(uuid.uuid4()), cid()
    api.put_pod(make_pod("marker-0", uid=uid, containers=[ContainerSpec("m", marker, True)]))
    req = request(uid, "m", marker)
    source.watch(req, reports)
    assert reports.wait_for(req.key).ok


def started(api: FakeKubeAPI) -> None:
    assert api.wait_watching(1, WAIT_S), "the source did not start watching"


# -- readiness transitions ------------------------------------------------------------------------
def test_a_container_turning_ready_is_reported_at_the_arrival_of_the_event(
    api: FakeKubeAPI, source: KubernetesSource, clock: FakeClock
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, node_name=NODE, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)
    started(api)
    reports = Reports()
    req = request(uid, "app", app)
    source.watch(req, reports)
    barrier(api, source, reports)
    assert reports.of(req.key) == []  # running, not ready yet

    arrival = clock.advance(1.5)
    api.put_pod(set_container(pod, "app", ready=True))
    signal = reports.wait_for(req.key)
    assert signal == ReadySignal(req.key, req.attempt, arrival, SOURCE_KUBERNETES, ok=True)
    assert len(reports.of(req.key)) == 1


def test_with_the_system_clock_the_moment_is_between_the_change_and_the_verdict(
    api: FakeKubeAPI, kubeconfig: Path
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)
    src = KubernetesSource(
        ReadinessConfig(kubernetes=True, kubeconfig=str(kubeconfig)), Counters(), node_name=NODE
    )
    src.start()
    try:
        started(api)
        reports = Reports()
        req = request(uid, "app", app, deadline_ns=time.time_ns() + 60 * 1_000_000_000)
        src.watch(req, reports)
        before = time.time_ns()
        api.put_pod(set_container(pod, "app", ready=True))
        signal = reports.wait_for(req.key)
        after = time.time_ns()
    finally:
        src.shutdown()
    assert signal.ok
    assert before <= signal.at_ns <= after


def test_a_container_already_ready_for_this_startup_is_reported_at_once(
    api: FakeKubeAPI, source: KubernetesSource, clock: FakeClock
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    api.put_pod(make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app, ready=True)]))
    started(api)
    reports = Reports()
    barrier(api, source, reports)  # seen ready at T0
    clock.advance(3)
    req = request(uid, "app", app)
    source.watch(req, reports)
    signal = reports.wait_for(req.key)
    assert signal.ok
    assert signal.at_ns == T0


def test_readiness_of_an_earlier_attempt_does_not_count(
    api: FakeKubeAPI, source: KubernetesSource, clock: FakeClock
) -> None:
    uid, first, second = str(uuid.uuid4()), cid(), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", first, ready=True)])
    api.put_pod(pod)
    started(api)
    reports = Reports()
    # the container restarted: containerd started `second`, the status still says `first`
    req = request(uid, "app", second, attempt=2)
    source.watch(req, reports)
    barrier(api, source, reports)
    assert reports.of(req.key) == []

    # the kubelet reports the new container, running but not ready yet
    pod = set_container(pod, "app", container_id=second, restart_count=1, ready=False)
    api.put_pod(pod)
    barrier(api, source, reports)
    assert reports.of(req.key) == []

    ready_at = clock.advance(2)
    api.put_pod(set_container(pod, "app", ready=True))
    signal = reports.wait_for(req.key)
    assert (signal.ok, signal.at_ns, signal.attempt) == (True, ready_at, 2)


def test_a_new_container_reported_ready_in_one_step_counts_from_then(
    api: FakeKubeAPI, source: KubernetesSource, clock: FakeClock
) -> None:
    """From (old id, ready) straight to (new id, ready): the new one turned ready now."""
    uid, first, second = str(uuid.uuid4()), cid(), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", first, ready=True)])
    api.put_pod(pod)
    started(api)
    reports = Reports()
    req = request(uid, "app", second, attempt=2)
    source.watch(req, reports)
    now = clock.advance(4)
    api.put_pod(set_container(pod, "app", container_id=second, restart_count=1, ready=True))
    assert reports.wait_for(req.key).at_ns == now


# -- watch restarts -----------------------------------------------------------------------
def test_410_gone_mid_watch_relists_and_loses_no_transition(
    api: FakeKubeAPI, source: KubernetesSource, clock: FakeClock, counters: Counters
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)
    started(api)
    reports = Reports()
    req = request(uid, "app", app)
    source.watch(req, reports)
    barrier(api, source, reports)
    reached = str(api.resource_version)

    api.pause_watches()  # the watch falls behind: the change is not streamed
    clock.advance(1)
    api.put_pod(set_container(pod, "app", ready=True))
    relisted_at = clock.advance(1)
    api.expire_watches()  # ERROR event, code 410: the client must list again
    api.resume_watches()

    signal = reports.wait_for(req.key)
    assert (signal.ok, signal.at_ns) == (True, relisted_at)
    lists = [r for r in api.requests() if not r.watch]
    assert len(lists) == 2
    assert lists[0].query["resourceVersion"] == "0"  # from the watch cache
    assert lists[1].query["resourceVersion"] == reached  # not older than what was seen
    assert lists[1].query["resourceVersionMatch"] == "NotOlderThan"
    assert counters.get(semconv.KUBERNETES_RELISTS) == 1
    assert counters.get(semconv.KUBERNETES_READY_LATE) == 1
    assert counters.get(semconv.KUBERNETES_WATCH_RESTARTS) == 1
    started(api)  # and it watches again, from the new listing
    barrier(api, source, reports)


def test_http_410_on_resuming_relists_and_loses_no_transition(
    api: FakeKubeAPI, source: KubernetesSource, clock: FakeClock, counters: Counters
) -> None:
    api.gone_as_http = True
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)
    started(api)
    reports = Reports()
    req = request(uid, "app", app)
    source.watch(req, reports)
    barrier(api, source, reports)

    api.pause_watches()
    api.put_pod(set_container(pod, "app", ready=True))
    api.compact()  # the client's resourceVersion is now too old
    relisted_at = clock.advance(2)
    api.drop_watches()
    api.resume_watches()

    signal = reports.wait_for(req.key)
    assert (signal.ok, signal.at_ns) == (True, relisted_at)
    assert counters.get(semconv.KUBERNETES_RELISTS) == 1
    assert counters.get(semconv.KUBERNETES_READY_LATE) == 1


def test_a_dropped_connection_resumes_from_the_last_version_and_loses_nothing(
    api: FakeKubeAPI, source: KubernetesSource, clock: FakeClock, counters: Counters
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)
    started(api)
    reports = Reports()
    req = request(uid, "app", app)
    source.watch(req, reports)
    barrier(api, source, reports)
    seen_rv = str(api.resource_version)  # the last change the source has seen

    api.pause_watches()
    api.put_pod(set_container(pod, "app", ready=True))
    api.drop_watches()  # cut without the closing chunk
    resumed_at = clock.advance(1)
    api.resume_watches()

    signal = reports.wait_for(req.key)
    assert (signal.ok, signal.at_ns) == (True, resumed_at)  # replayed, on arrival
    watches = [r for r in api.requests() if r.watch]
    assert len(watches) == 2
    assert watches[-1].query["resourceVersion"] == seen_rv  # resumed, not relisted
    assert counters.get(semconv.KUBERNETES_RELISTS) == 0
    assert counters.get(semconv.KUBERNETES_READY_LATE) == 0
    assert counters.get(semconv.KUBERNETES_WATCH_RESTARTS) == 1
    assert counters.get(semconv.KUBERNETES_API_ERRORS) == 1


def test_failed_requests_are_retried_with_backoff(
    api: FakeKubeAPI, kubeconfig: Path, clock: FakeClock, counters: Counters
) -> None:
    api.fail_requests(3, status=503)
    uid, app = str(uuid.uuid4()), cid()
    api.put_pod(make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app, ready=True)]))
    src = KubernetesSource(
        ReadinessConfig(kubernetes=True, kubeconfig=str(kubeconfig)),
        counters,
        node_name=NODE,
        clock=clock,
        backoff_initial_s=0.02,
        backoff_max_s=0.05,
    )
    src.start()
    try:
        started(api)
        reports = Reports()
        req = request(uid, "app", app)
        src.watch(req, reports)
        assert reports.wait_for(req.key).ok
    finally:
        src.shutdown()
    assert counters.get(semconv.KUBERNETES_API_ERRORS) == 3
    assert counters.get(semconv.KUBERNETES_WATCH_RESTARTS) == 3


def test_a_watch_ended_by_the_server_is_renewed_without_counting_a_restart(
    api: FakeKubeAPI, kubeconfig: Path, clock: FakeClock, counters: Counters
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)
    src = KubernetesSource(
        ReadinessConfig(kubernetes=True, kubeconfig=str(kubeconfig)),
        counters,
        node_name=NODE,
        clock=clock,
        watch_timeout_s=1,
    )
    src.start()
    try:
        started(api)
        deadline = time.monotonic() + WAIT_S
        while len([r for r in api.requests() if r.watch]) < 2:  # the first one timed out
            assert time.monotonic() < deadline, "the watch was not renewed"
            time.sleep(0.02)
        started(api)
        reports = Reports()
        req = request(uid, "app", app)
        src.watch(req, reports)
        api.put_pod(set_container(pod, "app", ready=True))
        assert reports.wait_for(req.key).ok
    finally:
        src.shutdown()
    assert counters.get(semconv.KUBERNETES_WATCH_RESTARTS) == 0
    assert counters.get(semconv.KUBERNETES_API_ERRORS) == 0
    assert api.requests()[1].query["timeoutSeconds"] == "1"


# -- deadlines, cancel, shutdown --------------------------------------------------------------
def test_not_ready_by_the_deadline_is_reported_not_ok(
    api: FakeKubeAPI, source: KubernetesSource, clock: FakeClock
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)
    started(api)
    reports = Reports()
    req = request(uid, "app", app, deadline_ns=T0 + 10 * 1_000_000_000)
    source.watch(req, reports)
    barrier(api, source, reports)
    assert reports.of(req.key) == []
    at = clock.advance(11)
    signal = reports.wait_for(req.key)
    assert (signal.ok, signal.at_ns, signal.source) == (False, at, SOURCE_KUBERNETES)
    assert "not ready by the deadline" in signal.reason
    assert "app of pod default/web-0 not ready" in signal.reason

    api.put_pod(set_container(pod, "app", ready=True))  # too late: one verdict only
    barrier(api, source, reports)
    assert len(reports.of(req.key)) == 1


def test_cancel_reports_nothing(api: FakeKubeAPI, source: KubernetesSource) -> None:
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)
    started(api)
    reports = Reports()
    req = request(uid, "app", app)
    source.watch(req, reports)
    source.cancel(req.key)
    source.cancel(req.key)  # twice: harmless
    api.put_pod(set_container(pod, "app", ready=True))
    barrier(api, source, reports)
    assert reports.of(req.key) == []


def test_nothing_is_reported_after_shutdown(
    api: FakeKubeAPI, kubeconfig: Path, clock: FakeClock
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)
    src = KubernetesSource(
        ReadinessConfig(kubernetes=True, kubeconfig=str(kubeconfig)),
        Counters(),
        node_name=NODE,
        clock=clock,
    )
    src.start()
    started(api)
    reports = Reports()
    req = request(uid, "app", app, deadline_ns=T0 + 1)
    began = time.monotonic()
    src.shutdown()
    assert time.monotonic() - began < 2.0  # the blocked watch read was cut
    src.shutdown()  # idempotent
    src.watch(req, reports)
    clock.advance(10)  # past the deadline
    api.put_pod(set_container(pod, "app", ready=True))
    assert not src.applies(req.info)
    assert reports.signals == []
    assert api.wait_watching(0)


def test_shutdown_without_start(kubeconfig: Path) -> None:
    src = KubernetesSource(
        ReadinessConfig(kubernetes=True, kubeconfig=str(kubeconfig)), Counters(), node_name=NODE
    )
    src.shutdown()
    src.shutdown()


# -- which pods and containers ----------------------------------------------------------------
def test_pods_of_other_nodes_are_not_seen(
    api: FakeKubeAPI, source: KubernetesSource, clock: FakeClock
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    api.put_pod(
        make_pod("web-0", uid=uid, node_name="node-b", containers=[ContainerSpec("app", app, True)])
    )
    started(api)
    reports = Reports()
    req = request(uid, "app", app, deadline_ns=T0 + 1_000_000_000)
    source.watch(req, reports)
    barrier(api, source, reports)
    assert reports.of(req.key) == []
    clock.advance(2)
    signal = reports.wait_for(req.key)
    assert not signal.ok
    assert f"not seen on node {NODE}" in signal.reason
    for r in api.requests():
        assert r.query["fieldSelector"] == f"spec.nodeName={NODE}"


def test_applies_to_app_containers_of_pods_only(source: KubernetesSource) -> None:
    uid, app = str(uuid.uuid4()), cid()
    assert source.applies(request(uid, "app", app).info)
    assert not source.applies(request(uid, "", app, kind="sandbox").info)
    assert not source.applies(request(uid, "", app).info)  # no container name
    assert not source.applies(request("", "app", app).info)  # no pod
    assert not source.applies(ContainerInfo("default", app))  # not a CRI container


def test_disabled_source_applies_to_nothing_and_loads_nothing() -> None:
    src = KubernetesSource(ReadinessConfig(kubernetes=False), Counters(), node_name="")
    assert not src.applies(request(str(uuid.uuid4()), "app", cid()).info)
    src.start()
    src.shutdown()


# -- configuration and credentials ------------------------------------------------------------
def test_the_kubeconfig_file_is_used_with_its_token(
    api: FakeKubeAPI, source: KubernetesSource
) -> None:
    started(api)
    requests = api.requests()
    assert requests
    assert all(r.authorization == f"Bearer {api.token}" for r in requests)
    assert all(r.path == "/api/v1/pods" for r in requests)


def test_a_refused_bridge_falls_back_to_other_sources(
    api: FakeKubeAPI, tmp_path: Path, counters: Counters
) -> None:
    """401/403 (no RBAC): the source stops applying until it can watch again."""
    token = api.token
    api.token = "another-token"
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    api.token = token  # the kubeconfig's token is now refused
    src = KubernetesSource(
        ReadinessConfig(kubernetes=True, kubeconfig=str(kubeconfig)),
        counters,
        node_name=NODE,
        backoff_initial_s=0.02,
        backoff_max_s=0.05,
    )
    info = request(str(uuid.uuid4()), "app", cid()).info
    src.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while src.applies(info):
            assert time.monotonic() < deadline, "still applies while refused"
            time.sleep(0.01)
        assert counters.get(semconv.KUBERNETES_API_ERRORS) >= 1
        api.token = "another-token"  # RBAC fixed: the next attempt is let in
        started(api)
        while not src.applies(info):
            assert time.monotonic() < deadline + WAIT_S, "does not apply again"
            time.sleep(0.01)
    finally:
        src.shutdown()


def test_configuration_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NODE_NAME"):
        KubernetesSource(ReadinessConfig(kubernetes=True), Counters(), node_name="")
    with pytest.raises(ConfigError, match=r"readiness\.kubeconfig"):
        KubernetesSource(
            ReadinessConfig(kubernetes=True, kubeconfig=str(tmp_path / "missing")),
            Counters(),
            node_name=NODE,
        )
    with pytest.raises(ConfigError, match="in-cluster"):
        KubernetesSource(
            ReadinessConfig(kubernetes=True),
            Counters(),
            node_name=NODE,
            environ={},
            service_account_dir=str(tmp_path),
        )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_in_cluster_configuration(tls_files: tuple[Path, Path], tmp_path: Path) -> None:
    """Empty ``kubeconfig``: the service account's token and CA, the API server from
    KUBERNETES_SERVICE_HOST/PORT, over HTTPS as in a pod."""
    cert, key = tls_files
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("in-cluster-token")
    shutil.copy(cert, account / "ca.crt")
    with FakeKubeAPI(token="in-cluster-token", tls=(str(cert), str(key))) as api:
        uid, app = str(uuid.uuid4()), cid()
        api.put_pod(make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app, True)]))
        src = KubernetesSource(
            ReadinessConfig(kubernetes=True),
            Counters(),
            node_name=NODE,
            environ={
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(api.port),
            },
            service_account_dir=str(account),
        )
        src.start()
        try:
            started(api)
            reports = Reports()
            req = request(uid, "app", app, deadline_ns=time.time_ns() + 60 * 1_000_000_000)
            src.watch(req, reports)
            assert reports.wait_for(req.key).ok
        finally:
            src.shutdown()
        assert api.requests()[0].authorization.lower() == "bearer in-cluster-token"


# -- the stand-in itself, on the wire ---------------------------------------------------------
def raw_get(api: FakeKubeAPI, target: str) -> tuple[int, str, list[dict[str, object]]]:
    """(status, Transfer-Encoding, JSON documents of the body, one per line)."""
    conn = http.client.HTTPConnection(api.host, api.port, timeout=WAIT_S)
    try:
        conn.request("GET", target, headers={"Authorization": f"Bearer {api.token}"})
        response = conn.getresponse()
        body = response.read()  # http.client undoes the chunking
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        return response.status, response.getheader("Transfer-Encoding") or "", lines
    finally:
        conn.close()


def test_the_stand_in_speaks_list_and_watch_as_the_api_server(api: FakeKubeAPI) -> None:
    here, there = str(uuid.uuid4()), str(uuid.uuid4())
    pod = make_pod("web-0", uid=here, containers=[ContainerSpec("app", cid())])
    first = api.put_pod(pod)
    api.put_pod(make_pod("db-0", uid=there, node_name="node-b"))
    api.put_pod(set_container(pod, "app", ready=True))
    api.delete_pod(here)
    selector = "fieldSelector=spec.nodeName%3Dnode-a"

    status, _, [listing] = raw_get(api, f"/api/v1/pods?{selector}")
    assert status == 200
    assert listing["kind"] == "PodList"
    assert listing["items"] == []  # web-0 deleted, db-0 on another node
    assert listing["metadata"] == {"resourceVersion": str(api.resource_version)}

    # from before the first change, with a timeout so the stream ends: the history
    status, chunked, events = raw_get(
        api, f"/api/v1/pods?{selector}&watch=true&resourceVersion={first - 1}&timeoutSeconds=1"
    )
    assert (status, chunked) == (200, "chunked")
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]
    modified = events[1]["object"]
    assert isinstance(modified, dict)
    assert modified["status"]["containerStatuses"][0]["ready"] is True
    assert modified["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")

    api.compact()
    status, _, events = raw_get(api, f"/api/v1/pods?watch=true&resourceVersion={first}")
    assert status == 200
    assert [e["type"] for e in events] == ["ERROR"]
    error = events[0]["object"]
    assert isinstance(error, dict)
    assert (error["kind"], error["code"], error["reason"]) == ("Status", 410, "Expired")

    api.gone_as_http = True
    status, _, [body] = raw_get(api, f"/api/v1/pods?watch=true&resourceVersion={first}")
    assert (status, body["code"]) == (410, 410)


# -- through the pipeline ---------------------------------------------------------------------
class Envelopes:
    """A pipeline Source that offers some envelopes, then waits to be stopped."""

    def __init__(self, envelopes: list[RawEnvelope]) -> None:
        self.envelopes = envelopes

    def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None:
        for envelope in self.envelopes:
            sink(envelope)
        stop.wait()


def test_through_the_pipeline_readiness_wait_ends_when_the_kubelet_says_ready(
    api: FakeKubeAPI, kubeconfig: Path
) -> None:
    uid, app = str(uuid.uuid4()), cid()
    pod = make_pod("web-0", uid=uid, containers=[ContainerSpec("app", app)])
    api.put_pod(pod)

    def lookup(namespace: str, container_id: str) -> ContainerInfo:
        return request(uid, "app", container_id).info

    done: list[StartupRecord] = []
    arrived = threading.Event()
    counters = Counters()
    src = KubernetesSource(
        ReadinessConfig(kubernetes=True, kubeconfig=str(kubeconfig)), counters, node_name=NODE
    )
    p = Pipeline(
        Config(state=StateConfig(dir="")),
        Sink(),
        counters,
        lookup=lookup,
        readiness_sources=[src],
        on_record=lambda record, _spans: (done.append(record), arrived.set()),
    )
    # the container's task started a second ago; the pipeline arms the source
    envelopes = Timeline(start_ns=time.time_ns() - 1_000_000_000, ns=NS).run_container(
        app, remove=False
    )[:4]
    p.start(Envelopes(envelopes))
    try:
        started(api)
        assert done == []  # started, not ready: waiting for the kubelet
        # armed by now or not, the moment is when the source saw the container ready
        before = time.time_ns()
        api.put_pod(set_container(pod, "app", ready=True))
        assert arrived.wait(WAIT_S)
        after = time.time_ns()
    finally:
        p.shutdown()
    [record] = done
    assert record.outcome is Outcome.READY
    assert record.readiness_source == SOURCE_KUBERNETES
    assert record.ready_ns is not None and before <= record.ready_ns <= after
