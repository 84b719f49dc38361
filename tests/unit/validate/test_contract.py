"""The contract checks shared by every input, and a live container record judged by them."""

from __future__ import annotations

from otelbridge.core.config import Config, EnrichConfig
from otelbridge.core.model import ContainerInfo, CriInfo
from otelbridge.validate.contract import (
    Rules,
    check_limits,
    check_readiness_target,
    check_trace,
    env_carrier,
    map_carrier,
)
from otelbridge.validate.live import container_problems, validate_live
from tests.unit.validate.helpers import OTHER_TRACEPARENT, RULES, TRACEPARENT, at, codes, rules


def test_the_bridge_order_decides_which_traceparent_is_used() -> None:
    labels = map_carrier("label", "labels", {"traceparent": TRACEPARENT})
    env = env_carrier("env", "process.env", [("process.env[0]", "TRACEPARENT", OTHER_TRACEPARENT)])
    problems = check_trace([labels, env], RULES, namespace="default", missing_path="labels")
    assert at(problems, "process.env[0]") == ["trace.shadowed"]
    same = env_carrier("env", "process.env", [("process.env[0]", "TRACEPARENT", TRACEPARENT)])
    assert check_trace([labels, same], RULES, namespace="default", missing_path="labels") == []


def test_a_tracestate_of_40_members() -> None:
    state = ",".join(f"k{i}=v" for i in range(40))
    carrier = map_carrier("a", "annotations", {"traceparent": TRACEPARENT, "tracestate": state})
    problems = check_trace([carrier], RULES, namespace="x", missing_path="annotations")
    assert at(problems, "annotations.tracestate") == ["tracestate.too_many_members"]


def test_the_configured_keys_are_the_ones_read() -> None:
    custom = Rules.from_config(Config(enrich=EnrichConfig(traceparent_keys=("acme/traceparent",))))
    carrier = map_carrier("a", "annotations", {"traceparent": "junk"})
    assert check_trace([carrier], custom, namespace="x", missing_path="annotations") == []
    carrier = map_carrier("a", "annotations", {"acme/traceparent": "junk"})
    problems = check_trace([carrier], custom, namespace="x", missing_path="annotations")
    assert codes(problems) == ["traceparent.version_format"]


def test_readiness_target_uses_the_probe_parser() -> None:
    for good in ("tcp://127.0.0.1:80", "http://web:8080/ready?x=1", "tcp://[::1]:5432"):
        assert (
            check_readiness_target(
                [map_carrier("a", "a", {"otelbridge.io/readiness": good})], RULES
            )
            == []
        )
    for bad in ("ftp://web:21", "tcp://web", "http://u:p@web:80/", "tcp://web:80/x", "web:80"):
        carrier = map_carrier("a", "a", {"otelbridge.io/readiness": bad})
        assert codes(check_readiness_target([carrier], RULES)) == ["readiness.target_invalid"], bad


def test_label_limits() -> None:
    limited = Rules.from_config(
        Config(
            enrich=EnrichConfig(
                label_attributes=("team*", "x*"), max_label_attributes=2, max_attribute_length=8
            )
        )
    )
    values = {"team": "a", "team.b": "long value here", "team.c": "c", "x" * 200: "v", "other": "z"}
    labels = map_carrier("label", "labels", values, labels=True)
    problems = check_limits([labels], limited)
    assert at(problems, "labels.team.b") == ["limits.value_length"]
    assert at(problems, f"labels.{'x' * 200}") == ["limits.label_key"]
    assert at(problems, "labels") == ["limits.label_count"]
    assert check_limits([labels], RULES) == []  # nothing selected by default
    assert codes(check_limits([map_carrier("a", "a", {"k": "a\nb"})], RULES)) == [
        "limits.control_characters"
    ]


def test_a_live_cri_pod_and_its_containers() -> None:
    sandbox = ContainerInfo(
        namespace="k8s.io",
        id="pod1",
        cri=CriInfo(kind="sandbox", sandbox_id="pod1", pod_annotations={"traceparent": "bad"}),
    )
    problems = container_problems(sandbox, RULES)
    assert at(problems, "pod.metadata.annotations.traceparent") == ["traceparent.length"]
    app = ContainerInfo(
        namespace="k8s.io",
        id="c1",
        cri=CriInfo(
            kind="container",
            sandbox_id="pod1",
            annotations={"otelbridge.io/readiness": "ftp://x:1"},
        ),
    )
    required = rules(require_trace_context=("*",))
    assert codes(container_problems(app, required)) == ["readiness.target_invalid"]
    plain = ContainerInfo(namespace="prod", id="c2", env={"TRACEPARENT": TRACEPARENT})
    assert container_problems(plain, required) == []
    assert codes(container_problems(ContainerInfo(namespace="prod", id="c3"), required)) == [
        "trace.missing"
    ]


class _Lister:
    def list_namespaces(self) -> list[str]:
        return ["default"]

    def list_containers(self, namespace: str) -> list[ContainerInfo]:
        return [ContainerInfo(namespace=namespace, id=i) for i in ("b", "a")]


def test_validate_live_targets() -> None:
    results = validate_live(_Lister(), ["default", "gone"], RULES, address="/s.sock")
    assert [(r.target, r.error) for r in results] == [
        ("default/a", None),
        ("default/b", None),
        ("gone/", "containerd at /s.sock has no namespace 'gone'"),
    ]
