"""The containerd methods the bridge calls: every one of them reads.

One allow-list for both ways of calling containerd (the gRPC client and the event
connection): a method outside it is refused before it leaves the process.
"""

M_SUBSCRIBE = "/containerd.services.events.v1.Events/Subscribe"
M_CONTAINER_GET = "/containerd.services.containers.v1.Containers/Get"
M_CONTAINER_LIST = "/containerd.services.containers.v1.Containers/List"
M_CONTAINER_LIST_STREAM = "/containerd.services.containers.v1.Containers/ListStream"
M_TASK_LIST = "/containerd.services.tasks.v1.Tasks/List"
M_NAMESPACE_LIST = "/containerd.services.namespaces.v1.Namespaces/List"
M_VERSION = "/containerd.services.version.v1.Version/Version"

#: The only containerd methods the bridge may call. All of them read.
ALLOWED_METHODS = frozenset(
    {
        M_SUBSCRIBE,
        M_CONTAINER_GET,
        M_CONTAINER_LIST,
        M_CONTAINER_LIST_STREAM,
        M_TASK_LIST,
        M_NAMESPACE_LIST,
        M_VERSION,
    }
)


__all__ = [
    "ALLOWED_METHODS",
    "M_CONTAINER_GET",
    "M_CONTAINER_LIST",
    "M_CONTAINER_LIST_STREAM",
    "M_NAMESPACE_LIST",
    "M_SUBSCRIBE",
    "M_TASK_LIST",
    "M_VERSION",
]
