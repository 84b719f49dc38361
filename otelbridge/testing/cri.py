"""A small Kubernetes CRI client for tests: pods on containerd without a kubelet.

It speaks containerd's CRI plugin (``runtime.v1`` ``RuntimeService`` and
``ImageService``) over containerd's own socket, with the minimal protos in
``otelbridge/containerd/protos/otelbridge_cri.proto``. Everything CRI does lands in
containerd namespace ``k8s.io`` (:data:`CRI_NAMESPACE`). Typical use with the testbed::

    with PrivateContainerd() as cd:
        image = import_cri_images(cd, cache_dir)         # pause + busybox into k8s.io
        with CriClient(cd.address) as cri:
            pod = cri.run_pod(
                "web",
                annotations={"tracing.k8s.io/traceparent": traceparent},
                containers=[ContainerSpec("app", image, command=("/bin/sleep", "30"))],
            )
            ...
            cri.remove_pod(pod.sandbox_id)

Contracts:

* The thin methods (:meth:`CriClient.run_pod_sandbox`, :meth:`~CriClient.create_container`
  ...) make exactly one RPC each, on the real method path (``/runtime.v1.RuntimeService/
  RunPodSandbox`` ...). Every gRPC failure is raised as :class:`CriError` (method, status
  code, detail); nothing else from grpc escapes.
* :meth:`CriClient.run_pod` does what a kubelet does for a host-network pod: one
  sandbox, then each app container created and started in order. It passes the labels a
  kubelet passes (:data:`LABEL_POD_NAME` ...), because CRI itself only adds
  ``io.cri-containerd.kind``. On failure it removes what it made before raising.
* A sandbox needs the CRI ``sandbox_image`` present in ``k8s.io`` (no registry is
  reachable: CRI would try to pull it): :func:`import_cri_images` imports it.
* Waits are on the RPCs only (``timeout_s`` each); this is test tooling, not the event
  path. A client is safe to use from several threads (gRPC channels are).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self

import grpc

from otelbridge.containerd._gen import otelbridge_cri_pb2 as cri_pb
from otelbridge.core.errors import OtelbridgeError
from otelbridge.testing.image import (
    BUSYBOX_BASE_NAME,
    PAUSE_BASE_NAME,
    busybox_image_tar,
    import_image,
    pause_image_tar,
)

if TYPE_CHECKING:
    from otelbridge.testing.containerd import PrivateContainerd

__all__ = [
    "ANNOTATION_RESTART_COUNT",
    "CRI_NAMESPACE",
    "LABEL_CONTAINER_NAME",
    "LABEL_POD_NAME",
    "LABEL_POD_NAMESPACE",
    "LABEL_POD_UID",
    "ContainerSpec",
    "CriClient",
    "CriError",
    "Pod",
    "container_config",
    "import_cri_images",
    "pod_sandbox_config",
]

CRI_NAMESPACE = "k8s.io"
"""The containerd namespace the CRI plugin keeps its sandboxes, containers and images in."""

LABEL_POD_NAME = "io.kubernetes.pod.name"
"""Label the kubelet puts on sandboxes and containers: the pod's name."""

LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
"""Label the kubelet puts on sandboxes and containers: the pod's Kubernetes namespace."""

LABEL_POD_UID = "io.kubernetes.pod.uid"
"""Label the kubelet puts on sandboxes and containers: the pod's uid."""

LABEL_CONTAINER_NAME = "io.kubernetes.container.name"
"""Label the kubelet puts on app containers: the container's name in the pod spec."""

ANNOTATION_RESTART_COUNT = "io.kubernetes.container.restartCount"
"""Container annotation the kubelet sets to the attempt number (as a decimal string)."""

M_VERSION = "/runtime.v1.RuntimeService/Version"
M_RUN_POD_SANDBOX = "/runtime.v1.RuntimeService/RunPodSandbox"
M_STOP_POD_SANDBOX = "/runtime.v1.RuntimeService/StopPodSandbox"
M_REMOVE_POD_SANDBOX = "/runtime.v1.RuntimeService/RemovePodSandbox"
M_LIST_POD_SANDBOX = "/runtime.v1.RuntimeService/ListPodSandbox"
M_CREATE_CONTAINER = "/runtime.v1.RuntimeService/CreateContainer"
M_START_CONTAINER = "/runtime.v1.RuntimeService/StartContainer"
M_STOP_CONTAINER = "/runtime.v1.RuntimeService/StopContainer"
M_REMOVE_CONTAINER = "/runtime.v1.RuntimeService/RemoveContainer"
M_LIST_CONTAINERS = "/runtime.v1.RuntimeService/ListContainers"
M_LIST_IMAGES = "/runtime.v1.ImageService/ListImages"

_EMPTY: Mapping[str, str] = MappingProxyType({})

_NOT_FOUND = grpc.StatusCode.NOT_FOUND.name


class CriError(OtelbridgeError):
    """A CRI call failed.

    ``method`` is the gRPC method path, ``code`` the gRPC status code name (for instance
    ``"NOT_FOUND"``, ``"UNAVAILABLE"``; None when grpc gave none) and ``detail`` the
    runtime's message.
    """

    def __init__(self, method: str, code: str | None, detail: str) -> None:
        self.method = method
        self.code = code
        self.detail = detail
        super().__init__(f"{method}: {code or 'error'}: {detail}")


@dataclass(frozen=True)
class ContainerSpec:
    """One app container of a pod, as :meth:`CriClient.run_pod` creates it.

    ``command`` replaces the image's entrypoint and ``args`` its command, as in a pod
    spec (both empty: the image's defaults). ``labels`` and ``annotations`` are added to
    the kubelet's own. ``attempt`` is CRI's attempt number: 0 for the first run, one
    more for each restart of the same container in the same sandbox.
    """

    name: str
    image: str
    command: Sequence[str] = ()
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 0


@dataclass(frozen=True)
class Pod:
    """A pod started by :meth:`CriClient.run_pod`.

    ``container_ids`` follows the order of the specs given; :meth:`container_id` finds
    one by name. ``sandbox_config`` is the config the sandbox was run with: pass it to
    :meth:`CriClient.create_container` for more containers (do not mutate it).
    """

    sandbox_id: str
    name: str
    namespace: str
    uid: str
    container_ids: tuple[str, ...]
    container_names: tuple[str, ...]
    sandbox_config: cri_pb.PodSandboxConfig

    def container_id(self, name: str) -> str:
        """The id of the app container called ``name``; KeyError if there is none."""
        for container_name, container_id in zip(
            self.container_names, self.container_ids, strict=True
        ):
            if container_name == name:
                return container_id
        raise KeyError(name)


def pod_sandbox_config(
    name: str,
    namespace: str = "default",
    uid: str | None = None,
    *,
    labels: Mapping[str, str] = _EMPTY,
    annotations: Mapping[str, str] = _EMPTY,
    attempt: int = 0,
    log_directory: Path | None = None,
) -> cri_pb.PodSandboxConfig:
    """The sandbox config a kubelet sends for a host-network pod.

    Labels are ``labels`` plus :data:`LABEL_POD_NAME`, :data:`LABEL_POD_NAMESPACE` and
    :data:`LABEL_POD_UID` (which win over same-named keys in ``labels``); annotations
    are passed as they are. ``uid`` defaults to a new random UUID. Namespaces: network
    NODE (the host's: no CNI needed), pid CONTAINER, ipc POD, as the kubelet sets them
    for a host-network pod. With ``log_directory``, CRI writes each container's output
    under it (see :func:`container_config`); the directory is created if missing.
    """
    if uid is None:
        uid = str(uuid.uuid4())
    all_labels = dict(labels)
    all_labels.update({LABEL_POD_NAME: name, LABEL_POD_NAMESPACE: namespace, LABEL_POD_UID: uid})
    log_dir = ""
    if log_directory is not None:
        log_directory.mkdir(parents=True, exist_ok=True)
        log_dir = str(log_directory)
    return cri_pb.PodSandboxConfig(
        metadata=cri_pb.PodSandboxMetadata(
            name=name, uid=uid, namespace=namespace, attempt=attempt
        ),
        log_directory=log_dir,
        labels=all_labels,
        annotations=dict(annotations),
        linux=cri_pb.LinuxPodSandboxConfig(
            security_context=cri_pb.LinuxSandboxSecurityContext(
                namespace_options=_host_network_namespaces()
            )
        ),
    )


def container_config(
    spec: ContainerSpec, sandbox_config: cri_pb.PodSandboxConfig
) -> cri_pb.ContainerConfig:
    """The container config a kubelet sends for ``spec`` in the pod of ``sandbox_config``.

    Labels are ``spec.labels`` plus the pod's name, namespace and uid and
    :data:`LABEL_CONTAINER_NAME` (the kubelet's win on a clash). Annotations are
    ``spec.annotations`` plus :data:`ANNOTATION_RESTART_COUNT` = ``spec.attempt``.
    When the sandbox has a log directory, the log goes to ``NAME/ATTEMPT.log`` under it
    (the kubelet's layout). Namespaces follow the sandbox's (network NODE, pid CONTAINER).
    """
    meta = sandbox_config.metadata
    labels = dict(spec.labels)
    labels.update(
        {
            LABEL_POD_NAME: meta.name,
            LABEL_POD_NAMESPACE: meta.namespace,
            LABEL_POD_UID: meta.uid,
            LABEL_CONTAINER_NAME: spec.name,
        }
    )
    annotations = dict(spec.annotations)
    annotations[ANNOTATION_RESTART_COUNT] = str(spec.attempt)
    log_path = f"{spec.name}/{spec.attempt}.log" if sandbox_config.log_directory else ""
    return cri_pb.ContainerConfig(
        metadata=cri_pb.ContainerMetadata(name=spec.name, attempt=spec.attempt),
        image=cri_pb.ImageSpec(image=spec.image),
        command=list(spec.command),
        args=list(spec.args),
        envs=[cri_pb.KeyValue(key=k, value=v) for k, v in spec.env.items()],
        labels=labels,
        annotations=annotations,
        log_path=log_path,
        linux=cri_pb.LinuxContainerConfig(
            security_context=cri_pb.LinuxContainerSecurityContext(
                namespace_options=_host_network_namespaces()
            )
        ),
    )


def _host_network_namespaces() -> cri_pb.NamespaceOption:
    return cri_pb.NamespaceOption(network=cri_pb.NODE, pid=cri_pb.CONTAINER, ipc=cri_pb.POD)


def import_cri_images(cd: PrivateContainerd, cache_dir: Path) -> str:
    """Imports the pause and busybox test images into ``k8s.io`` of ``cd``.

    The pause image becomes :data:`~otelbridge.testing.image.PAUSE_IMAGE`, the
    ``sandbox_image`` a :class:`~otelbridge.testing.containerd.PrivateContainerd` is
    configured with by default. Each image is imported from its own tar under its own
    base name (re-tagging confuses CRI's image cache). Images are built once into
    ``cache_dir``; importing again is harmless. Returns the busybox reference
    (:data:`~otelbridge.testing.image.BUSYBOX_IMAGE`), for :class:`ContainerSpec`.
    """
    import_image(cd, pause_image_tar(cache_dir), PAUSE_BASE_NAME, CRI_NAMESPACE)
    return import_image(cd, busybox_image_tar(cache_dir), BUSYBOX_BASE_NAME, CRI_NAMESPACE)


class CriClient:
    """A CRI client on one containerd socket. Use as a context manager or call :meth:`close`.

    ``address`` is a socket path (as ``ctr --address``) or a gRPC target with a scheme
    (``unix:///run/containerd/containerd.sock``). ``timeout_s`` bounds each RPC.
    """

    def __init__(self, address: str, *, timeout_s: float = 30.0) -> None:
        self.address = address
        self._timeout = timeout_s
        target = address if "://" in address else "unix://" + address
        # a unix socket has no authority; grpc wants one for HTTP/2
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.default_authority", "localhost")]
        )

    def close(self) -> None:
        """Closes the channel; idempotent. Pods keep running: remove them first."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, response_type: Any) -> Any:
        stub: Callable[..., Any] = self._channel.unary_unary(
            method,
            request_serializer=lambda m: bytes(m.SerializeToString()),
            response_deserializer=response_type.FromString,
        )
        try:
            return stub(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            raise CriError(method, code.name if code is not None else None, str(detail)) from exc

    # -- thin RPCs -------------------------------------------------------------------------

    def version(self) -> cri_pb.VersionResponse:
        """``RuntimeService/Version``: runtime name, version and CRI API version."""
        response: cri_pb.VersionResponse = self._call(
            M_VERSION, cri_pb.VersionRequest(version="v1"), cri_pb.VersionResponse
        )
        return response

    def run_pod_sandbox(self, config: cri_pb.PodSandboxConfig, runtime_handler: str = "") -> str:
        """``RunPodSandbox``: returns the sandbox id once the sandbox is running."""
        request = cri_pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        response: cri_pb.RunPodSandboxResponse = self._call(
            M_RUN_POD_SANDBOX, request, cri_pb.RunPodSandboxResponse
        )
        return str(response.pod_sandbox_id)

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        """``StopPodSandbox``: kills the sandbox's containers, then the sandbox.

        Stopping a stopped sandbox is a no-op; an unknown (or removed) one raises
        :class:`CriError` with code ``NOT_FOUND`` (containerd 1.6).
        """
        request = cri_pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        self._call(M_STOP_POD_SANDBOX, request, cri_pb.StopPodSandboxResponse)

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        """``RemovePodSandbox``: removes the sandbox and its containers; idempotent."""
        request = cri_pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        self._call(M_REMOVE_POD_SANDBOX, request, cri_pb.RemovePodSandboxResponse)

    def list_pod_sandboxes(
        self, label_selector: Mapping[str, str] = _EMPTY
    ) -> list[cri_pb.PodSandbox]:
        """``ListPodSandbox``: the sandboxes carrying all of ``label_selector``'s labels."""
        request = cri_pb.ListPodSandboxRequest(
            filter=cri_pb.PodSandboxFilter(label_selector=dict(label_selector))
        )
        response: cri_pb.ListPodSandboxResponse = self._call(
            M_LIST_POD_SANDBOX, request, cri_pb.ListPodSandboxResponse
        )
        return list(response.items)

    def create_container(
        self,
        sandbox_id: str,
        config: cri_pb.ContainerConfig,
        sandbox_config: cri_pb.PodSandboxConfig,
    ) -> str:
        """``CreateContainer`` in the sandbox (not started); returns the container id."""
        request = cri_pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        response: cri_pb.CreateContainerResponse = self._call(
            M_CREATE_CONTAINER, request, cri_pb.CreateContainerResponse
        )
        return str(response.container_id)

    def start_container(self, container_id: str) -> None:
        """``StartContainer``: returns once the container's task has started."""
        request = cri_pb.StartContainerRequest(container_id=container_id)
        self._call(M_START_CONTAINER, request, cri_pb.StartContainerResponse)

    def stop_container(self, container_id: str, grace_s: int = 0) -> None:
        """``StopContainer``: the stop signal, then SIGKILL after ``grace_s`` seconds.

        With ``grace_s=0`` (the default) CRI sends SIGKILL at once. A shell as pid 1
        ignores SIGTERM, so a grace period only makes such tests slower. Stopping a
        stopped container is a no-op; an unknown one raises :class:`CriError` with code
        ``NOT_FOUND``.
        """
        request = cri_pb.StopContainerRequest(container_id=container_id, timeout=grace_s)
        self._call(M_STOP_CONTAINER, request, cri_pb.StopContainerResponse)

    def remove_container(self, container_id: str) -> None:
        """``RemoveContainer`` (a running one is killed first); idempotent."""
        request = cri_pb.RemoveContainerRequest(container_id=container_id)
        self._call(M_REMOVE_CONTAINER, request, cri_pb.RemoveContainerResponse)

    def list_containers(
        self, sandbox_id: str = "", label_selector: Mapping[str, str] = _EMPTY
    ) -> list[cri_pb.Container]:
        """``ListContainers``: app containers (never sandboxes), optionally filtered."""
        request = cri_pb.ListContainersRequest(
            filter=cri_pb.ContainerFilter(
                pod_sandbox_id=sandbox_id, label_selector=dict(label_selector)
            )
        )
        response: cri_pb.ListContainersResponse = self._call(
            M_LIST_CONTAINERS, request, cri_pb.ListContainersResponse
        )
        return list(response.containers)

    def list_images(self) -> list[cri_pb.Image]:
        """``ImageService/ListImages``: the images CRI sees in ``k8s.io``."""
        response: cri_pb.ListImagesResponse = self._call(
            M_LIST_IMAGES, cri_pb.ListImagesRequest(), cri_pb.ListImagesResponse
        )
        return list(response.images)

    # -- pods ------------------------------------------------------------------------------

    def run_pod(
        self,
        name: str,
        namespace: str = "default",
        uid: str | None = None,
        *,
        labels: Mapping[str, str] = _EMPTY,
        annotations: Mapping[str, str] = _EMPTY,
        containers: Iterable[ContainerSpec] = (),
        attempt: int = 0,
        log_directory: Path | None = None,
        runtime_handler: str = "",
    ) -> Pod:
        """Runs a host-network pod as a kubelet would and returns it.

        First ``RunPodSandbox`` with :func:`pod_sandbox_config` (``labels``,
        ``annotations``, sandbox ``attempt``), then for each spec in order
        ``CreateContainer`` and ``StartContainer``, so every app container is running
        when this returns. Container names must be unique in the pod (ValueError
        otherwise, before any RPC). If any step fails, the pod is removed
        (:meth:`remove_pod`, errors of that cleanup suppressed) and the
        :class:`CriError` of the failed step is raised.
        """
        specs = list(containers)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"container names must be unique in a pod: {names}")
        config = pod_sandbox_config(
            name,
            namespace,
            uid,
            labels=labels,
            annotations=annotations,
            attempt=attempt,
            log_directory=log_directory,
        )
        sandbox_id = self.run_pod_sandbox(config, runtime_handler)
        ids: list[str] = []
        try:
            for spec in specs:
                container_id = self.create_container(
                    sandbox_id, container_config(spec, config), config
                )
                ids.append(container_id)
                self.start_container(container_id)
        except CriError:
            self._remove_quietly(sandbox_id)
            raise
        return Pod(
            sandbox_id=sandbox_id,
            name=name,
            namespace=namespace,
            uid=config.metadata.uid,
            container_ids=tuple(ids),
            container_names=tuple(names),
            sandbox_config=config,
        )

    def add_container(self, pod: Pod, spec: ContainerSpec, *, start: bool = True) -> str:
        """Creates (and unless ``start`` is false, starts) one more container in ``pod``.

        For a restart, give the same name with the next ``attempt``. The returned id
        is not added to ``pod`` (a frozen record of what :meth:`run_pod` made).
        """
        container_id = self.create_container(
            pod.sandbox_id, container_config(spec, pod.sandbox_config), pod.sandbox_config
        )
        if start:
            self.start_container(container_id)
        return container_id

    def remove_pod(self, sandbox_id: str) -> None:
        """Stops and removes every app container of the sandbox, then the sandbox.

        The order is the kubelet's: ``StopContainer`` (SIGKILL at once) and
        ``RemoveContainer`` per container, ``StopPodSandbox``, ``RemovePodSandbox``.
        Idempotent: a pod or container that is already gone is skipped (containerd
        answers ``NOT_FOUND`` to stopping one; removing is idempotent in CRI itself).
        """
        for container in self.list_containers(sandbox_id=sandbox_id):
            try:
                self.stop_container(container.id)
            except CriError as exc:
                if exc.code != _NOT_FOUND:
                    raise
            self.remove_container(container.id)
        try:
            self.stop_pod_sandbox(sandbox_id)
        except CriError as exc:
            if exc.code != _NOT_FOUND:
                raise
        self.remove_pod_sandbox(sandbox_id)

    def _remove_quietly(self, sandbox_id: str) -> None:
        # the caller gets the error that made us clean up, not one from the cleanup
        with contextlib.suppress(CriError):
            self.remove_pod(sandbox_id)
