"""The deployable stack: Dockerfile, docker-compose.yml and deploy/kubernetes.

What is real and what is static here:

* No Docker engine runs where the tests run, so the image is not built and the compose
  stack is not started. The Dockerfile is checked statically (pinned base images, every
  COPY source present and not excluded by .dockerignore, the entrypoint an otelbridge
  command, a non-root default user). docker-compose.yml is loaded by the Compose
  specification's reference implementation (github.com/compose-spec/compose-go, a small
  program in tests/unit/composecheck built into a cache directory outside the
  repository); without Go that test skips, unless ``OTELBRIDGE_REQUIRE_BACKENDS=1``.
* No Kubernetes API server runs here: deploy/kubernetes is rendered by the real
  ``kubectl kustomize`` and every object is validated strictly against the Kubernetes
  API schemas by ``kubernetes-validate``; the least-privilege properties are asserted
  on the rendered objects.
* The readiness probes' need for SYS_ADMIN and SYS_PTRACE is measured with a real
  network namespace (root only).

The Grafana dashboard and the user docs: tests/unit/test_docs_links.py.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from otelbridge.core.config import load_config

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
COMPOSECHECK = ROOT / "tests" / "unit" / "composecheck"
REQUIRE = "OTELBRIDGE_REQUIRE_BACKENDS"


def _skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"required ({REQUIRE}=1) but cannot run: {reason}")
    pytest.skip(reason)


def _versions() -> dict[str, str]:
    """KEY=value lines of scripts/backends.d/versions (the pinned backend releases)."""
    out: dict[str, str] = {}
    for line in (ROOT / "scripts/backends.d/versions").read_text().splitlines():
        m = re.fullmatch(r"([A-Z_]+)=(\S+)", line.strip())
        if m:
            out[m[1]] = m[2]
    return out


def _pinned(image: str) -> bool:
    """A digest, or a tag that is not ``latest`` and names a version (has a digit)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


# -- Dockerfile ----------------------------------------------------------------------------------
def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(
        r"\\\n", " ", "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        parts = path.split("/")
        hit = any(
            fnmatch.fnmatch("/".join(parts[: i + 1]), pat)
            or fnmatch.fnmatch(parts[i], pat.removeprefix("**/"))
            for i in range(len(parts))
        )
        if hit:
            ignored = not negate
    return ignored


def test_dockerfile_base_images_pinned_and_stages_named() -> None:
    stages = {}
    for word, args in _dockerfile():
        if word == "FROM":
            image, *rest = args.split()
            assert image in stages or _pinned(image), f"unpinned base image {image}"
            if rest:
                stages[rest[-1]] = image
    assert stages, "no FROM"


def test_dockerfile_copy_sources_exist_and_reach_the_context() -> None:
    patterns = _dockerignore()
    copies = [args for word, args in _dockerfile() if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        words = args.split()
        if any(w.startswith("--from=") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not _ignored(src.rstrip("/"), patterns), f"COPY {src}: excluded by .dockerignore"


def test_dockerfile_entrypoint_is_otelbridge_and_user_not_root() -> None:
    instr = dict(_dockerfile())
    assert json.loads(instr["ENTRYPOINT"]) == ["otelbridge"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'otelbridge = "otelbridge.cli:main"' in pyproject
    cmd = json.loads(instr["CMD"])
    help_out = subprocess.run(
        [str(ROOT / ".venv/bin/otelbridge"), *cmd],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert help_out.returncode == 0, help_out.stderr
    user = instr["USER"].split(":")[0]
    assert user not in ("0", "root")


# -- docker-compose.yml --------------------------------------------------------------------------
def _go_tool(source: Path, name: str) -> Path:
    """A test tool's binary built from its Go module under tests/unit (once per source and
    Go version) into a cache directory outside the repository."""
    go = shutil.which("go")
    if go is None:
        _skip_or_fail(f"no Go toolchain: {name} cannot be built")
        raise AssertionError  # unreachable
    gov = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(gov.encode())
    for part in ("go.mod", "go.sum", "main.go"):
        digest.update((source / part).read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    binary = cache / f"otelbridge-{name}" / digest.hexdigest()[:16] / name
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".tmp")
        done = subprocess.run(
            [go, "build", "-mod=readonly", "-o", str(tmp), "."],
            check=False,
            cwd=source,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            _skip_or_fail(f"{name} did not build: {done.stderr.strip()[-500:]}")
        tmp.rename(binary)
    return binary


def _composecheck() -> Path:
    """The Compose reference implementation's loader (tests/unit/composecheck)."""
    return _go_tool(COMPOSECHECK, "composecheck")


def _load_compose(path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CONTAINERD_SOCKET", "OTELBRIDGE_HOST_NAME", "OTELCOL_TAIL_SAMPLE_PERCENT")
    }
    return subprocess.run(
        [str(_composecheck()), str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    done = _load_compose(ROOT / "docker-compose.yml")
    assert done.returncode == 0, done.stderr
    project: dict[str, Any] = json.loads(done.stdout)
    return project


def test_compose_checker_refuses_what_the_specification_does_not_allow(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: x:1\n    imagee: y\n")
    done = _load_compose(bad)
    assert done.returncode != 0 and "imagee" in done.stderr
    bad.write_text("services:\n  a:\n    image: x:1\n    depends_on: [nosuch]\n")
    assert _load_compose(bad).returncode != 0


def test_compose_services_images_pinned_and_equal_to_the_backends(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {
        "otelcol",
        "jaeger",
        "prometheus",
        "grafana",
        "otelbridge",
        "otelbridge-processor-1",
        "otelbridge-processor-2",
    }
    for name, svc in services.items():
        assert _pinned(svc["image"]), f"{name}: image {svc['image']} is not pinned"
    versions = _versions()
    assert services["otelcol"]["image"] == versions["OTELCOL_IMAGE"]
    assert services["jaeger"]["image"] == versions["JAEGER_IMAGE"]
    assert "tempo" not in json.dumps(services).lower()  # not-to-use here (AGPL): docs say so


def test_compose_bridge_and_processors(compose: dict[str, Any]) -> None:
    services = compose["services"]
    bridge = services["otelbridge"]
    assert Path(bridge["build"]["context"]) == ROOT
    assert bridge["command"][0] == "run"
    mounts = {v["target"]: v for v in bridge["volumes"]}
    sock = mounts["/run/containerd/containerd.sock"]
    assert sock["type"] == "bind" and sock["source"] == "/run/containerd/containerd.sock"
    assert sock["read_only"] is True
    assert set(mounts) == {"/run/containerd/containerd.sock", "/var/lib/otelbridge"}
    assert bridge["cap_drop"] == ["ALL"] and sorted(bridge["cap_add"]) == [
        "SYS_ADMIN",
        "SYS_PTRACE",
    ]
    assert bridge["pid"] == "host" and bridge["read_only"] is True
    assert not bridge.get("privileged") and bridge.get("network_mode") is None
    for name in ("otelbridge-processor-1", "otelbridge-processor-2"):
        proc = services[name]
        assert proc["command"][0] == "processor" and proc["cap_drop"] == ["ALL"]
        assert "user" not in proc  # the image's otelbridge user
    # every file the stack mounts from the repository exists
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind" and vol["target"] != "/run/containerd/containerd.sock":
                assert Path(vol["source"]).exists(), f"{name}: {vol['source']} missing"
    # the Prometheus config scrapes these services by name
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        t.split(":")[0]
        for job in prom["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    assert targets <= set(services)


# -- deploy/kubernetes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    # `kubectl kustomize`, or where kubectl is not installed the kustomize API it embeds
    # (tests/unit/kustomizecheck: Debian's kubectl is too old for this kustomization)
    kubectl = shutil.which("kubectl")
    argv = (
        [kubectl, "kustomize", str(KUSTOMIZE_DIR)]
        if kubectl is not None
        else [
            str(_go_tool(COMPOSECHECK.parent / "kustomizecheck", "kustomizecheck")),
            str(KUSTOMIZE_DIR),
        ]
    )
    done = subprocess.run(
        argv,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_every_object_validates_strictly_against_the_kubernetes_schemas(
    rendered: list[dict[str, Any]],
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    kinds = set()
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)
        kinds.add(obj["kind"])
    assert kinds >= {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "Deployment",
        "ConfigMap",
    }
    # strict really is strict: an unknown field is refused
    ds = next(o for o in rendered if o["kind"] == "DaemonSet")
    bad = json.loads(json.dumps(ds))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def _one(rendered: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in rendered if o["kind"] == kind and o["metadata"]["name"] == name)


def test_bridge_daemonset_least_privilege(rendered: list[dict[str, Any]]) -> None:
    """The bridge's permissions, exactly: what docs/operations.md, "Permissions", says.
    SYS_ADMIN and SYS_PTRACE (and hostPID) are the readiness probes' price: setns(2) into
    a container's network namespace, opened from /proc/<pid>/ns/net of a process whose
    credentials differ; everything else is dropped."""
    ds = _one(rendered, "DaemonSet", "otelbridge")
    pod = ds["spec"]["template"]["spec"]
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert pod["hostPID"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == "otelbridge"
    (ctr,) = pod["containers"]
    sc = ctr["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert not sc.get("privileged")
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == ["SYS_ADMIN", "SYS_PTRACE"]
    for key in ("requests", "limits"):
        assert set(ctr["resources"][key]) == {"cpu", "memory"}
    env = {e["name"]: e for e in ctr["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"/run/containerd/containerd.sock", "/var/lib/otelbridge"}
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    assert mounts["/run/containerd/containerd.sock"]["readOnly"] is True
    assert ctr["image"].startswith("otelbridge:") and ctr["args"][0] == "run"


def test_processor_and_collector_run_restricted(rendered: list[dict[str, Any]]) -> None:
    sts = _one(rendered, "StatefulSet", "otelbridge-processor")
    dep = _one(rendered, "Deployment", "otelbridge-collector")
    for workload in (sts, dep):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(k in pod for k in ("hostPID", "hostNetwork", "hostIPC"))
        assert not any("hostPath" in v for v in pod.get("volumes", []))
        for ctr in pod["containers"]:
            sc = ctr["securityContext"]
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert set(ctr["resources"]["limits"]) == {"cpu", "memory"}
    assert sts["spec"]["template"]["spec"]["containers"][0]["args"][0] == "processor"
    pdb = _one(rendered, "PodDisruptionBudget", "otelbridge-processor")
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == _versions()["OTELCOL_IMAGE"]
    # the gateway's routing names exactly the StatefulSet's pods under the headless Service
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    replicas = sts["spec"]["replicas"]
    svc = sts["spec"]["serviceName"]
    want = {f"otelbridge-processor-{i}.{svc}:4317" for i in range(replicas)}
    assert {v for k, v in env.items() if k.startswith("OTELBRIDGE_PROCESSOR_")} == want


def test_copies_inside_the_kustomization_equal_their_originals() -> None:
    """kustomize reads no file outside its directory: these copies must not drift."""
    assert (KUSTOMIZE_DIR / "collector/processors.yaml").read_text() == (
        ROOT / "collector-config/processors.yaml"
    ).read_text()

    def objects(path: Path) -> list[Any]:
        return list(yaml.safe_load_all(path.read_text()))

    assert objects(KUSTOMIZE_DIR / "bridge/rbac.yaml") == objects(ROOT / "deploy/rbac.yaml")


def test_bridge_config_loads_with_otelbridge_own_loader() -> None:
    cfg = load_config(KUSTOMIZE_DIR / "bridge/otelbridge.toml")
    assert cfg.readiness.kubernetes is True
    assert str(cfg.state.dir) == "/var/lib/otelbridge"


# -- the readiness probes' capabilities, measured ------------------------------------------------
_SETNS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
try:
    fd = os.open(f"/proc/{sys.argv[1]}/ns/net", os.O_RDONLY)
except OSError as e:
    print("open", e.errno); sys.exit(0)
print("setns", 0 if libc.setns(fd, 0x40000000) == 0 else ctypes.get_errno())
"""


def test_probes_need_exactly_sys_admin_and_sys_ptrace(tmp_path: Path) -> None:
    """Why the DaemonSet (and docker-compose.yml) add SYS_ADMIN and SYS_PTRACE: a root
    process holding only those two can open another process's /proc/<pid>/ns/net and
    setns(2) into it, as otelbridge/readiness/netns.py does; with either one alone it
    cannot. Measured here with a real network namespace (unshare -n) whose holder keeps
    more capabilities than the caller, as a container's init process does; setpriv
    limits the caller's capabilities. Needs root, unshare and setpriv, else skips.
    Not measured: the seccomp RuntimeDefault profiles of containerd and Docker, which
    allow setns to a holder of CAP_SYS_ADMIN (docs/operations.md)."""
    tools = [shutil.which(t) for t in ("unshare", "setpriv")]
    if os.geteuid() != 0 or None in tools:
        pytest.skip("needs root, unshare and setpriv")
    holder = subprocess.Popen([str(tools[0]), "-n", "--fork", "sleep", "120"])
    netns_pid = None
    try:
        for _ in range(100):
            kids = Path(f"/proc/{holder.pid}/task/{holder.pid}/children")
            text = kids.read_text().split() if kids.exists() else []
            if text:
                netns_pid = text[0]
                break
            time.sleep(0.05)
        assert netns_pid, "unshare did not start its child"
        script = tmp_path / "setns.py"
        script.write_text(_SETNS)

        def attempt(caps: str) -> str:
            done = subprocess.run(
                [str(tools[1]), "--inh-caps=-all", "--ambient-caps=-all",
                 f"--bounding-set=-all{caps}", "--", sys.executable, str(script), netns_pid],
                check=False, capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        assert attempt(",+sys_admin,+sys_ptrace") == "setns 0"
        assert attempt(",+sys_admin").startswith("open ")  # EACCES: ptrace access mode
        assert attempt(",+sys_ptrace") != "setns 0"  # EPERM: setns needs CAP_SYS_ADMIN
        assert attempt("").startswith("open ")
    finally:
        # the namespace's holder (unshare's child) by its pid, then unshare itself
        if netns_pid:
            os.kill(int(netns_pid), signal.SIGKILL)
        holder.kill()
        holder.wait(timeout=10)
