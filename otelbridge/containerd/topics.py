"""containerd event topics and payload type URLs, copied verbatim from containerd.

Never build these from parts: note the singular ``/snapshot/`` and that the type URLs
carry no ``/`` (so ``Any.Unpack`` does not work on them; decode dispatches on the string).
"""

from __future__ import annotations

SNAPSHOT_PREPARE = "/snapshot/prepare"
SNAPSHOT_COMMIT = "/snapshot/commit"
SNAPSHOT_REMOVE = "/snapshot/remove"
CONTAINER_CREATE = "/containers/create"
CONTAINER_UPDATE = "/containers/update"
CONTAINER_DELETE = "/containers/delete"
TASK_CREATE = "/tasks/create"
TASK_START = "/tasks/start"
TASK_EXIT = "/tasks/exit"
TASK_DELETE = "/tasks/delete"
TASK_OOM = "/tasks/oom"

#: Topics containerd publishes that say nothing about a container's startup. They are
#: counted as ignored, not as unknown.
IGNORED_TOPICS = frozenset(
    {
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/checkpointed",
        "/images/create",
        "/images/update",
        "/images/delete",
        "/namespaces/create",
        "/namespaces/update",
        "/namespaces/delete",
        "/content/create",
        "/content/delete",
        "/sandboxes/create",
        "/sandboxes/start",
        "/sandboxes/exit",
        "/sandboxes/delete",
    }
)

TYPE_SNAPSHOT_PREPARE = "containerd.events.SnapshotPrepare"
TYPE_SNAPSHOT_COMMIT = "containerd.events.SnapshotCommit"
TYPE_SNAPSHOT_REMOVE = "containerd.events.SnapshotRemove"
TYPE_CONTAINER_CREATE = "containerd.events.ContainerCreate"
TYPE_CONTAINER_UPDATE = "containerd.events.ContainerUpdate"
TYPE_CONTAINER_DELETE = "containerd.events.ContainerDelete"
TYPE_TASK_CREATE = "containerd.events.TaskCreate"
TYPE_TASK_START = "containerd.events.TaskStart"
TYPE_TASK_EXIT = "containerd.events.TaskExit"
TYPE_TASK_DELETE = "containerd.events.TaskDelete"
TYPE_TASK_OOM = "containerd.events.TaskOOM"

#: The containerd namespace the CRI plugin (Kubernetes) uses.
CRI_NAMESPACE = "k8s.io"
