"""A real, private containerd for integration tests, and ``ctr`` wrappers around it.

:class:`PrivateContainerd` runs its own ``containerd`` with every path (root, state,
sockets, runc root, CNI dirs, opt) under one base directory, so it never touches the
machine's default instance (``/run/containerd/containerd.sock``) and several can run
side by side. Typical use::

    ensure_host_tools()
    with PrivateContainerd() as cd:                      # started on enter
        ref = import_image(cd, busybox_image_tar(cache), BUSYBOX_BASE_NAME, "default")
        cd.run(ref, "c1", "/bin/echo", "hi").stdout     # "hi\\n"

Contracts:

* Everything here needs root (containerd, runc, mounts) and the host tools checked by
  :func:`ensure_host_tools`; a missing piece raises
  :class:`~otelbridge.core.errors.EnvironmentProblem` saying what to install.
* :meth:`PrivateContainerd.close` leaves nothing of the instance behind: no task, no
  process (containerd, shims, container processes), no mount under the base directory
  and, unless asked to keep it, no base directory. It is idempotent and works after a
  failed or missing :meth:`~PrivateContainerd.start`. Processes and mounts are found by
  this instance's own paths only; nothing else on the machine is signalled or unmounted.
* ``ctr run`` puts a container's cgroup at ``/<namespace>/<id>``, shared by every
  containerd on the machine: container ids must be unique machine-wide while they run
  (:func:`new_container_id` helps).
* Waits use :func:`time.monotonic`; this is test tooling, not the event path.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Self

import grpc

from otelbridge.containerd._gen import otelbridge_api_pb2
from otelbridge.core.errors import EnvironmentProblem, OtelbridgeError
from otelbridge.testing.image import PAUSE_IMAGE, find_static_busybox

__all__ = [
    "APT_INSTALL_COMMAND",
    "HOST_PACKAGES",
    "ContainerdStartError",
    "CtrError",
    "PrivateContainerd",
    "PrivateContainerdError",
    "ensure_host_tools",
    "missing_host_tools",
    "new_container_id",
]

_log = logging.getLogger(__name__)

HOST_PACKAGES: tuple[str, ...] = ("containerd", "runc", "busybox-static", "umoci")
"""Debian packages that provide every host tool the testbed uses."""

APT_INSTALL_COMMAND = (
    "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y " + " ".join(HOST_PACKAGES)
)
"""The command (run as root) that installs :data:`HOST_PACKAGES`."""

# executable -> Debian package that ships it
_HOST_BINARIES: dict[str, str] = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "umoci": "umoci",
}

# root's PATH may lack the sbin directories (runc lives in /usr/sbin on Debian)
_EXTRA_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

_VERSION_METHOD = "/containerd.services.version.v1.Version/Version"

# sun_path is 108 bytes including the terminating NUL
_MAX_SOCKET_PATH = 107

# where containerd 1.6 shims bind their sockets, whatever the daemon's own paths
_SHIM_SOCKET_DIR = "/run/containerd/s/"

_EMPTY: Mapping[str, str] = MappingProxyType({})


class PrivateContainerdError(OtelbridgeError):
    """The private containerd testbed could not do what was asked."""


class ContainerdStartError(PrivateContainerdError):
    """containerd did not answer on its socket in time; the message ends with its log."""


class CtrError(PrivateContainerdError):
    """A ``ctr`` command failed or timed out; carries the command and its output."""

    def __init__(
        self, cmd: Sequence[str], returncode: int | None, stdout: str, stderr: str
    ) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited with {returncode}"
        super().__init__(f"{' '.join(self.cmd)} {status}: {stderr.strip() or stdout.strip()}")


# ---------------------------------------------------------------------------------------
# host tools


def _search_path() -> str:
    parts = os.environ.get("PATH", "").split(os.pathsep)
    parts += [p for p in _EXTRA_PATH if p not in parts]
    return os.pathsep.join(p for p in parts if p)


def _which(name: str) -> str | None:
    return shutil.which(name, path=_search_path())


def missing_host_tools() -> list[str]:
    """Returns a description of every host tool the testbed lacks (empty: all present)."""
    missing = [
        f"{binary} (package {package})"
        for binary, package in _HOST_BINARIES.items()
        if _which(binary) is None
    ]
    if find_static_busybox() is None:
        missing.append("a statically linked busybox (package busybox-static)")
    return missing


def ensure_host_tools(install: bool = False) -> None:
    """Makes sure containerd, its runc shim, ctr, runc, umoci and a static busybox exist.

    With ``install=True`` and running as root, missing tools are installed with
    :data:`APT_INSTALL_COMMAND` (needs apt and a reachable Debian mirror; about 15 s).
    Otherwise, or if installing did not help, raises
    :class:`~otelbridge.core.errors.EnvironmentProblem` naming what is missing and how to
    install it. Returns None when everything is present.
    """
    missing = missing_host_tools()
    if not missing:
        return
    how = f"install them as root with: {APT_INSTALL_COMMAND}"
    if install and os.geteuid() == 0 and _which("apt-get") is not None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=_search_path())
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *HOST_PACKAGES]):
            try:
                done = subprocess.run(
                    cmd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=900,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise EnvironmentProblem(
                    f"{' '.join(cmd)} timed out while installing {', '.join(missing)}; {how}"
                ) from exc
            if done.returncode != 0:
                tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
                raise EnvironmentProblem(
                    f"{' '.join(cmd)} failed (exit {done.returncode}) while installing "
                    f"{', '.join(missing)}; {how}\n{tail}"
                )
        missing = missing_host_tools()
        if not missing:
            return
        raise EnvironmentProblem(f"still missing after apt-get install: {', '.join(missing)}")
    reason = ""
    if install:
        reason = " (not installing: needs root and apt-get)"
    raise EnvironmentProblem(
        f"missing host tools for the containerd testbed: {', '.join(missing)}{reason}; {how}"
    )


def new_container_id(prefix: str = "c") -> str:
    """Returns ``prefix`` plus a random suffix: a container id unique on this machine."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------------
# /proc helpers (this instance's processes and mounts)


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    argv: tuple[str, ...]


def _processes() -> list[_Proc]:
    procs: list[_Proc] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            continue  # exited while we looked
        # the command name in field 2 may contain spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
        procs.append(_Proc(int(entry.name), int(fields[1]), fields[0], argv))
    return procs


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie holds no resources)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _socket_paths(pid: int) -> set[str]:
    """Paths of the unix sockets ``pid`` has open (via /proc/PID/fd and /proc/net/unix)."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    paths: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/net/unix") as f:
        next(f, None)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes:
                paths.add(fields[7])
    return paths


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _mount_points_under(base: str) -> list[str]:
    """Mount points at or below ``base``, deepest (and most recently mounted) first."""
    found: list[tuple[int, int, str]] = []
    with open("/proc/self/mountinfo") as f:
        for order, line in enumerate(f):
            fields = line.split()
            if len(fields) < 5:
                continue
            point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == base or point.startswith(base + "/"):
                found.append((point.count("/"), order, point))
    return [point for _, _, point in sorted(found, reverse=True)]


# ---------------------------------------------------------------------------------------
# the private containerd

# closed at interpreter exit if their owner forgot: containerd runs in its own session
# and would otherwise outlive the test process. Strong references on purpose: an
# instance dropped without close() must still be found here.
_open_instances: set[PrivateContainerd] = set()
_open_lock = threading.Lock()


@atexit.register
def _close_forgotten_instances() -> None:
    with _open_lock:
        instances = list(_open_instances)
    for instance in instances:
        with contextlib.suppress(Exception):
            instance.close()


class PrivateContainerd:
    """A containerd process with private root, state, sockets and runc root.

    Not started by the constructor: call :meth:`start` or use it as a context manager
    (``__enter__`` starts it, ``__exit__`` closes it). Methods may be called from several
    threads except :meth:`start`, :meth:`stop`, :meth:`kill`, :meth:`restart` and
    :meth:`close`, which the owner calls from one thread.
    """

    connect_timeout = "5s"
    """``ctr --connect-timeout``: without it ctr waits 10 s for a dead socket."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        keep_base_dir: bool = False,
        sandbox_image: str = PAUSE_IMAGE,
    ) -> None:
        """Prepares (but does not start) an instance under ``base_dir``.

        ``base_dir`` defaults to a new ``/tmp/obcd-XXXXXXXX``; a given one is created if
        missing. Its path must be short: socket paths under it are limited to 107 bytes
        (ValueError otherwise). :meth:`close` removes the base directory unless
        ``keep_base_dir`` is true (useful to read ``containerd.log`` after a failure).
        ``sandbox_image`` is the CRI pause image; it must be imported into ``k8s.io``
        before pods are run.
        """
        if base_dir is None:
            base_dir = Path(tempfile.mkdtemp(prefix="obcd-", dir="/tmp"))
        else:
            base_dir.mkdir(parents=True, exist_ok=True)
        self._base = Path(os.path.realpath(base_dir))
        longest = self._base / "c.sock.ttrpc"
        if len(os.fsencode(longest)) > _MAX_SOCKET_PATH:
            raise ValueError(f"base_dir too long for unix socket paths: {longest}")
        self._keep_base_dir = keep_base_dir
        self._sandbox_image = sandbox_image
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._closed = False
        with _open_lock:
            _open_instances.add(self)

    def __repr__(self) -> str:
        return f"PrivateContainerd(base_dir={str(self._base)!r}, pid={self.pid})"

    # -- paths ---------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The directory holding everything of this instance."""
        return self._base

    @property
    def address(self) -> str:
        """containerd's gRPC unix socket path (for ``ctr --address`` or ``unix://`` URIs)."""
        return str(self._base / "c.sock")

    @property
    def runc_root(self) -> Path:
        """runc's state root; runc keeps each container at ``runc_root/NAMESPACE/ID``."""
        return self._base / "runc"

    @property
    def config_path(self) -> Path:
        """The generated ``config.toml``."""
        return self._base / "config.toml"

    @property
    def log_path(self) -> Path:
        """containerd's stdout and stderr, appended across restarts."""
        return self._base / "containerd.log"

    @property
    def pid(self) -> int | None:
        """The pid of the running containerd, or None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the containerd process launched by :meth:`start` is alive."""
        return self.pid is not None

    def container_log_path(self, container_id: str, namespace: str = "default") -> Path:
        """Where :meth:`run` with ``detach=True`` sends the container's stdout and stderr."""
        return self._base / "logs" / namespace / f"{container_id}.log"

    def config_toml(self) -> str:
        """The containerd configuration this instance runs with (TOML, version 2)."""
        b = self._base
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""\
version = 2
root = "{b}/root"
state = "{b}/state"

[grpc]
  address = "{b}/c.sock"

[ttrpc]
  address = "{b}/c.sock.ttrpc"

[debug]
  address = "{b}/debug.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{b}/opt"

[{cri}]
  sandbox_image = "{self._sandbox_image}"
  # port 0: private instances side by side must not clash on the streaming port
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # the VM's bounding set lacks CAP_SYS_RESOURCE; RunPodSandbox fails without this
  restrict_oom_score_adj = true

[{cri}.cni]
  bin_dir = "{b}/cni/bin"
  conf_dir = "{b}/cni/conf"

# declaring the runc runtime's options replaces containerd's default runc entry, so its
# type must be given too (else RunPodSandbox: "container.Runtime.Name must be set")
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  Root = "{b}/runc"
"""

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Launches containerd and returns once its Version RPC answers.

        Raises :class:`~otelbridge.core.errors.EnvironmentProblem` when not root or a host tool
        is missing, and :class:`ContainerdStartError` (with the tail of the log) when
        containerd exits or does not answer within ``timeout`` seconds; the process is
        then killed, and :meth:`close` still cleans up. Raises
        :class:`PrivateContainerdError` if already running or closed.
        """
        if self._closed:
            raise PrivateContainerdError(f"{self._base}: start() after close()")
        if self.running:
            raise PrivateContainerdError(f"{self._base}: containerd is already running")
        if os.geteuid() != 0:
            raise EnvironmentProblem("a private containerd needs root (mounts, runc, cgroups)")
        containerd = _which("containerd")
        if containerd is None:
            raise EnvironmentProblem(
                f"containerd is not installed; install it as root with: {APT_INSTALL_COMMAND}"
            )
        for sub in ("root", "state", "opt", "cni/bin", "cni/conf", "runc", "fifo", "logs"):
            (self._base / sub).mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_toml())

        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            # its own session: a Ctrl-C at the terminal must not kill containerd before
            # close() has removed its tasks (running tasks would outlive it)
            self._proc = subprocess.Popen(
                [containerd, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PATH=_search_path()),
                start_new_session=True,
            )

        deadline = time.monotonic() + timeout
        while True:
            exit_code = self._proc.poll()
            if exit_code is not None:
                self._proc = None
                raise ContainerdStartError(
                    f"containerd exited with {exit_code} during start; "
                    f"{self.log_path} ends with:\n{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                self.version(timeout=min(1.0, remaining))
                return
            except grpc.RpcError:
                time.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))
        self.kill()
        raise ContainerdStartError(
            f"containerd did not answer on {self.address} within {timeout:.1f} s; "
            f"{self.log_path} ends with:\n{self._log_tail()}"
        )

    def version(self, timeout: float = 2.0) -> str:
        """Calls containerd's Version RPC over the socket and returns the version string.

        Raises :class:`grpc.RpcError` when containerd does not answer (for instance
        ``UNAVAILABLE`` while it is down).
        """
        # a fresh channel per call: a cached one would sit in reconnect backoff after a
        # restart and fail fast for up to a second although the socket is back
        with grpc.insecure_channel("unix://" + self.address) as channel:
            call = channel.unary_unary(
                _VERSION_METHOD,
                request_serializer=lambda _: b"",
                response_deserializer=otelbridge_api_pb2.VersionResponse.FromString,
            )
            response: otelbridge_api_pb2.VersionResponse = call(None, timeout=timeout)
            return str(response.version)

    def stop(self, timeout: float = 10.0) -> None:
        """Sends SIGTERM and waits for containerd to exit (SIGKILL after ``timeout`` s).

        Running tasks and their shims survive, as with any containerd restart. A no-op
        when not running.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning("containerd %s ignored SIGTERM for %.1f s; killing", proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Sends SIGKILL and waits for containerd to exit; tasks survive. No-op if not running."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None

    def restart(self, timeout: float = 20.0) -> None:
        """Stops containerd if it runs, then starts it again with the same directories.

        Tasks that were running keep running and are listed again once it is back.
        """
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Removes every trace of this instance; idempotent, also after a failed start.

        In order: kills and deletes every task and container in every namespace (while
        containerd answers), stops containerd, kills what is left of this instance
        (runc containers under :attr:`runc_root`, shims bound to :attr:`address` and
        their children), unmounts everything under :attr:`base_dir` (lazily if busy) and
        removes :attr:`base_dir`. Raises :class:`PrivateContainerdError` listing what
        could not be cleaned, after having tried everything.
        """
        if self._closed:
            return
        self._closed = True
        with _open_lock:
            _open_instances.discard(self)
        problems: list[str] = []
        if self.running:
            try:
                self._remove_all_tasks_and_containers()
            except (OtelbridgeError, OSError, grpc.RpcError) as exc:
                _log.warning("%s: orderly task cleanup failed: %s", self._base, exc)
        self.stop()
        self._kill_leftovers(problems)
        self._unmount_all(problems)
        if not self._keep_base_dir and self._base.exists():
            try:
                shutil.rmtree(self._base)
            except OSError as exc:
                problems.append(f"could not remove {self._base}: {exc}")
        if problems:
            raise PrivateContainerdError(
                f"{self._base}: close() left things behind:\n  - " + "\n  - ".join(problems)
            )

    # -- ctr -----------------------------------------------------------------------------

    def ctr(
        self,
        *args: str,
        namespace: str = "default",
        check: bool = True,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Runs ``ctr --address SOCK -n NAMESPACE ARGS...`` and returns its result.

        Output is captured as text. Raises :class:`CtrError` (command, exit code, stdout,
        stderr) on timeout, and on a non-zero exit when ``check`` is true.
        """
        ctr = _which("ctr")
        if ctr is None:
            raise EnvironmentProblem(
                f"ctr is not installed; install it as root with: {APT_INSTALL_COMMAND}"
            )
        cmd = [
            ctr,
            "--address",
            self.address,
            "--connect-timeout",
            self.connect_timeout,
            "-n",
            namespace,
            *args,
        ]
        try:
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=dict(os.environ, PATH=_search_path()),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CtrError(cmd, None, _text(exc.stdout), _text(exc.stderr)) from exc
        if check and done.returncode != 0:
            raise CtrError(cmd, done.returncode, done.stdout, done.stderr)
        return done

    def run(
        self,
        image: str,
        container_id: str,
        *cmd: str,
        namespace: str = "default",
        labels: Mapping[str, str] = _EMPTY,
        env: Mapping[str, str] = _EMPTY,
        rm: bool = True,
        detach: bool = False,
        extra_args: Sequence[str] = (),
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Runs a container with ``ctr run`` (runc root and FIFOs private) and returns.

        Without ``detach`` it returns when the command has exited, with its output in
        ``stdout``/``stderr``; ``rm`` then deletes the container afterwards. With
        ``detach`` it returns once the task is started, ``rm`` is ignored (ctr refuses
        both) and the container's output goes to :meth:`container_log_path` (a detached
        ``ctr`` closes its end of the FIFOs and a chatty container would block). A
        non-zero exit of the command raises :class:`CtrError` when ``check`` is true.
        ``extra_args`` go before the image (e.g. ``["--net-host"]``).
        """
        args = ["run", "--runc-root", str(self.runc_root), "--fifo-dir", str(self._base / "fifo")]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        if detach:
            log = self.container_log_path(container_id, namespace)
            log.parent.mkdir(parents=True, exist_ok=True)
            args += ["--detach", "--log-uri", f"file://{log}"]
        elif rm:
            args.append("--rm")
        args += [*extra_args, image, container_id, *cmd]
        return self.ctr(*args, namespace=namespace, check=check, timeout=timeout)

    def run_parallel(
        self,
        image: str,
        container_ids: Sequence[str],
        *cmd: str,
        namespace: str = "default",
        labels: Mapping[str, str] = _EMPTY,
        env: Mapping[str, str] = _EMPTY,
        rm: bool = True,
        max_workers: int = 8,
        check: bool = True,
        timeout: float = 60,
    ) -> list[subprocess.CompletedProcess[str]]:
        """Runs one container per id, up to ``max_workers`` at once, for event bursts.

        Each is a :meth:`run` with the same image, command and options (not detached).
        Returns the results in the order of ``container_ids`` once all have finished; with
        ``check`` the first failure is raised, but only after every run has completed.
        """

        def one(container_id: str) -> subprocess.CompletedProcess[str]:
            return self.run(
                image,
                container_id,
                *cmd,
                namespace=namespace,
                labels=labels,
                env=env,
                rm=rm,
                check=check,
                timeout=timeout,
            )

        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ctr-run") as pool:
            futures = [pool.submit(one, cid) for cid in container_ids]
        # leaving the with-block waited for all; now surface the first error, if any
        return [future.result() for future in futures]

    # -- queries used by tests and cleanup -------------------------------------------------

    def namespaces(self) -> list[str]:
        """Names of the namespaces containerd knows."""
        return self.ctr("namespaces", "ls", "-q").stdout.split()

    def tasks(self, namespace: str = "default") -> dict[str, tuple[int, str]]:
        """Tasks of ``namespace``: container id -> (pid, status such as ``RUNNING``)."""
        lines = self.ctr("tasks", "ls", namespace=namespace).stdout.splitlines()[1:]
        tasks: dict[str, tuple[int, str]] = {}
        for line in lines:
            fields = line.split()
            if len(fields) >= 3:
                tasks[fields[0]] = (int(fields[1]), fields[2])
        return tasks

    def container_info(self, container_id: str, namespace: str = "default") -> dict[str, object]:
        """``ctr containers info`` as JSON (keys ``ID``, ``Labels``, ``Image``, ``Spec``...)."""
        out = self.ctr("containers", "info", container_id, namespace=namespace).stdout
        info: dict[str, object] = json.loads(out)
        return info

    # -- internals -----------------------------------------------------------------------

    def _log_tail(self, lines: int = 40) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(log empty)"

    def _remove_all_tasks_and_containers(self, wait: float = 5.0) -> None:
        for ns in self.namespaces():
            tasks = self.tasks(ns)
            if tasks:
                for cid, (_, status) in tasks.items():
                    if status != "STOPPED":
                        self.ctr("tasks", "kill", "-s", "SIGKILL", cid, namespace=ns, check=False)
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    if all(status == "STOPPED" for _, status in self.tasks(ns).values()):
                        break
                    time.sleep(0.05)
                # --force: a task that outlived the wait (stuck in D state) is deleted anyway
                self.ctr("tasks", "delete", "--force", *tasks, namespace=ns, check=False)
            containers = self.ctr("containers", "ls", "-q", namespace=ns).stdout.split()
            if containers:
                self.ctr("containers", "delete", *containers, namespace=ns, check=False)

    def _instance_processes(self) -> list[_Proc]:
        """containerd and shims of this instance, and every descendant of those shims."""
        procs = _processes()
        config = str(self.config_path)
        roots: list[_Proc] = []
        for p in procs:
            if not p.argv or p.pid == os.getpid():
                continue
            name = os.path.basename(p.argv[0])
            is_daemon = name == "containerd" and config in p.argv
            is_shim = name.startswith("containerd-shim") and self._shim_address_matches(p.argv)
            if is_daemon or is_shim:
                roots.append(p)
        children: dict[int, list[_Proc]] = {}
        for p in procs:
            children.setdefault(p.ppid, []).append(p)
        found: dict[int, _Proc] = {}
        todo = list(roots)
        while todo:
            p = todo.pop()
            if p.pid in found or p.pid == os.getpid():
                continue
            found[p.pid] = p
            todo += children.get(p.pid, [])
        return [p for p in found.values() if p.state != "Z"]

    def _shim_address_matches(self, argv: tuple[str, ...]) -> bool:
        for i, arg in enumerate(argv):
            if arg in ("-address", "--address") and argv[i + 1 : i + 2] == (self.address,):
                return True
            if arg in (f"-address={self.address}", f"--address={self.address}"):
                return True
        return False

    def _kill_leftovers(self, problems: list[str], wait: float = 5.0) -> None:
        runc = _which("runc")
        if runc is not None and self.runc_root.is_dir():
            # runc kills through the container's cgroup, so this also reaches container
            # processes whose shim already died and that were reparented away
            for ns_dir in self.runc_root.iterdir():
                if not ns_dir.is_dir():
                    continue
                for container_dir in ns_dir.iterdir():
                    cmd = [runc, "--root", str(ns_dir), "delete", "--force", container_dir.name]
                    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                        subprocess.run(cmd, capture_output=True, timeout=10, check=False)
        leftovers = self._instance_processes()
        sockets: set[str] = set()
        for p in leftovers:
            if os.path.basename(p.argv[0]).startswith("containerd-shim"):
                sockets |= {s for s in _socket_paths(p.pid) if s.startswith(_SHIM_SOCKET_DIR)}
            _log.warning("%s: killing leftover process %d %s", self._base, p.pid, p.argv)
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        deadline = time.monotonic() + wait
        while leftovers and time.monotonic() < deadline:
            leftovers = [p for p in leftovers if _alive(p.pid)]
            if leftovers:
                time.sleep(0.02)
        problems += [f"process {p.pid} {' '.join(p.argv)} survived SIGKILL" for p in leftovers]
        # a SIGKILLed shim cannot remove its socket, which lives outside the base dir
        for path in sockets:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _unmount_all(self, problems: list[str]) -> None:
        base = str(self._base)
        umount = _which("umount") or "umount"
        # several passes: mounts can be stacked on one point
        for _ in range(5):
            points = _mount_points_under(base)
            if not points:
                return
            for point in points:
                # lazy (-l) when the plain umount fails, e.g. busy: the mount is detached
                # now and the kernel frees it when its last user goes
                for cmd in ([umount, point], [umount, "-l", point]):
                    try:
                        done = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
                    except subprocess.TimeoutExpired:
                        continue
                    if done.returncode == 0:
                        break
        problems += [f"still mounted: {point}" for point in _mount_points_under(base)]


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data
