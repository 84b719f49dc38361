"""The containerd testbed itself, against a real, private containerd and runc.

Needs root and the host tools of ``ensure_host_tools``; the module is skipped, with the
reason, when either is missing. Never touches the machine's default containerd.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from otelbridge.core.errors import EnvironmentProblem
from otelbridge.testing.containerd import (
    ContainerdStartError,
    PrivateContainerd,
    ensure_host_tools,
    new_container_id,
)
from otelbridge.testing.image import (
    BUSYBOX_BASE_NAME,
    BUSYBOX_IMAGE,
    busybox_image_tar,
    import_image,
)

if os.geteuid() != 0:
    pytest.skip("the containerd testbed needs root", allow_module_level=True)
try:
    ensure_host_tools()
except EnvironmentProblem as _exc:
    pytest.skip(str(_exc), allow_module_level=True)

NS = "default"


def _live_pids_mentioning(base: Path) -> list[int]:
    """Pids of non-zombie processes whose command line contains ``base``."""
    needle = os.fsencode(base)
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline and _alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _mounts_under(base: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(base) in line]


@pytest.fixture(scope="module")
def image_tar(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # reused across runs via pytest's cache dir; absent with -p no:cacheprovider
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("otelbridge-images") if cache else tmp_path_factory.mktemp("images")
    return busybox_image_tar(Path(cache_dir))


@pytest.fixture(scope="module")
def shared_cd(image_tar: Path) -> Iterator[PrivateContainerd]:
    with PrivateContainerd() as instance:
        assert import_image(instance, image_tar, BUSYBOX_BASE_NAME, NS) == BUSYBOX_IMAGE
        yield instance


@pytest.fixture
def cd(shared_cd: PrivateContainerd) -> PrivateContainerd:
    # a test that failed between kill() and restart() must not break the next ones
    if not shared_cd.running:
        shared_cd.start()
    return shared_cd


@pytest.mark.containerd
def test_run_echoes_a_value_from_the_environment(cd: PrivateContainerd) -> None:
    value = uuid.uuid4().hex
    cid = new_container_id("echo")

    done = cd.run(BUSYBOX_IMAGE, cid, "/bin/sh", "-c", 'echo "$OB_VALUE"', env={"OB_VALUE": value})

    assert done.stdout == value + "\n"
    assert cid not in cd.ctr("containers", "ls", "-q").stdout.split()  # rm=True


@pytest.mark.containerd
def test_labelled_container_is_visible_with_its_label(cd: PrivateContainerd) -> None:
    cid = new_container_id("labelled")

    cd.run(BUSYBOX_IMAGE, cid, "/bin/true", labels={"otelbridge.test/k": "v1"}, rm=False)
    try:
        info = cd.container_info(cid)
        assert info["ID"] == cid
        assert info["Image"] == BUSYBOX_IMAGE
        labels = info["Labels"]
        assert isinstance(labels, dict)
        assert labels["otelbridge.test/k"] == "v1"
    finally:
        cd.ctr("containers", "delete", cid)


@pytest.mark.containerd
def test_run_parallel_runs_every_container(cd: PrivateContainerd) -> None:
    ids = [new_container_id(f"burst{i}") for i in range(4)]

    results = cd.run_parallel(BUSYBOX_IMAGE, ids, "/bin/echo", "burst", max_workers=4)

    assert [r.stdout for r in results] == ["burst\n"] * 4


@pytest.mark.containerd
def test_kill_9_then_restart_answers_again(cd: PrivateContainerd) -> None:
    old_pid = cd.pid

    cd.kill()
    assert not cd.running
    with pytest.raises(grpc.RpcError):
        cd.version(timeout=0.5)
    cd.restart()

    assert cd.pid is not None
    assert cd.pid != old_pid
    assert cd.version()
    assert NS in cd.namespaces()


@pytest.mark.containerd
def test_detached_container_survives_a_restart(cd: PrivateContainerd) -> None:
    cid = new_container_id("survivor")
    cd.run(BUSYBOX_IMAGE, cid, "/bin/sleep", "300", detach=True)
    try:
        pid, status = cd.tasks()[cid]
        assert status == "RUNNING"

        cd.restart()

        assert cd.tasks()[cid] == (pid, "RUNNING")
    finally:
        cd.ctr("tasks", "delete", "--force", cid, check=False)
        cd.ctr("containers", "delete", cid, check=False)


@pytest.mark.containerd
def test_close_leaves_no_mount_process_or_directory(image_tar: Path) -> None:
    instance = PrivateContainerd()
    base = instance.base_dir
    try:
        instance.start()
        ref = import_image(instance, image_tar, BUSYBOX_BASE_NAME, NS)
        cid = new_container_id("left")
        instance.run(ref, cid, "/bin/sleep", "300", detach=True)
        container_pid, _ = instance.tasks()[cid]
        assert _mounts_under(base), "a running container should have its rootfs mounted"
        assert len(_live_pids_mentioning(base)) >= 2  # containerd and the shim
    finally:
        instance.close()

    assert not base.exists()
    assert _mounts_under(base) == []
    assert _live_pids_mentioning(base) == []
    assert not _alive(container_pid)
    instance.close()  # idempotent


@pytest.mark.containerd
def test_close_cleans_up_after_containerd_was_killed_with_tasks(image_tar: Path) -> None:
    instance = PrivateContainerd()
    base = instance.base_dir
    try:
        instance.start()
        ref = import_image(instance, image_tar, BUSYBOX_BASE_NAME, NS)
        cid = new_container_id("orphan")
        instance.run(ref, cid, "/bin/sleep", "300", detach=True)
        container_pid, _ = instance.tasks()[cid]
        # nobody left to delete the task in order: close() must fall back to runc and /proc
        instance.kill()
    finally:
        instance.close()

    assert not base.exists()
    assert _mounts_under(base) == []
    assert _live_pids_mentioning(base) == []
    assert not _alive(container_pid)


@pytest.mark.containerd
def test_failed_start_reports_the_log_and_close_still_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instance = PrivateContainerd()
    base = instance.base_dir
    monkeypatch.setattr(instance, "config_toml", lambda: "version = [unterminated\n")

    with pytest.raises(ContainerdStartError) as excinfo:
        instance.start(timeout=10)
    instance.close()
    instance.close()

    assert "containerd exited" in str(excinfo.value)
    assert str(instance.log_path) in str(excinfo.value)
    assert not base.exists()
    assert _live_pids_mentioning(base) == []


@pytest.mark.containerd
def test_start_timeout_kills_containerd_and_close_still_works() -> None:
    instance = PrivateContainerd()
    base = instance.base_dir

    with pytest.raises(ContainerdStartError, match="did not answer"):
        instance.start(timeout=0.0)
    assert not instance.running
    instance.close()

    assert not base.exists()
    assert _live_pids_mentioning(base) == []
