"""`otelbridge validate` on what a real containerd writes and holds.

A private containerd (``otelbridge.testing``) runs a busybox container with ``ctr run``;
the bundle containerd wrote for it (its task state directory,
``io.containerd.runtime.v2.task/<ns>/<id>/``: ``config.json`` beside the mounted
``rootfs``) must pass, and copies of its ``config.json``, each with one seeded problem,
must be flagged at the right field with the right code. Kubernetes manifests (good and
bad) are plain files: no API server is needed to read them. The live mode
(``--address``/``--namespace``) reads the same private containerd through the bridge's
read-only client. The command runs as a real process, exit codes and ``--json`` as a CI
step sees them.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otelbridge.testing.containerd import PrivateContainerd
from tests.conftest import Namespace
from tests.integration.processes import OTELBRIDGE

pytestmark = pytest.mark.containerd

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def validate(*args: str, stdin: str | None = None) -> tuple[int, dict[str, Any], str]:
    """``otelbridge validate --json ARGS``: (exit code, the JSON, stderr)."""
    done = subprocess.run(
        [*OTELBRIDGE, "validate", "--json", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def found(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(path, code, severity) of every problem of every target."""
    return [(p["path"], p["code"], p["severity"]) for t in report["targets"] for p in t["problems"]]


@pytest.fixture(scope="module")
def running(containerd: PrivateContainerd, image_tar: Path) -> Iterator[tuple[str, str]]:
    """(namespace, container id) of a running ctr container; removed afterwards."""
    from otelbridge.testing.image import BUSYBOX_BASE_NAME, import_image  # noqa: PLC0415

    name = f"t-{uuid.uuid4().hex[:8]}"
    image = import_image(containerd, image_tar, BUSYBOX_BASE_NAME, name)
    ns = Namespace(containerd, name, image)
    cid = f"val-{uuid.uuid4().hex[:8]}"
    ns.run(cid, "sleep", "300", detach=True)
    yield name, cid
    _remove(containerd, name, cid)


def _remove(containerd: PrivateContainerd, namespace: str, cid: str) -> None:
    """Kills and deletes a container of this test (the instance's close also would)."""
    containerd.ctr("tasks", "kill", "-s", "KILL", cid, namespace=namespace, check=False)
    for _ in range(50):  # the task is removable once its process is reaped
        done = containerd.ctr("tasks", "rm", "-f", cid, namespace=namespace, check=False)
        if done.returncode == 0 or "not found" in done.stderr:
            break
    containerd.ctr("containers", "rm", cid, namespace=namespace, check=False)


@pytest.fixture(scope="module")
def bundle(containerd: PrivateContainerd, running: tuple[str, str]) -> Path:
    namespace, cid = running
    path = containerd.base_dir / "state" / "io.containerd.runtime.v2.task" / namespace / cid
    assert (path / "config.json").is_file(), list(path.parent.iterdir())
    return path


def test_the_bundle_containerd_wrote_passes(bundle: Path) -> None:
    code, report, _ = validate(str(bundle))
    assert code == 0, report
    assert report == {"targets": [{"target": str(bundle), "problems": []}]}
    code, report, _ = validate(str(bundle / "config.json"))
    assert code == 0, report


def _hook(stage: str, **hook: object) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.setdefault("hooks", {}).setdefault(stage, []).append(hook)


def _annotate(**values: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.setdefault("annotations", {}).update(values)


_40_MEMBERS = ",".join(f"k{i}=v{i}" for i in range(40))

SEEDED: list[tuple[str, Callable[[dict[str, Any]], object], str, str]] = [
    (
        "bad traceparent",
        _annotate(traceparent=f"00-{TRACE_ID}-B7AD6B7169203331-01"),
        "annotations.traceparent",
        "traceparent.parent_id_format",
    ),
    (
        "version ff",
        _annotate(traceparent="ff" + TRACEPARENT[2:]),
        "annotations.traceparent",
        "traceparent.version_forbidden",
    ),
    (
        "40-member tracestate",
        _annotate(traceparent=TRACEPARENT, tracestate=_40_MEMBERS),
        "annotations.tracestate",
        "tracestate.too_many_members",
    ),
    (
        "readiness ftp://",
        _annotate(**{"otelbridge.io/readiness": "ftp://127.0.0.1:21/"}),
        "annotations.otelbridge.io/readiness",
        "readiness.target_invalid",
    ),
    ("missing ociVersion", lambda d: d.pop("ociVersion"), "ociVersion", "oci.version_missing"),
    (
        "string args",
        lambda d: d["process"].update(args="sleep 300"),
        "process.args",
        "oci.args_type",
    ),
    (
        "relative hook path",
        _hook("createRuntime", path="bin/hook"),
        "hooks.createRuntime[0].path",
        "oci.hook_path_relative",
    ),
    (
        "hook timeout 0",
        _hook("poststart", path="/bin/true", timeout=0),
        "hooks.poststart[0].timeout",
        "oci.hook_timeout",
    ),
]


@pytest.mark.parametrize("case", SEEDED, ids=[s[0] for s in SEEDED])
def test_seeded_problems_in_copies_of_the_bundle(
    bundle: Path, tmp_path: Path, case: tuple[str, Callable[[dict[str, Any]], object], str, str]
) -> None:
    seeded, mutate, path, code = case
    spec = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    seeded_spec = copy.deepcopy(spec)
    mutate(seeded_spec)
    target = tmp_path / "config.json"
    target.write_text(json.dumps(seeded_spec), encoding="utf-8")
    exit_code, report, _ = validate(str(target))
    assert found(report) == [(path, code, "error")], (seeded, report)
    assert exit_code == 1


def test_all_seeded_problems_at_once_in_a_bundle_copy(bundle: Path, tmp_path: Path) -> None:
    """A copied bundle directory (its rootfs: an empty directory) with every seed but the
    conflicting traceparents: each reported, exit 1, and the text report says FAIL."""
    spec = json.loads((bundle / "config.json").read_text(encoding="utf-8"))
    for _, mutate, _, _ in SEEDED[2:]:
        mutate(spec)
    copy_dir = tmp_path / "bundle"
    (copy_dir / "rootfs").mkdir(parents=True)
    (copy_dir / "config.json").write_text(json.dumps(spec), encoding="utf-8")
    code, report, _ = validate(str(copy_dir))
    assert code == 1
    assert sorted(found(report)) == sorted((p, c, "error") for _, _, p, c in SEEDED[2:])
    text = subprocess.run(
        [*OTELBRIDGE, "validate", str(copy_dir)], capture_output=True, text=True, check=False
    )
    assert text.returncode == 1
    assert text.stdout.rstrip().endswith("FAIL"), text.stdout


GOOD_MANIFEST = f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: prod
spec:
  replicas: 2
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
      annotations:
        tracing.k8s.io/traceparent: "{TRACEPARENT}"
        otelbridge.io/readiness: "http://127.0.0.1:8080/healthz"
    spec:
      containers:
      - name: web
        image: busybox
        readinessProbe:
          httpGet: {{path: /healthz, port: 8080}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: prod}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
"""

BAD_MANIFEST = f"""\
apiVersion: batch/v1
kind: Job
metadata: {{name: migrate, namespace: prod}}
spec:
  template:
    metadata:
      annotations:
        tracing.k8s.io/traceparent: "ff{TRACEPARENT[2:]}"
        otelbridge.io/readiness: "ftp://db:21"
    spec:
      restartPolicy: Never
      containers:
      - name: migrate
        image: busybox
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: prod}}
spec:
  template:
    metadata:
      labels: {{app: db}}
    spec:
      containers:
      - name: db
        image: busybox
        readinessProbe: {{tcpSocket: {{port: 5432}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: lonely}}
spec:
  containers: []
"""


def test_kubernetes_manifests(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_MANIFEST, encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_MANIFEST, encoding="utf-8")
    config = tmp_path / "otelbridge.toml"
    config.write_text('[validate]\nrequire_trace_context = ["prod"]\n', encoding="utf-8")

    code, report, _ = validate("--config", str(config), str(good))
    assert code == 0, report
    assert found(report) == []

    code, report, _ = validate("--config", str(config), str(bad))
    assert code == 1
    tpl = "spec.template.metadata.annotations"
    assert sorted(found(report)) == sorted(
        [
            (
                f"Job/migrate: {tpl}.tracing.k8s.io/traceparent",
                "traceparent.version_forbidden",
                "error",
            ),
            (
                f"Job/migrate: {tpl}.otelbridge.io/readiness",
                "readiness.target_invalid",
                "error",
            ),
            (
                "Job/migrate: spec.template.spec.containers[0].readinessProbe",
                "readiness.probe_missing",
                "warning",
            ),
            (f"StatefulSet/db: {tpl}", "trace.missing", "error"),
            ("Pod/lonely: spec.containers", "k8s.containers_missing", "error"),
        ]
    )

    # from standard input, as `kustomize build | otelbridge validate -`
    code, report, _ = validate("--config", str(config), "-", stdin=GOOD_MANIFEST)
    assert code == 0, report

    strict = tmp_path / "strict.toml"
    strict.write_text("[validate]\nrequire_readiness = true\n", encoding="utf-8")
    code, report, _ = validate("--config", str(strict), str(bad))
    assert ("Job/migrate: spec.template.spec.containers[0].readinessProbe") in [
        p for p, c, s in found(report) if c == "readiness.probe_missing" and s == "error"
    ]


def test_an_input_that_cannot_be_read_exits_2(tmp_path: Path, bundle: Path) -> None:
    broken = tmp_path / "config.json"
    broken.write_text("{not json", encoding="utf-8")
    code, report, stderr = validate(str(bundle), str(broken), str(tmp_path / "missing.yaml"))
    assert code == 2
    assert report["targets"][0]["problems"] == []
    assert [c for _, c, _ in found(report)] == ["input.unreadable", "input.unreadable"]
    assert "missing.yaml" in stderr


def test_live_containers_of_a_namespace(
    containerd: PrivateContainerd, namespace: Namespace, tmp_path: Path
) -> None:
    good, bad, plain = (f"live-{n}-{uuid.uuid4().hex[:6]}" for n in ("good", "bad", "plain"))
    namespace.run(good, "sleep", "300", detach=True, labels={"traceparent": TRACEPARENT})
    namespace.run(
        bad,
        "sleep",
        "300",
        detach=True,
        extra_args=["--annotation", "otelbridge.io/readiness=ftp://127.0.0.1:21"],
        env={"TRACEPARENT": "ff" + TRACEPARENT[2:]},
    )
    namespace.cd.ctr(
        "containers", "create", namespace.image, plain, "sleep", "1", namespace=namespace.name
    )
    try:
        args = ("--address", containerd.address, "--namespace", namespace.name)
        code, report, _ = validate(*args)
        assert code == 1, report
        by_target = {t["target"]: t["problems"] for t in report["targets"]}
        assert by_target[f"{namespace.name}/{good}"] == []
        assert by_target[f"{namespace.name}/{plain}"] == []
        assert sorted((p["path"], p["code"]) for p in by_target[f"{namespace.name}/{bad}"]) == [
            ("spec.annotations.otelbridge.io/readiness", "readiness.target_invalid"),
            ("spec.process.env.TRACEPARENT", "traceparent.version_forbidden"),
        ]
        config = tmp_path / "otelbridge.toml"
        config.write_text(
            f'[validate]\nrequire_trace_context = ["{namespace.name}"]\n', encoding="utf-8"
        )
        code, report, _ = validate("--config", str(config), *args)
        missing = [(p, c) for p, c, _ in found(report) if c == "trace.missing"]
        assert missing == [("labels", "trace.missing")]  # the plain one: no traceparent
        code, report, _ = validate("--address", containerd.address, "--namespace", "nope-ns")
        assert code == 2
        assert [c for _, c, _ in found(report)] == ["input.unreadable"]
    finally:
        for cid in (good, bad, plain):
            _remove(containerd, namespace.name, cid)


def test_a_namespace_without_containers(containerd: PrivateContainerd) -> None:
    name = f"t-empty-{uuid.uuid4().hex[:6]}"
    containerd.ctr("namespaces", "create", name)
    try:
        code, report, stderr = validate("--address", containerd.address, "--namespace", name)
        assert (code, report) == (0, {"targets": []})
        assert "has no containers" in stderr
    finally:
        containerd.ctr("namespaces", "remove", name, check=False)


def test_a_cri_pod_live_and_its_bundles(
    containerd: PrivateContainerd, image_tar: Path, tmp_path: Path
) -> None:
    """A pod run through containerd's CRI plugin as a kubelet would (no kubelet here:
    otelbridge.testing.cri): the bundles containerd wrote for its sandbox and container
    pass even where a traceparent is required (a pod's lives in its metadata); live, its
    pod annotation is read from the sandbox record and an invalid one is flagged."""
    from otelbridge.testing.cri import (  # noqa: PLC0415
        CRI_NAMESPACE,
        ContainerSpec,
        CriClient,
        import_cri_images,
    )

    busybox = import_cri_images(containerd, image_tar.parent)
    uid = str(uuid.uuid4())
    app = ContainerSpec(
        "app",
        busybox,
        command=("/bin/sh", "-c", "sleep 300"),
        annotations={"otelbridge.io/readiness": "ftp://127.0.0.1:21"},
    )
    config = tmp_path / "otelbridge.toml"
    config.write_text('[validate]\nrequire_trace_context = ["*"]\n', encoding="utf-8")
    with CriClient(containerd.address) as cri:
        pod = cri.run_pod(
            f"val-{uid[:6]}",
            "shop",
            uid,
            annotations={"tracing.k8s.io/traceparent": "ff" + TRACEPARENT[2:]},
            containers=[app],
        )
        try:
            state = containerd.base_dir / "state" / "io.containerd.runtime.v2.task"
            bundles = [
                str(state / CRI_NAMESPACE / cid) for cid in (pod.sandbox_id, *pod.container_ids)
            ]
            code, report, _ = validate("--config", str(config), "-n", CRI_NAMESPACE, *bundles)
            assert code == 0, report
            code, report, _ = validate(
                "--config", str(config), "--address", containerd.address, "-n", CRI_NAMESPACE
            )
            by_target = {t["target"]: t["problems"] for t in report["targets"]}
            sandbox = by_target[f"{CRI_NAMESPACE}/{pod.sandbox_id}"]
            assert [(p["path"], p["code"]) for p in sandbox] == [
                (
                    "pod.metadata.annotations.tracing.k8s.io/traceparent",
                    "traceparent.version_forbidden",
                )
            ]
            container = by_target[f"{CRI_NAMESPACE}/{pod.container_ids[0]}"]
            assert [(p["path"], p["code"]) for p in container] == [
                ("cri.annotations.otelbridge.io/readiness", "readiness.target_invalid")
            ]
            assert code == 1
        finally:
            cri.remove_pod(pod.sandbox_id)
