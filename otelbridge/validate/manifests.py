"""Kubernetes manifests: each workload's pod template against the contract.

A manifest is YAML (any number of documents) or JSON. Every document that is an object
with a ``kind`` is looked at; a ``List`` is looked into (its ``items``). The pod template
of a workload is found where its API puts it:

=============================================================  ==============================
kinds                                                          pod template
=============================================================  ==============================
``Pod``                                                        the object itself
``Deployment``, ``StatefulSet``, ``DaemonSet``, ``ReplicaSet``,  ``spec.template``
``ReplicationController``, ``Job``, Argo ``Rollout``
``CronJob``                                                    ``spec.jobTemplate.spec.template``
``PodTemplate``                                                ``template``
=============================================================  ==============================

Other kinds (Services, ConfigMaps ...) are skipped. An Argo Rollout that references its
pod template (``spec.workloadRef``) instead of holding it is a warning: check that
workload's own manifest.

For each pod template, as the bridge sees the pod once it runs (docs/kubernetes.md): the
pod's annotations, then its labels, carry the trace context, the readiness target and the
tenant limits (:mod:`otelbridge.validate.contract`); a traceparent is required where
``[validate] require_trace_context`` matches the object's ``metadata.namespace`` (else the
default namespace given: ``--namespace``, else ``default``). A traceparent put only on the
workload object or in a container's ``env`` is not read by the bridge for a pod: a warning
(and an error when the value is invalid). Every container of ``spec.containers`` should
declare a ``readinessProbe`` with exactly one handler.

Paths name the object and the field: ``Deployment/web: spec.template.metadata.annotations.
tracing.k8s.io/traceparent``. Functions never raise on any value a YAML or JSON parser
returns; :func:`load_documents` raises :class:`~otelbridge.validate.report.Unreadable`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

from otelbridge.validate.codes import ERROR
from otelbridge.validate.contract import (
    Carrier,
    Rules,
    check_limits,
    check_readiness_target,
    check_trace,
    check_traceparent_value,
    map_carrier,
)
from otelbridge.validate.report import Problem, Unreadable, problem, shown

__all__ = [
    "DEFAULT_NAMESPACE",
    "POD_TEMPLATES",
    "is_manifest_json",
    "load_documents",
    "validate_documents",
]

#: The namespace of an object without ``metadata.namespace`` when none is given.
DEFAULT_NAMESPACE: Final = "default"

#: Where each workload kind keeps its pod template (empty: the object is the pod).
POD_TEMPLATES: Final[dict[str, tuple[str, ...]]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
    "Rollout": ("spec", "template"),
}
_ARGO_GROUP: Final = "argoproj.io/"
_PROBE_HANDLERS: Final = ("exec", "httpGet", "tcpSocket", "grpc")
_MAX_LIST_DEPTH: Final = 4  # a List inside a List inside ...: kubectl nests none

# PyYAML (installed with the kubernetes client) ships no type hints, and the project's type
# checks run without its stub package: imported untyped, on purpose
yaml: Any = importlib.import_module("yaml")
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_documents(text: str) -> list[object]:
    """The documents of a YAML (or JSON) text, empty ones left out; raises
    :class:`Unreadable` saying where the text is not YAML."""
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise Unreadable(f"not valid YAML{where}: {exc.problem or exc}") from exc
    except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # ValueError: a timestamp-looking scalar that is no date; RecursionError: nesting
        raise Unreadable(f"not valid YAML: {type(exc).__name__}: {exc}") from exc
    return [doc for doc in docs if doc is not None]


def _type_name(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return "null" if value is None else type(value).__name__


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Document:
    """The problems of one top-level document (or a List's item)."""

    def __init__(self, rules: Rules, namespace: str) -> None:
        self.rules = rules
        self.namespace = namespace
        self.problems: list[Problem] = []

    def add(self, code: str, path: str, message: str, **kw: Any) -> None:
        self.problems.append(problem(code, path, message, **kw))

    def strings(self, meta: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
        """``meta[key]`` as a map of strings; what is not (non-string keys or values, not
        a map) is ``k8s.metadata_type``. A null value counts as absent."""
        value = meta.get(key)
        path = _dotted(where, key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add("k8s.metadata_type", path, f"a map of strings, not {_type_name(value)}")
            return {}
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.add("k8s.metadata_type", path, f"a key that is {_type_name(k)}: quote it")
            elif isinstance(v, str):
                out[k] = v
            elif v is not None:
                self.add(
                    "k8s.metadata_type",
                    f"{path}.{k}",
                    f"a string, not {_type_name(v)}: quote the value",
                )
        return out

    def kube_object(self, obj: Mapping[str, Any], label: str, depth: int) -> None:
        kind = obj["kind"]
        if kind == "List" and depth < _MAX_LIST_DEPTH:
            items = obj.get("items")
            for i, item in enumerate(items if isinstance(items, list) else ()):
                self.item(item, f"{label}: items[{i}]", depth + 1)
            return
        template_at = POD_TEMPLATES.get(kind)
        api = obj.get("apiVersion")
        if template_at is None or (
            kind == "Rollout" and not (isinstance(api, str) and api.startswith(_ARGO_GROUP))
        ):
            return
        meta = obj.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            generated = meta.get("generateName")
            name = f"{generated}*" if isinstance(generated, str) and generated else label
        who = f"{kind}/{name}"
        ns = meta.get("namespace")
        namespace = ns if isinstance(ns, str) and ns else self.namespace
        template: Any = obj
        path = ""
        for step in template_at:
            path = _dotted(path, step)
            template = template.get(step) if isinstance(template, dict) else None
        if kind == "Rollout" and template is None:
            spec = obj.get("spec")
            if isinstance(spec, dict) and spec.get("workloadRef") is not None:
                self.add(
                    "k8s.workload_ref",
                    f"{who}: spec.workloadRef",
                    "the pod template lives in the referenced workload: validate its manifest",
                )
                return
        if not isinstance(template, dict):
            self.add(
                "k8s.pod_template_missing",
                f"{who}: {path}",
                f"a {kind} needs its pod template here, not {_type_name(template)}",
            )
            return
        self.pod(template, who, path, namespace, workload=None if kind == "Pod" else meta)

    def item(self, item: object, label: str, depth: int) -> None:
        if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
            self.add(
                "k8s.not_an_object",
                label,
                f"a Kubernetes object with a string kind, not {_type_name(item)}",
            )
            return
        self.kube_object(item, label, depth)

    def pod(
        self,
        template: Mapping[str, Any],
        who: str,
        path: str,
        namespace: str,
        workload: Mapping[str, Any] | None,
    ) -> None:
        meta_path = _dotted(path, "metadata")
        meta = template.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            self.add(
                "k8s.metadata_type", f"{who}: {meta_path}", f"an object, not {_type_name(meta)}"
            )
        meta = meta if isinstance(meta, dict) else {}
        where = f"{who}: {meta_path}"
        carriers: list[Carrier] = [
            map_carrier(
                "pod_annotation", f"{where}.annotations", self.strings(meta, "annotations", where)
            ),
            map_carrier(
                "label", f"{where}.labels", self.strings(meta, "labels", where), labels=True
            ),
        ]
        rules = self.rules
        self.problems += check_trace(
            carriers, rules, namespace=namespace, missing_path=f"{where}.annotations"
        )
        has_trace = any(tp in c.values for c in carriers for tp, _ in rules.traceparent_keys)
        if workload is not None:
            self.workload_trace(workload, who, has_trace)
        self.problems += check_readiness_target(carriers, rules)
        self.problems += check_limits(carriers, rules)
        spec_path = _dotted(path, "spec")
        spec = template.get("spec")
        if not isinstance(spec, dict):
            self.add(
                "k8s.pod_template_missing",
                f"{who}: {spec_path}",
                f"a pod spec, not {_type_name(spec)}",
            )
            return
        containers = spec.get("containers")
        if not isinstance(containers, list) or not containers:
            self.add(
                "k8s.containers_missing",
                f"{who}: {spec_path}.containers",
                "a pod needs a non-empty list of containers",
            )
            return
        for i, container in enumerate(containers):
            self.container(container, f"{who}: {spec_path}.containers[{i}]")

    def workload_trace(self, meta: Mapping[str, Any], who: str, template_has_trace: bool) -> None:
        """A traceparent on the workload object itself: valid, and not a substitute."""
        for key in ("annotations", "labels"):
            values = meta.get(key)
            if not isinstance(values, dict):
                continue  # not the pod's: its types are the API server's business
            for tp, _ in self.rules.traceparent_keys:
                value = values.get(tp)
                if not isinstance(value, str):
                    continue
                path = f"{who}: metadata.{key}.{tp}"
                self.problems += check_traceparent_value(value, path)
                if not template_has_trace:
                    self.add(
                        "trace.not_on_pod",
                        path,
                        "on the workload object, not its pod template: the bridge reads the "
                        "pod's annotations (otelbridge rollout annotate prints the patch)",
                    )

    def container(self, container: object, path: str) -> None:
        if not isinstance(container, dict):
            self.add("k8s.metadata_type", path, f"a container object, not {_type_name(container)}")
            return
        name = container.get("name")
        called = shown(name) if isinstance(name, str) else "(unnamed)"
        probe = container.get("readinessProbe")
        if probe is None:
            self.add(
                "readiness.probe_missing",
                f"{path}.readinessProbe",
                f"container {called} declares no readinessProbe: Kubernetes, and the bridge's "
                "kubernetes readiness source, count it ready as soon as it started",
                severity=ERROR if self.rules.require_readiness else None,
            )
        elif not isinstance(probe, dict):
            self.add(
                "k8s.metadata_type", f"{path}.readinessProbe", f"an object, not {_type_name(probe)}"
            )
        else:
            handlers = [h for h in _PROBE_HANDLERS if probe.get(h) is not None]
            if len(handlers) != 1:
                self.add(
                    "readiness.probe_handler",
                    f"{path}.readinessProbe",
                    f"exactly one of {', '.join(_PROBE_HANDLERS)}, not "
                    f"{', '.join(handlers) or 'none'}",
                )
        self.env(container.get("env"), f"{path}.env")

    def env(self, env: object, path: str) -> None:
        if env is None:
            return
        if not isinstance(env, list):
            self.add("k8s.metadata_type", path, f"a list of variables, not {_type_name(env)}")
            return
        names = {name for pair in self.rules.env_keys for name in pair}
        traceparents = {tp for tp, _ in self.rules.env_keys}
        for i, var in enumerate(env):
            if not isinstance(var, dict):
                self.add("k8s.metadata_type", f"{path}[{i}]", f"an object, not {_type_name(var)}")
                continue
            name, value = var.get("name"), var.get("value")
            if not isinstance(name, str) or name not in names:
                continue
            where = f"{path}[{i}]"
            if isinstance(value, str) and name in traceparents:
                self.problems += check_traceparent_value(value, f"{where}.value")
            self.add(
                "trace.not_on_pod",
                where,
                f"{name} on a pod's container is not read by the bridge (a pod's containers "
                "follow the pod): put it on the pod template's annotations",
            )


def validate_documents(
    docs: Sequence[object], *, rules: Rules, namespace: str = DEFAULT_NAMESPACE
) -> list[Problem]:
    """Every problem of a manifest's documents (the module docstring); ``namespace`` is
    the namespace of objects that name none. Never raises."""
    problems: list[Problem] = []
    for index, doc in enumerate(docs):
        checker = _Document(rules, namespace)
        checker.item(doc, f"document {index + 1}", 0)
        problems += checker.problems
    return problems


def is_manifest_json(doc: object) -> bool:
    """Whether a decoded JSON document is a Kubernetes object rather than an OCI spec."""
    return isinstance(doc, dict) and isinstance(doc.get("kind"), str) and "ociVersion" not in doc
