"""Installing the recorder: compile ``recorder.c`` for a spool, and say how to use it.

The recorder is a small static C program (a Python process per container start costs
about 18 ms; this one well under a millisecond, ``benchmarks/hook.py``). Its two paths,
the real runc and the spool, are compiled in: the shim runs the runc binary with the
shim's environment and arguments only, so there is nowhere else to put them.

Contracts:

* :func:`install` is idempotent: the binary's name is a hash of the source, the paths and
  the compiler flags (``otelbridge-runc-<hash>``), so installing again finds it, and a
  changed spool or runc gives a new binary beside the old one (which a running shim may
  still use). It is compiled into a temporary file and renamed into place. The spool
  directory is created (mode 0700).
* Paths must be absolute and free of quotes, backslashes and control characters (they
  become C string literals); the real runc must not be a recorder itself. Problems are
  raised as :class:`~otelbridge.core.errors.ConfigError` (bad input) or
  :class:`~otelbridge.core.errors.EnvironmentProblem` (no compiler, compile failed).
* :func:`cri_config` and :func:`ctr_config` return the text ``otelbridge hook
  print-config`` prints; ``ctr_config``'s last line is the extra ``ctr run`` arguments,
  as shell words.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, Literal

from otelbridge.core.errors import ConfigError, EnvironmentProblem

DEFAULT_INSTALL_DIR: Final = "/usr/local/libexec/otelbridge"
BINARY_PREFIX: Final = "otelbridge-runc-"
CRI_PLUGIN: Final = 'plugins."io.containerd.grpc.v1.cri"'
RUNC_RUNTIME_TYPE: Final = "io.containerd.runc.v2"

_SEARCH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_FLAGS = ("-O2", "-Wall", "-Wextra")


@dataclass(frozen=True, slots=True)
class Installed:
    """A recorder on disk: where it is, what it records into, which runc it runs."""

    binary: Path
    spool: Path
    runc: Path
    static: bool
    compiled: bool  # False: it was there already


def recorder_source() -> bytes:
    """The C source of the recorder, as shipped in the package."""
    return resources.files("otelbridge.runtime").joinpath("recorder.c").read_bytes()


def _checked_path(what: str, value: str) -> Path:
    if not value or not os.path.isabs(value):
        raise ConfigError([f"{what} must be an absolute path, got {value!r}"])
    if any(c in value for c in '"\\') or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError([f"{what} must not hold quotes, backslashes or control characters"])
    return Path(os.path.normpath(value))


def find_runc(runc: str | None = None) -> Path:
    """The real runc: ``runc`` if given, else the first ``runc`` on PATH (and the sbin
    directories root's PATH may lack). It must exist and must not be a recorder."""
    if runc is None:
        path = os.pathsep.join([os.environ.get("PATH", ""), *_SEARCH])
        found = shutil.which("runc", path=path)
        if found is None:
            raise EnvironmentProblem("runc not found (install the runc package, or --runc PATH)")
        runc = found
    checked = _checked_path("--runc", runc)
    if not os.access(checked, os.X_OK):
        raise ConfigError([f"--runc {checked}: not an executable file"])
    if Path(os.path.realpath(checked)).name.startswith(BINARY_PREFIX):
        raise ConfigError([f"--runc {checked} is an otelbridge recorder, not runc"])
    return checked


def find_compiler() -> str:
    """``$CC``, else ``cc``, ``gcc`` or ``clang`` on PATH."""
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    raise EnvironmentProblem(
        "no C compiler to build the recorder (install gcc and libc6-dev, or set CC)"
    )


def install(
    spool: str,
    *,
    runc: str | None = None,
    install_dir: str = DEFAULT_INSTALL_DIR,
    compiler: str | None = None,
) -> Installed:
    """Compiles the recorder for ``spool`` into ``install_dir`` unless it is there
    already (see the module docstring); creates the spool directory."""
    spool_path = _checked_path("--spool", spool)
    runc_path = find_runc(runc)
    directory = _checked_path("--install-dir", install_dir)
    source = recorder_source()
    defines = (f'-DOB_RUNC="{runc_path}"', f'-DOB_SPOOL="{spool_path}"')
    digest = hashlib.blake2b(digest_size=6)
    for part in (source, *(d.encode() for d in defines), *(f.encode() for f in _FLAGS)):
        digest.update(part + b"\0")
    binary = directory / f"{BINARY_PREFIX}{digest.hexdigest()}"
    os.makedirs(spool_path, mode=0o700, exist_ok=True)
    if os.access(binary, os.X_OK):
        return Installed(binary, spool_path, runc_path, static=_is_static(binary), compiled=False)
    cc = compiler or find_compiler()
    os.makedirs(directory, mode=0o755, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="otelbridge-recorder-") as tmp:
        src = Path(tmp) / "recorder.c"
        src.write_bytes(source)
        out = directory / f".{binary.name}.{os.getpid()}.tmp"
        static = True
        errors = ""
        for link in (["-static"], []):  # static: no dynamic loader at every runc call
            cmd = [cc, *_FLAGS, *link, *defines, "-o", str(out), str(src)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise EnvironmentProblem(f"cannot run the C compiler {cc}: {exc}") from exc
            if done.returncode == 0:
                break
            errors = done.stderr.strip()
            static = False
        else:
            raise EnvironmentProblem(f"compiling the recorder failed:\n{errors}")
        os.chmod(out, 0o755)
        os.replace(out, binary)
    return Installed(binary, spool_path, runc_path, static=static, compiled=True)


def _is_static(binary: Path) -> bool:
    """Whether an ELF binary has no program interpreter (no PT_INTERP segment)."""
    try:
        with open(binary, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only: good enough here
                return False
            order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
            phoff = int.from_bytes(head[32:40], order)
            phentsize = int.from_bytes(head[54:56], order)
            phnum = int.from_bytes(head[56:58], order)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(
        int.from_bytes(table[i : i + 4], order) != pt_interp
        for i in range(0, len(table), phentsize)
    )


def _header(installed: Installed, cost: str) -> list[str]:
    return [
        f"# otelbridge runtime recorder (docs/runtime.md): {installed.binary}",
        f"#   runs {installed.runc}, records into {installed.spool}",
        f"#   read by: otelbridge run --hook-spool {installed.spool}",
        f"#   cost: {cost}",
    ]


def cri_config(installed: Installed, runtime: str = "runc") -> str:
    """What to merge into containerd's config (version 2) for CRI's runtime handler
    ``runtime``: the recorder as the runc binary of every pod's sandbox and containers."""
    table = f"{CRI_PLUGIN}.containerd.runtimes.{_toml_key(runtime)}"
    lines = [
        *_header(installed, "one exec per runc call, a fork for runc create and start"),
        "# merge into containerd's config.toml, then restart containerd; keep the other",
        "# keys of these tables (SystemdCgroup, Root, ...) as they are",
        f"[{table}]",
        f'  runtime_type = "{RUNC_RUNTIME_TYPE}"',
        "",
        f"[{table}.options]",
        f'  BinaryName = "{installed.binary}"',
    ]
    return "\n".join(lines) + "\n"


def ctr_config(installed: Installed) -> str:
    """The extra ``ctr run`` arguments (the last line, shell words) that run a container
    with the recorder as its runc binary."""
    lines = [
        *_header(installed, "one exec per runc call, a fork for runc create and start"),
        "# add the next line's arguments to `ctr run` (before the image)",
        shlex.join(["--runc-binary", str(installed.binary)]),
    ]
    return "\n".join(lines) + "\n"


def _toml_key(name: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    if name and all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        return name
    if any(c in name for c in '"\\') or any(ord(c) < 32 for c in name):
        raise ConfigError([f"runtime handler name {name!r} cannot be written"])
    return f'"{name}"'


__all__ = [
    "BINARY_PREFIX",
    "DEFAULT_INSTALL_DIR",
    "Installed",
    "cri_config",
    "ctr_config",
    "find_compiler",
    "find_runc",
    "install",
    "recorder_source",
]
