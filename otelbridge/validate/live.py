"""Live containers: the metadata of a namespace's containers, read from containerd.

Read-only, through :class:`otelbridge.containerd.client.ContainerdClient` (its allow-list
of read methods): ``Namespaces/List`` and ``Containers/ListStream``. A container record
gives what the bridge reads (PRODUCT.md section 5), and the checks are the bridge's:

* a non-CRI container: labels, then OCI annotations (``spec.annotations``), then the
  process environment (``spec.process.env``; only ``TRACEPARENT``/``TRACESTATE`` are read,
  the rest may hold secrets) for the trace context; labels and annotations for the
  readiness target and the tenant limits;
* a CRI sandbox (a Kubernetes pod): the pod's annotations (``pod.metadata.annotations``,
  from the sandbox record's extension) first, then its labels and annotations;
* a CRI app container follows its pod's trace context: only its readiness target and
  limits are checked (its container annotations, ``cri.annotations``, included).

A traceparent is required where ``[validate] require_trace_context`` matches the
*containerd* namespace. The OCI spec of a live container is not re-checked: the runtime
already accepted it. Each container is one target, ``NAMESPACE/ID``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from otelbridge.core.errors import ContainerdError
from otelbridge.core.model import ContainerInfo
from otelbridge.validate.contract import (
    Carrier,
    Rules,
    check_limits,
    check_readiness_target,
    check_trace,
    map_carrier,
)
from otelbridge.validate.report import Problem, TargetResult

__all__ = ["Lister", "container_problems", "validate_live"]


class Lister(Protocol):
    """What the live check needs of a containerd client (the read-only client has it)."""

    def list_namespaces(self) -> list[str]: ...

    def list_containers(self, namespace: str) -> list[ContainerInfo]: ...


def container_problems(info: ContainerInfo, rules: Rules) -> list[Problem]:
    """The contract problems of one container record (the module docstring)."""
    cri = info.cri
    labels = map_carrier("label", "labels", info.labels, labels=True)
    annotations = map_carrier("annotation", "spec.annotations", info.annotations)
    env = Carrier(
        "env",
        "spec.process.env",
        info.env,
        is_env=True,
        paths={k: f"spec.process.env.{k}" for k in info.env},
    )
    metadata: list[Carrier] = [labels, annotations]
    problems: list[Problem] = []
    if cri is not None and cri.kind == "container":
        own = map_carrier("cri_annotation", "cri.annotations", cri.annotations)
        metadata.append(own)
    else:
        trace_carriers = [labels, annotations, env]
        if cri is not None:
            pod = map_carrier("pod_annotation", "pod.metadata.annotations", cri.pod_annotations)
            trace_carriers.insert(0, pod)
            metadata.insert(0, pod)
        problems += check_trace(
            trace_carriers,
            rules,
            namespace=info.namespace,
            missing_path="pod.metadata.annotations" if cri is not None else "labels",
        )
    problems += check_readiness_target(metadata, rules)
    problems += check_limits(metadata, rules)
    return problems


def validate_live(
    client: Lister, namespaces: Sequence[str], rules: Rules, *, address: str
) -> list[TargetResult]:
    """One target per container of each of ``namespaces``; a namespace containerd does not
    know, or containerd failing, is an unreadable target (named by ``address``)."""
    try:
        known = set(client.list_namespaces())
    except ContainerdError as exc:
        return [TargetResult(f"containerd at {address}", error=str(exc))]
    results: list[TargetResult] = []
    for namespace in namespaces:
        if namespace not in known:
            results.append(
                TargetResult(
                    f"{namespace}/",
                    error=f"containerd at {address} has no namespace {namespace!r}",
                )
            )
            continue
        try:
            infos = client.list_containers(namespace)
        except ContainerdError as exc:
            results.append(TargetResult(f"{namespace}/", error=str(exc)))
            continue
        for info in sorted(infos, key=lambda i: i.id):
            results.append(TargetResult(f"{namespace}/{info.id}", container_problems(info, rules)))
    return results
