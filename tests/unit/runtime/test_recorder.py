"""The recorder (``recorder.c``) compiled by ``otelbridge hook``, around the real runc.

runc is called as the shim would, on bundles that do not exist, so it fails fast and for
real: the recorder must pass its output and exit status on, and note the moments.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.core.model import ContainerKey
from otelbridge.runtime import install
from otelbridge.runtime.spool import Spool, parse_text

RUNC = shutil.which("runc", path="/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin")
pytestmark = pytest.mark.skipif(
    RUNC is None or shutil.which("cc") is None,
    reason="needs runc and a C compiler",
)


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> install.Installed:
    base = tmp_path_factory.mktemp("recorder")
    return install.install(str(base / "spool"), install_dir=str(base / "bin"))


def call(rec: install.Installed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(rec.binary), *args], capture_output=True, text=True, timeout=30, check=False
    )


def lines(rec: install.Installed, ns: str, cid: str) -> list[str]:
    path = rec.spool / ns / cid
    return path.read_text().splitlines() if path.exists() else []


def test_install_is_static_and_idempotent(recorder: install.Installed, tmp_path: Path) -> None:
    assert recorder.static
    again = install.install(str(recorder.spool), install_dir=str(recorder.binary.parent))
    assert again.binary == recorder.binary
    assert not again.compiled
    other = install.install(str(tmp_path / "s2"), install_dir=str(recorder.binary.parent))
    assert other.binary != recorder.binary  # another spool: another binary beside it


def test_other_commands_are_runc_untouched(recorder: install.Installed) -> None:
    before = set(recorder.spool.rglob("*"))
    direct = subprocess.run([RUNC or "", "--version"], capture_output=True, text=True, check=True)
    wrapped = call(recorder, "--version")
    assert (wrapped.returncode, wrapped.stdout) == (0, direct.stdout)
    assert set(recorder.spool.rglob("*")) == before  # nothing recorded


def test_create_and_start_are_noted_and_runc_s_status_passed_on(
    recorder: install.Installed, tmp_path: Path
) -> None:
    root = tmp_path / "runc" / "ns-a"
    created = call(recorder, "--root", str(root), "--log-format", "json", "create",
                   "--bundle", str(tmp_path / "none"), "c1")  # fmt: skip
    started = call(recorder, f"--root={root}", "start", "c1")
    assert created.returncode == 1 and "chdir" in created.stderr
    assert started.returncode == 1
    text = (recorder.spool / "ns-a" / "c1").read_text()
    moments, malformed = parse_text(text, ContainerKey("ns-a", "c1"))
    assert malformed == 0
    assert [m.kind for m in moments] == ["create.begin", "create.end", "start.begin", "start.end"]
    assert [m.status for m in moments if m.kind.endswith(".end")] == [1, 1]
    times = [m.time_ns for m in moments]
    assert times == sorted(times)
    assert moments[0].shim_pid > 0


def test_a_second_create_under_the_same_parent_is_a_reused_shim(
    recorder: install.Installed, tmp_path: Path
) -> None:
    # a shell plays the shim: both creates have it as their parent
    root = tmp_path / "runc" / "ns-b"
    create = f"{recorder.binary} --root {root} create --bundle {tmp_path}/none"
    script = f"{create} first; {create} second; exit 0"  # exit: the shell must not exec
    subprocess.run(["/bin/sh", "-c", script], capture_output=True, timeout=30, check=True)
    spool = Spool(recorder.spool, Counters(), max_age_s=60)
    first = spool.take(ContainerKey("ns-b", "first"))
    second = spool.take(ContainerKey("ns-b", "second"))
    assert first[0].shim == "new"
    assert second[0].shim == "reused"
    assert first[0].shim_pid == second[0].shim_pid


def test_names_that_are_no_container_s_are_not_recorded(
    recorder: install.Installed, tmp_path: Path
) -> None:
    for args in (
        ["--root", str(tmp_path / "ns-c"), "start", "../escape"],
        ["--root", str(tmp_path / "bad name"), "start", "c"],
        ["start", "c"],  # no --root: no namespace
    ):
        assert call(recorder, *args).returncode != 0
    assert not (recorder.spool / "ns-c").exists()
    assert not (recorder.spool.parent / "escape").exists()


def test_a_full_file_is_not_appended_to(recorder: install.Installed, tmp_path: Path) -> None:
    (recorder.spool / "ns-d").mkdir()
    full = recorder.spool / "ns-d" / "c"
    full.write_text("x" * 4096)
    assert call(recorder, "--root", str(tmp_path / "ns-d"), "start", "c").returncode == 1
    assert full.stat().st_size == 4096


def test_without_its_spool_runc_still_runs(tmp_path: Path) -> None:
    rec = install.install(str(tmp_path / "spool"), install_dir=str(tmp_path / "bin"))
    rec.spool.rmdir()
    done = call(rec, "--root", str(tmp_path / "ns"), "start", "c")
    assert done.returncode == 1 and "container does not exist" in done.stderr


def test_bad_paths_are_refused(tmp_path: Path) -> None:
    for spool in ("relative/dir", '/tmp/"quoted', "/tmp/new\nline"):
        with pytest.raises(ConfigError):
            install.install(spool, install_dir=str(tmp_path))
    with pytest.raises(ConfigError):
        install.install(str(tmp_path / "s"), runc=str(tmp_path / "missing"))


def hook(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otelbridge", "hook", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_print_config_ctr_ends_with_the_ctr_run_words(recorder: install.Installed) -> None:
    done = hook("print-config", "--spool", str(recorder.spool),
                "--install-dir", str(recorder.binary.parent), "--format", "ctr")  # fmt: skip
    assert done.returncode == 0, done.stderr
    last = done.stdout.rstrip("\n").splitlines()[-1]
    assert shlex.split(last) == ["--runc-binary", str(recorder.binary)]


def test_print_config_cri_is_toml_naming_the_recorder(recorder: install.Installed) -> None:
    done = hook("print-config", "--spool", str(recorder.spool), "--runtime", "hooked",
                "--install-dir", str(recorder.binary.parent), "--format", "cri")  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = tomllib.loads(done.stdout)["plugins"]["io.containerd.grpc.v1.cri"]
    handler = table["containerd"]["runtimes"]["hooked"]
    assert handler["runtime_type"] == "io.containerd.runc.v2"
    assert handler["options"]["BinaryName"] == str(recorder.binary)


def test_print_config_usage_errors_exit_2(tmp_path: Path) -> None:
    done = hook("print-config", "--spool", "relative", "--format", "ctr",
                "--install-dir", str(tmp_path))  # fmt: skip
    assert done.returncode == 2
    assert "absolute" in done.stderr
