"""Source (a): a running bridge's /v1/sla, from a tiny local server."""

from __future__ import annotations

import json

import pytest

from otelbridge.report import ReportError, from_bridge, sla_url
from otelbridge.report.bridge import fetch_json
from tests.unit.report.conftest import RECORDED, Server, closed_port

NOW = 1_800_000_000_000_000_000


@pytest.mark.parametrize(
    ("value", "addr", "url"),
    [
        (None, "127.0.0.1:9464", "http://127.0.0.1:9464/v1/sla"),
        (None, "0.0.0.0:9000", "http://127.0.0.1:9000/v1/sla"),
        (None, "[::]:9000", "http://127.0.0.1:9000/v1/sla"),
        (None, "[::1]:9464", "http://[::1]:9464/v1/sla"),
        ("", "10.0.0.5:9464", "http://10.0.0.5:9464/v1/sla"),
        ("node-1:9464", "x", "http://node-1:9464/v1/sla"),
        ("http://node-1:9464", "x", "http://node-1:9464/v1/sla"),
        ("http://node-1:9464/", "x", "http://node-1:9464/v1/sla"),
        ("https://proxy/nodes/1/v1/sla?x=1", "x", "https://proxy/nodes/1/v1/sla?x=1"),
    ],
)
def test_the_url_to_ask(value: str | None, addr: str, url: str) -> None:
    assert sla_url(value, addr) == url


@pytest.mark.parametrize(
    ("value", "addr"), [(None, "nonsense"), ("ftp://h/x", "x"), ("http://", "x")]
)
def test_a_url_that_cannot_be_asked_is_refused(value: str | None, addr: str) -> None:
    with pytest.raises(ReportError):
        sla_url(value, addr)


def test_the_recorded_answer_becomes_a_report(bridge: Server) -> None:
    report = from_bridge(bridge.url(), generated_at_ns=NOW)
    assert report.kind == "api" and not report.has_spans
    assert report.source == bridge.url()
    assert report.verdict_json == json.loads(RECORDED.read_text())
    assert [(ns.name, ns.verdict) for ns in report.namespaces] == [
        ("slow", "breach"),
        ("few", "insufficient"),
        ("fast", "pass"),
    ]
    assert (report.window_s, report.min_samples, report.coverage_min) == (300.0, 5, 0.9)
    assert report.budgets == {
        "startup_duration": 4.0,
        "shim_launch_time": 2.0,
        "task_create_to_ready": 1.0,
    }
    slow = report.namespaces[0]
    assert slow.broken == ["task_create_to_ready"]
    assert slow.samples == {} and slow.slowest == () and slow.gc is None
    assert slow.gc_figures["reclaims"] == 6
    assert report.verdict == "breach"


def test_namespaces_can_be_chosen(bridge: Server) -> None:
    report = from_bridge(bridge.url(), generated_at_ns=NOW, namespaces=["fast"])
    assert [ns.name for ns in report.namespaces] == ["fast"]
    assert list(report.verdict_json["namespaces"]) == ["fast"]
    assert report.verdict == "pass"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/nothing", r"answered 404 Not Found: is it an otelbridge status API"),
        ("/broken", r"answered 500"),
        ("/text", r"did not answer JSON"),
        ("/shape", r"did not answer verdicts as /v1/sla does: budgets: expected an object"),
    ],
)
def test_a_wrong_answer_is_one_clear_line(bridge: Server, path: str, message: str) -> None:
    with pytest.raises(ReportError, match=message) as caught:
        from_bridge(bridge.url(path), generated_at_ns=NOW)
    assert "\n" not in str(caught.value)


def test_a_bridge_that_does_not_answer_in_time(bridge: Server) -> None:
    with pytest.raises(ReportError, match=r"did not answer within 0.2 s"):
        fetch_json(bridge.url("/slow"), timeout_s=0.2)


def test_a_bridge_that_is_not_there() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1/sla"
    with pytest.raises(ReportError, match=r"cannot reach the bridge at .*: Connection refused"):
        from_bridge(url, generated_at_ns=NOW)


def test_loopback_is_asked_directly_whatever_the_proxy_says(
    bridge: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    assert from_bridge(bridge.url(), generated_at_ns=NOW).namespaces
