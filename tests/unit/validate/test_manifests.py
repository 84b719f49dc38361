"""Kubernetes manifests: pod templates found where each kind keeps them, and checked."""

from __future__ import annotations

import textwrap

import pytest

from otelbridge.validate.manifests import is_manifest_json, load_documents, validate_documents
from otelbridge.validate.report import Problem, Unreadable
from tests.unit.validate.helpers import OTHER_TRACEPARENT, RULES, TRACEPARENT, at, codes, rules

PROBE = "readinessProbe: {httpGet: {path: /ready, port: 8080}}"


def workload(kind: str, annotations: str = "", probe: str = PROBE, extra: str = "") -> str:
    """A manifest of ``kind`` whose pod template has ``annotations`` (YAML flow map)."""
    pod = textwrap.dedent(f"""\
        metadata:
          labels: {{app: web}}
          annotations: {{{annotations}}}
        spec:
          containers:
          - name: web
            image: busybox
            {probe}
        """)
    if kind == "Pod":
        body = pod.replace("metadata:\n", "metadata:\n  name: web\n", 1)
        return f"apiVersion: v1\nkind: Pod\n{body}{extra}"
    nested = textwrap.indent(pod, "    ")
    if kind == "CronJob":
        nested = textwrap.indent(pod, "        ")
        spec = f"spec:\n  jobTemplate:\n    spec:\n      template:\n{nested}"
    else:
        spec = f"spec:\n  template:\n{nested}"
    api = "argoproj.io/v1alpha1" if kind == "Rollout" else "apps/v1"
    return f"apiVersion: {api}\nkind: {kind}\nmetadata: {{name: web}}\n{spec}{extra}"


def check(text: str, **validate: object) -> list[Problem]:
    return validate_documents(load_documents(text), rules=rules(**validate) if validate else RULES)


TEMPLATE_AT = {
    "Pod": "metadata",
    "Deployment": "spec.template.metadata",
    "StatefulSet": "spec.template.metadata",
    "DaemonSet": "spec.template.metadata",
    "Job": "spec.template.metadata",
    "CronJob": "spec.jobTemplate.spec.template.metadata",
    "Rollout": "spec.template.metadata",
}


@pytest.mark.parametrize(("kind", "meta"), TEMPLATE_AT.items())
def test_each_kind_pod_template(kind: str, meta: str) -> None:
    good = f'tracing.k8s.io/traceparent: "{TRACEPARENT}"'
    assert check(workload(kind, good), require_trace_context=("default",)) == []
    bad = f'tracing.k8s.io/traceparent: "ff{TRACEPARENT[2:]}"'
    problems = check(workload(kind, bad))
    path = f"{kind}/web: {meta}.annotations.tracing.k8s.io/traceparent"
    assert at(problems, path) == ["traceparent.version_forbidden"], problems
    problems = check(workload(kind), require_trace_context=("def*",))
    assert at(problems, f"{kind}/web: {meta}.annotations") == ["trace.missing"]


def test_other_kinds_are_skipped_and_a_list_is_looked_into() -> None:
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n" + workload("Deployment")
    assert check(text) == []
    items = "kind: List\nitems:\n- {kind: ConfigMap}\n- 3\n"
    assert codes(check(items)) == ["k8s.not_an_object"]
    rollout = workload("Rollout").replace("argoproj.io/v1alpha1", "example.com/v1")
    assert check(rollout.replace(PROBE, "")) == []  # somebody else's Rollout kind


def test_the_namespace_of_the_object_decides() -> None:
    text = workload("Deployment").replace(
        "metadata: {name: web}", "metadata: {name: web, namespace: prod}"
    )
    assert check(text, require_trace_context=("default",)) == []
    assert codes(check(text, require_trace_context=("prod",))) == ["trace.missing"]


def test_readiness() -> None:
    problems = check(workload("Deployment", probe=""))
    assert codes(problems) == ["readiness.probe_missing"]
    assert problems[0].severity == "warning"
    assert problems[0].path == "Deployment/web: spec.template.spec.containers[0].readinessProbe"
    problems = check(workload("Deployment", probe=""), require_readiness=True)
    assert problems[0].severity == "error"
    two = "readinessProbe: {exec: {command: [true]}, tcpSocket: {port: 1}}"
    assert codes(check(workload("Pod", probe=two))) == ["readiness.probe_handler"]
    assert codes(check(workload("Pod", probe="readinessProbe: {periodSeconds: 3}"))) == [
        "readiness.probe_handler"
    ]
    target = "otelbridge.io/readiness: ftp://web:21"
    assert codes(check(workload("Pod", target))) == ["readiness.target_invalid"]
    long = "otelbridge.io/readiness: tcp://" + "a" * 600 + ":1"
    assert codes(check(workload("Pod", long))) == ["readiness.target_too_long"]
    assert check(workload("Pod", "otelbridge.io/readiness: 'tcp://127.0.0.1:5432'")) == []


def test_structure_the_api_server_refuses() -> None:
    assert codes(check("kind: Deployment\nmetadata: {name: d}\nspec: {}\n")) == [
        "k8s.pod_template_missing"
    ]
    no_containers = workload("Pod").split("spec:")[0] + "spec: {containers: []}\n"
    assert codes(check(no_containers)) == ["k8s.containers_missing"]
    unquoted = workload("Pod", "sidecar.istio.io/inject: true")
    problems = check(unquoted)
    assert at(problems, "Pod/web: metadata.annotations.sidecar.istio.io/inject") == [
        "k8s.metadata_type"
    ]
    ref = (
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: r}\n"
        "spec:\n  workloadRef: {kind: Deployment, name: web}\n"
    )
    assert codes(check(ref)) == ["k8s.workload_ref"]


def test_trace_context_in_the_wrong_place() -> None:
    on_workload = workload("Deployment").replace(
        "metadata: {name: web}",
        f"metadata: {{name: web, annotations: {{tracing.k8s.io/traceparent: '{TRACEPARENT}'}}}}",
    )
    problems = check(on_workload)
    assert at(problems, "Deployment/web: metadata.annotations.tracing.k8s.io/traceparent") == [
        "trace.not_on_pod"
    ]
    pod = {
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {
            "containers": [
                {
                    "name": "web",
                    "readinessProbe": {"tcpSocket": {"port": 1}},
                    "env": [{"name": "X", "value": "1"}, {"name": "TRACEPARENT", "value": "x"}],
                }
            ]
        },
    }
    problems = validate_documents([pod], rules=RULES)
    assert at(problems, "Pod/web: spec.containers[0].env[1]") == ["trace.not_on_pod"]
    assert at(problems, "Pod/web: spec.containers[0].env[1].value") == [
        "traceparent.version_format"
    ]
    both = f"tracing.k8s.io/traceparent: '{TRACEPARENT}', traceparent: '{OTHER_TRACEPARENT}'"
    problems = check(workload("Pod", both))
    assert at(problems, "Pod/web: metadata.annotations.traceparent") == ["trace.shadowed"]
    alone = "tracing.k8s.io/tracestate: 'a=1'"
    assert codes(check(workload("Pod", alone))) == ["trace.tracestate_alone"]


def test_unreadable_yaml_and_json_detection() -> None:
    with pytest.raises(Unreadable, match="line 2"):
        load_documents("a: 1\n  b: [\n")
    assert load_documents("---\n---\nkind: Pod\n") == [{"kind": "Pod"}]
    assert is_manifest_json({"kind": "Pod"})
    assert not is_manifest_json({"kind": "Pod", "ociVersion": "1.0.2"})
    assert not is_manifest_json({"ociVersion": "1.0.2"})


@pytest.mark.parametrize(
    "doc",
    [
        None,
        3,
        "x",
        [],
        {"kind": 3},
        {"kind": "Pod", "metadata": []},
        {"kind": "Pod", "spec": {"containers": [3, None]}},
    ],
)
def test_never_raises_on_odd_documents(doc: object) -> None:
    validate_documents([doc], rules=RULES)
