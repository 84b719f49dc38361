"""The hook spool: the moments the runtime-side recorder wrote, read by the bridge.

The recorder (``recorder.c``, installed as the runc binary of containerd's shim) appends
one line per moment to one file per container::

    DIR/<namespace>/<container id>      ob1 <time ns> <moment> <namespace> <id> [key=value ...]
    DIR/.shims/<pid>-<start ticks>      a marker per shim process that ran a runc create

Moments (:data:`MOMENTS`): ``create.begin`` (``shim=new|reused|unknown``,
``shim_pid=N``), ``create.end`` (``status=N``), ``start.begin``, ``start.end``
(``status=N``). Times are ``CLOCK_REALTIME`` nanoseconds, the clock containerd stamps its
envelopes with.

Contracts:

* :meth:`Spool.take` (the event thread, when a startup is emitted) renames a container's
  file away before reading it, so a line the recorder appends afterwards starts a new
  file (a later task of the container) and is never lost to a half-read; then removes it.
  A missing file costs one failed ``rename``: containers started without the recorder
  are emitted exactly as before. Lines that do not parse, or name another container than
  their file, are counted (``otelbridge.runtime.malformed``) and skipped.
* :meth:`Spool.sweep` (the janitor thread, :class:`SpoolJanitor`) bounds the spool: a
  file no startup took within ``max_age_s`` (:data:`MAX_AGE_S`) is removed and its lines
  counted as unmatched (``otelbridge.runtime.unmatched``; for namespaces the bridge
  follows), beyond
  ``max_files`` the oldest go first, a crashed bridge's half-taken files are removed, and
  so are the markers of shims that exited. The recorder bounds what it writes itself (a
  file's size, a directory's size), for the time no bridge is running.
* Never raises on what it finds in the directory: a vanished file is not an error, an
  unreadable one is logged (throttled). Thread-safe: both sides rename before reading,
  so a file is read by one of them only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from otelbridge.core import semconv
from otelbridge.core.clock import Clock
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerKey

_tlog = ThrottledLogger(logging.getLogger(__name__))
_NS = 1_000_000_000

FORMAT: Final = "ob1"
"""The first word of every line: the format's version."""

CREATE_BEGIN: Final = "create.begin"
CREATE_END: Final = "create.end"
START_BEGIN: Final = "start.begin"
START_END: Final = "start.end"
MOMENTS: Final = (CREATE_BEGIN, CREATE_END, START_BEGIN, START_END)

SHIM_STATES: Final = ("new", "reused", "unknown")
"""Values of ``shim=`` on ``create.begin``: whether an earlier runc create ran under the
same shim process (``reused``: CRI's one shim per pod)."""

SHIMS_DIR: Final = ".shims"
TAKEN_PREFIX: Final = ".taken."

MAX_READ_BYTES: Final = 8192
"""A container's file is read up to here (the recorder stops appending at 4 KiB)."""

MAX_FILES: Final = 20_000
"""Files kept in the spool at most; beyond it the oldest are removed (and counted)."""

MAX_AGE_S: Final = 3600.0
"""A container's file that no startup took within this long after its last write is
removed (its moments counted as unmatched). It must exceed the longest startup: a startup
is emitted, and its file taken, at its end (``readiness.timeout_s`` included)."""

TAKEN_TTL_S: Final = 60.0
"""A half-taken file (a bridge that crashed while reading it) is removed after this."""

# containerd's identifier rule (namespaces and container ids): what may become a path
_NAME = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*\Z")
_MAX_NAME = 76
_DIGITS = re.compile(r"[0-9]{1,19}\Z")


def valid_name(name: str) -> bool:
    """A containerd identifier: safe as one path element of the spool."""
    return len(name) <= _MAX_NAME and _NAME.match(name) is not None


@dataclass(frozen=True, slots=True)
class Moment:
    """One line of the spool: what happened (``kind``, one of :data:`MOMENTS`) and when.

    ``status``: runc's exit status (``*.end``; 128 + N for signal N). ``shim`` and
    ``shim_pid``: on ``create.begin``, whether the shim was new and its pid."""

    kind: str
    time_ns: int
    status: int | None = None
    shim: str = ""
    shim_pid: int = 0


def parse_line(line: str, key: ContainerKey) -> Moment | None:
    """The moment a spool line of ``key``'s file records, or None when it is malformed
    (another format, an unknown moment, a time that is not a positive integer, another
    container's name, an unknown or badly formed ``key=value``)."""
    words = line.split(" ")
    if len(words) < 5 or words[0] != FORMAT or words[2] not in MOMENTS:
        return None
    if words[3] != key.namespace or words[4] != key.id:
        return None
    kind = words[2]
    if _DIGITS.match(words[1]) is None or int(words[1]) <= 0:
        return None
    time_ns = int(words[1])
    status: int | None = None
    shim = ""
    shim_pid = 0
    for word in words[5:]:
        name, sep, value = word.partition("=")
        if not sep:
            return None
        if name == "status" and kind.endswith(".end") and _DIGITS.match(value):
            status = int(value)
        elif name == "shim" and kind == CREATE_BEGIN and value in SHIM_STATES:
            shim = value
        elif name == "shim_pid" and kind == CREATE_BEGIN and _DIGITS.match(value):
            shim_pid = int(value)
        else:
            return None
    return Moment(kind, time_ns, status, shim, shim_pid)


def parse_text(text: str, key: ContainerKey) -> tuple[list[Moment], int]:
    """The moments of a file's text, and how many of its lines were malformed. A last
    line without its newline is one the recorder is still writing, or a cut: malformed."""
    lines = text.split("\n")
    tail = lines.pop()  # "" when the text ends with a newline
    moments = []
    malformed = 1 if tail else 0
    for line in lines:
        moment = parse_line(line, key)
        if moment is None:
            malformed += 1
        else:
            moments.append(moment)
    return moments, malformed


class Spool:
    """The spool directory as the bridge sees it (see the module docstring).

    ``followed``: the namespaces the bridge follows (empty: all); files of other
    namespaces are removed when they grow old, without being counted as unmatched."""

    def __init__(
        self,
        directory: Path,
        counters: Counters,
        *,
        max_age_s: float = MAX_AGE_S,
        followed: tuple[str, ...] = (),
        max_files: int = MAX_FILES,
    ) -> None:
        self.directory = directory
        self._counters = counters
        self._max_age_ns = int(max_age_s * _NS)
        self._followed = frozenset(followed)
        self._max_files = max_files
        self._seq = 0
        self._lock = threading.Lock()

    def _taken_name(self, container_id: str) -> str:
        with self._lock:
            self._seq += 1
            seq = self._seq
        return f"{TAKEN_PREFIX}{container_id}.{os.getpid()}.{seq}"

    def take(self, key: ContainerKey) -> list[Moment]:
        """The moments recorded for ``key``, removed from the spool (empty: none)."""
        if not valid_name(key.namespace) or not valid_name(key.id):
            return []
        folder = self.directory / key.namespace
        taken = folder / self._taken_name(key.id)
        try:
            os.rename(folder / key.id, taken)
        except FileNotFoundError:
            return []  # not recorded (no recorder for this container), or taken already
        except OSError as exc:
            _tlog.warning("take", "%s: cannot take its spool file: %s", key, exc)
            return []
        return self._consume(taken, key)

    def _consume(self, path: Path, key: ContainerKey) -> list[Moment]:
        """Reads and removes a file renamed away; counts its malformed lines."""
        malformed = 0
        data = b""
        try:
            # never follows a link, never blocks on a FIFO: only the recorder's regular
            # files are read (the spool is root's, but a bad entry must not stall us)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    data = os.read(fd, MAX_READ_BYTES + 1)
                else:
                    malformed += 1
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                malformed += 1  # a symbolic link
            else:
                _tlog.warning("read", "%s: cannot read its spool file: %s", key, exc)
        with contextlib.suppress(OSError):
            os.unlink(path)
        if len(data) > MAX_READ_BYTES:
            data = data[:MAX_READ_BYTES]
            malformed += 1  # the rest is not read
        moments, bad = parse_text(data.decode("utf-8", "replace"), key)
        malformed += bad
        if malformed:
            self._counters.inc(semconv.RUNTIME_MALFORMED, malformed)
            _tlog.warning("malformed", "%s: %d malformed spool line(s) skipped", key, malformed)
        return moments

    # -- the janitor's side ----------------------------------------------------------------
    def sweep(self, now_ns: int) -> int:
        """Applies the bounds once at wall time ``now_ns`` (see the module docstring);
        returns the files removed."""
        now = now_ns
        removed = 0
        files: list[tuple[int, Path, ContainerKey]] = []
        for folder in _subdirs(self.directory):
            if folder.name == SHIMS_DIR:
                removed += _sweep_shims(folder)
                continue
            for entry in _entries(folder):
                mtime = _mtime(entry)
                if mtime is None:
                    continue
                if entry.name.startswith(TAKEN_PREFIX):
                    if now - mtime > int(TAKEN_TTL_S * _NS):
                        removed += self._expire(Path(entry.path), None)
                    continue
                key = ContainerKey(folder.name, entry.name)
                if now - mtime > self._max_age_ns:
                    removed += self._expire(Path(entry.path), key)
                else:
                    files.append((mtime, Path(entry.path), key))
        if len(files) > self._max_files:
            files.sort()
            for _, path, key in files[: len(files) - self._max_files]:
                removed += self._expire(path, key)
        return removed

    def _expire(self, path: Path, key: ContainerKey | None) -> int:
        """Removes a file no startup took; its moments count as unmatched."""
        if key is None:  # a half-taken file: the name no longer says whose it was
            with contextlib.suppress(OSError):
                os.unlink(path)
            return 1
        if not valid_name(key.namespace) or not valid_name(key.id):
            # not the recorder's: no container has such a name
            self._counters.inc(semconv.RUNTIME_MALFORMED)
            with contextlib.suppress(OSError):
                os.unlink(path)
            return 1
        taken = path.with_name(self._taken_name(key.id))
        try:
            os.rename(path, taken)
        except OSError:
            return 0  # taken meanwhile by a startup
        moments = self._consume(taken, key)
        if moments and (not self._followed or key.namespace in self._followed):
            self._counters.inc(semconv.RUNTIME_UNMATCHED, len(moments))
        return 1


def _subdirs(directory: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except FileNotFoundError:
        return
    except OSError as exc:
        _tlog.warning("scan", "cannot read the hook spool %s: %s", directory, exc)
        return
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                yield entry


def _entries(folder: os.DirEntry[str]) -> list[os.DirEntry[str]]:
    """Everything but directories (links and FIFOs too: they are removed like files)."""
    try:
        with os.scandir(folder.path) as it:
            return [e for e in it if not e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _mtime(entry: os.DirEntry[str]) -> int | None:
    try:
        return entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        return None


def process_start_ticks(pid: int) -> str | None:
    """Field 22 of ``/proc/PID/stat`` (the process's start, clock ticks since boot), as
    the recorder names its shim markers; None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _sweep_shims(folder: os.DirEntry[str]) -> int:
    """Removes the markers of shims that exited (or whose pid now names another process)."""
    removed = 0
    for entry in _entries(folder):
        pid, sep, ticks = entry.name.partition("-")
        if sep and pid.isdigit() and process_start_ticks(int(pid)) == ticks:
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed += 1
    return removed


class SpoolJanitor:
    """Runs :meth:`Spool.sweep` every ``interval_s`` on its own thread
    (``otelbridge-hook-spool``) until :meth:`stop`, at ``clock``'s time (a wall clock:
    file times are compared with it)."""

    def __init__(self, spool: Spool, clock: Clock, *, interval_s: float = 30.0) -> None:
        self._spool = spool
        self._clock = clock
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otelbridge-hook-spool", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._spool.sweep(self._clock.now_ns())
            except Exception:  # a bug must not end the bounds for good: logged, retried
                _tlog.log(logging.ERROR, "bug", "hook spool sweep failed", exc_info=True)
            self._stop.wait(self._interval_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the thread (idempotent; works without start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


__all__ = [
    "CREATE_BEGIN",
    "CREATE_END",
    "FORMAT",
    "MAX_AGE_S",
    "MOMENTS",
    "START_BEGIN",
    "START_END",
    "Moment",
    "Spool",
    "SpoolJanitor",
    "parse_line",
    "parse_text",
    "process_start_ticks",
    "valid_name",
]
