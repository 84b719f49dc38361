"""Runtime-internal phases on a real containerd and runc (docs/runtime.md).

The recorder is installed as ``otelbridge hook print-config`` says: its ``--format ctr``
last line added to ``ctr run``, its ``--format cri`` TOML merged into the config of a
private containerd for the CRI test. The recorder's real runc is here the test's own
logging wrapper of ``/usr/sbin/runc`` (a shell script writing ``date +%s%N`` before and
after runc): an independent log of the same moments, which every runtime span must
contain (the recorder notes its begin before it runs the wrapper, its end after the
wrapper exited).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge.app import build_live_bridge
from otelbridge.core import semconv
from otelbridge.core.config import Config, CorrelateConfig, RuntimeConfig, SourceConfig
from otelbridge.testing.containerd import PrivateContainerd
from otelbridge.testing.cri import CRI_NAMESPACE, ContainerSpec, CriClient, import_cri_images
from otelbridge.testing.image import BUSYBOX_IMAGE
from otelbridge.testing.otlp import OtlpReceiver, ReceivedSpan
from tests.conftest import Namespace
from tests.integration.processes import Daemon

pytestmark = pytest.mark.containerd

RUNTIME_PARENT = {
    semconv.SPAN_SHIM_PREPARE: semconv.SPAN_SHIM_LAUNCH,
    semconv.SPAN_RUNC_CREATE: semconv.SPAN_SHIM_LAUNCH,
    semconv.SPAN_RUNC_START: semconv.SPAN_TASK_START,
}
# the same moment seen from two processes a fork+exec apart: a sanity bound, not a timing
AGREE_NS = 2_000_000_000
HANDLER = "obhook"

LOGGER = """#!/bin/sh
# the test's independent log of runc create/start: "<ns> <command>.<begin|end> <id>"
for id; do :; done
cmd=
for a; do case "$a" in create|start) cmd=$a; break;; esac; done
[ -n "$cmd" ] || exec {runc} "$@"
echo "$(date +%s%N) $cmd.begin $id" >> {log}
{runc} "$@"
rc=$?
echo "$(date +%s%N) $cmd.end $id" >> {log}
exit $rc
"""


def hook_print_config(spool: Path, install_dir: Path, runc: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "otelbridge", "hook", "print-config", "--spool", str(spool),
         "--install-dir", str(install_dir), "--runc", str(runc), *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def logging_runc(directory: Path) -> tuple[Path, Path]:
    """(the logging wrapper, its log)."""
    real = shutil.which("runc", path="/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin")
    assert real is not None
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "runc-moments.log"
    script = directory / "runc-logger"
    script.write_text(LOGGER.format(runc=shlex.quote(real), log=shlex.quote(str(log))))
    script.chmod(0o755)
    return script, log


def independent_log(log: Path) -> dict[tuple[str, str], int]:
    """(container id, moment) -> time, from the logging wrapper."""
    out = {}
    for line in log.read_text().splitlines():
        t, moment, cid = line.split(" ")
        out[(cid, moment)] = int(t)
    return out


def by_container(spans: list[ReceivedSpan]) -> dict[str, dict[str, ReceivedSpan]]:
    out: dict[str, dict[str, ReceivedSpan]] = defaultdict(dict)
    for s in spans:
        out[s.attributes[semconv.CONTAINER_ID]][s.name] = s
    return out


def check_runtime_spans(cid: str, spans: dict[str, ReceivedSpan], logged: dict) -> None:  # type: ignore[type-arg]
    """Each runtime span under its phase, inside its range, holding the logged moments."""
    for name, parent_name in RUNTIME_PARENT.items():
        span, parent = spans[name].span, spans[parent_name].span
        assert span.parent_span_id == parent.span_id, (cid, name)
        assert span.trace_id == parent.trace_id
        assert (
            parent.start_time_unix_nano
            <= span.start_time_unix_nano
            <= span.end_time_unix_nano
            <= parent.end_time_unix_nano
        ), (cid, name)
    prepare = spans[semconv.SPAN_SHIM_PREPARE].span
    assert prepare.end_time_unix_nano == spans[semconv.SPAN_RUNC_CREATE].span.start_time_unix_nano
    for name, command in ((semconv.SPAN_RUNC_CREATE, "create"), (semconv.SPAN_RUNC_START, "start")):
        span = spans[name].span
        begin, end = logged[(cid, f"{command}.begin")], logged[(cid, f"{command}.end")]
        assert span.start_time_unix_nano <= begin <= end <= span.end_time_unix_nano, (cid, name)
        assert begin - span.start_time_unix_nano < AGREE_NS
        assert span.end_time_unix_nano - end < AGREE_NS
        assert span.status.code != span.status.STATUS_CODE_ERROR


def test_ctr_run_containers_have_runtime_spans_that_agree_with_an_independent_log(
    namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    runc, log = logging_runc(tmp_path / "runc")
    words = shlex.split(
        hook_print_config(spool, tmp_path / "bin", runc, "--format", "ctr").splitlines()[-1]
    )
    daemon = Daemon(
        namespace.cd.address,
        namespace.name,
        tmp_path / "state",
        receiver.endpoint,
        extra_args=("--hook-spool", str(spool)),
    )
    daemon.start()
    try:
        hooked = [f"hooked-{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
        plain = f"plain-{uuid.uuid4().hex[:6]}"
        for cid in hooked:
            namespace.run(cid, "/bin/true", extra_args=words)
        namespace.run(plain, "/bin/true")  # without the recorder: as today
        spans = receiver.wait_for_spans(
            lambda s: (
                s.attributes.get(semconv.CONTAINER_ID) in (*hooked, plain)
                and s.name != semconv.SPAN_SNAPSHOT_RECLAIM
            ),
            count=len(hooked) * 8 + 5,
            timeout_s=30,
        )
        counters = daemon.counters()
    finally:
        daemon.proc.terminate()  # type: ignore[union-attr]
        daemon.proc.wait(20)  # type: ignore[union-attr]

    containers = by_container(spans)
    logged = independent_log(log)
    for cid in hooked:
        check_runtime_spans(cid, containers[cid], logged)
        launch = containers[cid][semconv.SPAN_SHIM_LAUNCH]
        assert launch.attributes[semconv.OB_SHIM_REUSED] is False  # ctr: a shim each
        assert launch.attributes[semconv.CONTAINERD_SHIM_PID] > 0
    assert not set(containers[plain]) & set(RUNTIME_PARENT)
    assert semconv.OB_SHIM_REUSED not in containers[plain][semconv.SPAN_SHIM_LAUNCH].attributes
    assert counters.get(semconv.RUNTIME_UNMATCHED.name, 0) == 0
    assert counters.get(semconv.RUNTIME_MALFORMED.name, 0) == 0
    # taken: what the bridge read is gone (--rm's runc delete is not recorded)
    assert not [p for p in (spool / namespace.name).iterdir() if p.name in hooked]


class HookedContainerd(PrivateContainerd):
    """A private containerd whose CRI runtime handler ``obhook`` is what ``print-config
    --format cri --runtime obhook`` printed, plus this instance's private runc root
    (appended: the printed options table comes last)."""

    def __init__(self, printed: str) -> None:
        super().__init__()
        self._printed = printed

    def config_toml(self) -> str:
        return f'{super().config_toml()}\n{self._printed}  Root = "{self.runc_root}"\n'


@pytest.fixture
def hooked_containerd(tmp_path: Path, image_tar: Path) -> Iterator[tuple[HookedContainerd, Path]]:
    spool = tmp_path / "spool"
    runc, log = logging_runc(tmp_path / "runc")
    printed = hook_print_config(
        spool, tmp_path / "bin", runc, "--format", "cri", "--runtime", HANDLER
    )
    with HookedContainerd(printed) as cd:
        import_cri_images(cd, image_tar.parent)  # returns the busybox reference: BUSYBOX
        yield cd, log


def test_a_second_container_of_a_cri_pod_is_marked_as_reusing_the_pod_s_shim(
    hooked_containerd: tuple[HookedContainerd, Path], receiver: OtlpReceiver, tmp_path: Path
) -> None:
    cd, log = hooked_containerd
    config = Config(
        source=SourceConfig(address=cd.address, namespaces=(CRI_NAMESPACE,)),
        correlate=CorrelateConfig(pod_settle_s=1.0),
        runtime=RuntimeConfig(hook_spool=str(tmp_path / "spool")),
    )
    bridge = build_live_bridge(
        config,
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
        metrics=False,
    )
    bridge.start()
    try:
        assert bridge.pipeline.connected.wait(10)
        with CriClient(cd.address) as cri:
            pod = cri.run_pod(
                f"web-{uuid.uuid4().hex[:6]}",
                "shop",
                containers=[ContainerSpec("app", BUSYBOX_IMAGE, command=("/bin/sleep", "30"))],
                runtime_handler=HANDLER,
            )
            try:
                ids = (pod.sandbox_id, *pod.container_ids)
                spans = receiver.wait_for_spans(
                    lambda s: (
                        s.attributes.get(semconv.CONTAINER_ID) in ids
                        and s.name != semconv.SPAN_SNAPSHOT_RECLAIM
                    ),
                    count=2 * 8,
                    timeout_s=30,
                )
            finally:
                cri.remove_pod(pod.sandbox_id)
        counters = bridge.counters.snapshot()
    finally:
        bridge.shutdown()

    containers = by_container(spans)
    logged = independent_log(log)
    for cid in ids:
        check_runtime_spans(cid, containers[cid], logged)
    sandbox = containers[pod.sandbox_id][semconv.SPAN_SHIM_LAUNCH].attributes
    app = containers[pod.container_ids[0]][semconv.SPAN_SHIM_LAUNCH].attributes
    assert sandbox[semconv.OB_SHIM_REUSED] is False
    assert app[semconv.OB_SHIM_REUSED] is True
    assert app[semconv.CONTAINERD_SHIM_PID] == sandbox[semconv.CONTAINERD_SHIM_PID]
    assert counters.get(semconv.RUNTIME_UNMATCHED.name, 0) == 0
