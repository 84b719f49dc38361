"""A tiny busybox OCI image, built offline, and its import into a private containerd.

The image is one layer: ``/bin/busybox`` from the host's ``busybox-static`` plus a
symlink per applet (``sh``, ``sleep``, ``echo``, ``true``, ``env``, ``nc``, ``httpd``,
``cat``, ``ls`` ... everything ``busybox --list`` names) and a world-writable ``/tmp``.
It is assembled with ``umoci`` into an OCI layout and tarred; no registry is involved.

Contracts:

* :func:`busybox_image_tar` and :func:`pause_image_tar` build at most once per
  ``cache_dir`` and recipe (the cache key covers the busybox binary and the image
  config) and publish the tar atomically, so concurrent callers never see half a file.
* Each tar holds exactly one image, tagged ``latest``: import it with
  :func:`import_image` under its own base name. (Importing under a generated name and
  re-tagging later confuses the CRI image cache.)
* Building needs ``umoci`` and a static busybox (see
  :func:`otelbridge.testing.containerd.ensure_host_tools`); a missing one raises
  :class:`~otelbridge.core.errors.EnvironmentProblem`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from otelbridge.core.errors import EnvironmentProblem, OtelbridgeError

if TYPE_CHECKING:
    # only for annotations: containerd imports this module at runtime
    from otelbridge.testing.containerd import PrivateContainerd

__all__ = [
    "BUSYBOX_BASE_NAME",
    "BUSYBOX_IMAGE",
    "PAUSE_BASE_NAME",
    "PAUSE_IMAGE",
    "PAUSE_SLEEP_SECONDS",
    "ImageBuildError",
    "busybox_image_tar",
    "find_static_busybox",
    "import_image",
    "pause_image_tar",
]

BUSYBOX_BASE_NAME = "localhost/otelbridge-busybox"
"""Base name to import :func:`busybox_image_tar` under."""

BUSYBOX_IMAGE = BUSYBOX_BASE_NAME + ":latest"
"""Reference of the busybox image once imported; its default command is ``/bin/sh``."""

PAUSE_BASE_NAME = "localhost/otelbridge-pause"
"""Base name to import :func:`pause_image_tar` under."""

PAUSE_IMAGE = PAUSE_BASE_NAME + ":latest"
"""Reference of the pause image once imported: the CRI ``sandbox_image``."""

PAUSE_SLEEP_SECONDS = 2147483647
"""The pause image runs ``/bin/sleep`` with this argument (the largest 32-bit int)."""

# bump when the image content or build steps change: old cached tars are then ignored
_RECIPE_VERSION = 1

_IMAGE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(OtelbridgeError):
    """Building or importing a test image failed; the message has the command and output."""


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter (PT_INTERP)."""
    pt_interp = 3
    try:
        with path.open("rb") as f:
            ident = f.read(16)
            if len(ident) < 16 or ident[:4] != b"\x7fELF":
                return False
            is_64 = ident[4] == 2
            endian = "<" if ident[5] == 1 else ">"
            header = f.read(48 if is_64 else 36)
            if is_64:
                phoff = struct.unpack_from(endian + "Q", header, 16)[0]
                phentsize, phnum = struct.unpack_from(endian + "HH", header, 38)
            else:
                phoff = struct.unpack_from(endian + "I", header, 12)[0]
                phentsize, phnum = struct.unpack_from(endian + "HH", header, 26)
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                (p_type,) = struct.unpack(endian + "I", f.read(4))
                if p_type == pt_interp:
                    return False
            return True
    except (OSError, struct.error):
        return False


def find_static_busybox() -> Path | None:
    """Returns the path of a statically linked busybox on this machine, or None.

    Looks on ``PATH`` first, then in ``/bin`` and ``/usr/bin`` (where ``busybox-static``
    installs it). A dynamically linked busybox does not count: it would not run in a
    rootfs without libc.
    """
    candidates: list[Path] = []
    found = shutil.which("busybox")
    if found:
        candidates.append(Path(found))
    candidates += [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    for candidate in candidates:
        if candidate.is_file() and _is_static_elf(candidate):
            return candidate
    return None


def busybox_image_tar(cache_dir: Path) -> Path:
    """Returns an OCI archive of the busybox image (command ``/bin/sh``), building it once.

    Import it with ``import_image(cd, tar, BUSYBOX_BASE_NAME, namespace)`` to get
    :data:`BUSYBOX_IMAGE`.
    """
    return _cached_image_tar(cache_dir, "otelbridge-busybox", entrypoint=(), cmd=("/bin/sh",))


def pause_image_tar(cache_dir: Path) -> Path:
    """Returns an OCI archive of the pause image, building it once.

    Same rootfs as the busybox image; entrypoint ``/bin/sleep``, argument
    :data:`PAUSE_SLEEP_SECONDS`. Import it into ``k8s.io`` with
    ``import_image(cd, tar, PAUSE_BASE_NAME, "k8s.io")`` to get :data:`PAUSE_IMAGE`.
    """
    return _cached_image_tar(
        cache_dir,
        "otelbridge-pause",
        entrypoint=("/bin/sleep",),
        cmd=(str(PAUSE_SLEEP_SECONDS),),
    )


def import_image(
    cd: PrivateContainerd, tar: Path, base_name: str, namespace: str = "default"
) -> str:
    """Imports ``tar`` (one image tagged ``latest``) into ``namespace`` of ``cd``.

    Returns the reference ``BASE_NAME:latest`` after checking that containerd lists it.
    Raises :class:`~otelbridge.testing.containerd.CtrError` if ``ctr images import``
    fails and :class:`ImageBuildError` if the reference does not appear.
    """
    cd.ctr("images", "import", "--base-name", base_name, str(tar), namespace=namespace, timeout=120)
    ref = f"{base_name}:latest"
    refs = cd.ctr("images", "ls", "-q", namespace=namespace).stdout.split()
    if ref not in refs:
        raise ImageBuildError(f"imported {tar} into {namespace} but {ref} is not listed: {refs}")
    return ref


def _cached_image_tar(
    cache_dir: Path, name: str, *, entrypoint: Sequence[str], cmd: Sequence[str]
) -> Path:
    busybox = find_static_busybox()
    if busybox is None:
        raise EnvironmentProblem(
            "no statically linked busybox; install it as root with: "
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y busybox-static"
        )
    key = hashlib.sha256()
    key.update(f"{_RECIPE_VERSION}\0{list(entrypoint)}\0{list(cmd)}\0".encode())
    key.update(busybox.read_bytes())
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / f"{name}-{key.hexdigest()[:16]}.tar"
    if dest.is_file():
        return dest
    _build_image_tar(busybox, dest, entrypoint=entrypoint, cmd=cmd)
    return dest


def _run(cmd: Sequence[str]) -> None:
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"{' '.join(cmd)} timed out") from exc
    if done.returncode != 0:
        raise ImageBuildError(
            f"{' '.join(cmd)} exited with {done.returncode}: {done.stderr.strip() or done.stdout}"
        )


def _build_image_tar(
    busybox: Path, dest: Path, *, entrypoint: Sequence[str], cmd: Sequence[str]
) -> None:
    umoci = shutil.which("umoci")
    if umoci is None:
        raise EnvironmentProblem(
            "umoci is not installed; install it as root with: "
            "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y umoci"
        )
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()

    # built next to dest so the final rename stays on one filesystem (atomic)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=dest.parent) as tmp:
        work = Path(tmp)
        rootfs = work / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        (rootfs / "tmp").mkdir()
        # explicit modes: the layer must not depend on the caller's umask
        os.chmod(rootfs, 0o755)
        os.chmod(rootfs / "bin", 0o755)
        os.chmod(rootfs / "tmp", 0o1777)  # sh redirections and tests write here
        shutil.copyfile(busybox, rootfs / "bin" / "busybox")
        os.chmod(rootfs / "bin" / "busybox", 0o755)
        for applet in applets:
            if applet != "busybox" and "/" not in applet:
                (rootfs / "bin" / applet).symlink_to("busybox")

        layout = work / "oci"
        image = f"{layout}:latest"
        _run([umoci, "init", "--layout", str(layout)])
        _run([umoci, "new", "--image", image])
        _run([umoci, "insert", "--image", image, str(rootfs), "/"])
        config = [umoci, "config", "--image", image, "--config.env", _IMAGE_PATH]
        for arg in entrypoint:
            config += ["--config.entrypoint", arg]
        for arg in cmd:
            config += ["--config.cmd", arg]
        _run(config)
        # drop the manifests and configs each umoci step superseded
        _run([umoci, "gc", "--layout", str(layout)])

        staged = work / "image.tar"
        with tarfile.open(staged, "w") as tar:
            for child in sorted(layout.iterdir()):
                tar.add(child, arcname=child.name)
        os.replace(staged, dest)
