"""The hook spool as the bridge reads it: parsing, hostile entries, bounds and cleaning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerKey
from otelbridge.runtime.spool import (
    CREATE_BEGIN,
    CREATE_END,
    MAX_READ_BYTES,
    SHIMS_DIR,
    TAKEN_PREFIX,
    Moment,
    Spool,
    parse_line,
    parse_text,
    process_start_ticks,
    valid_name,
)

KEY = ContainerKey("default", "web")
T = 1_700_000_000_000_000_000
S = 1_000_000_000


def spool_at(tmp_path: Path, **kw: object) -> tuple[Spool, Counters]:
    counters = Counters()
    return Spool(tmp_path, counters, max_age_s=60, **kw), counters  # type: ignore[arg-type]


def write(tmp_path: Path, ns: str, cid: str, text: str | bytes, mtime_ns: int = T) -> Path:
    (tmp_path / ns).mkdir(exist_ok=True)
    path = tmp_path / ns / cid
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_a_line_of_each_moment_parses() -> None:
    assert parse_line(f"ob1 {T} create.begin default web shim=reused shim_pid=12", KEY) == Moment(
        CREATE_BEGIN, T, shim="reused", shim_pid=12
    )
    assert parse_line(f"ob1 {T} create.end default web status=137", KEY) == Moment(
        CREATE_END, T, status=137
    )
    assert parse_line(f"ob1 {T} start.begin default web", KEY) is not None
    assert parse_line(f"ob1 {T} start.end default web status=0", KEY) is not None


@pytest.mark.parametrize(
    "line",
    [
        "",
        f"ob2 {T} create.begin default web",  # another format version
        f"ob1 {T} exec.begin default web",  # an unknown moment
        "ob1 -5 create.begin default web",
        "ob1 0 create.begin default web",
        "ob1 12x create.begin default web",
        f"ob1 {'9' * 25} create.begin default web",  # beyond int64
        f"ob1 {T} create.begin default other",  # another container's line
        f"ob1 {T} create.begin kube web",
        f"ob1 {T} create.begin default web shim=maybe",
        f"ob1 {T} create.begin default web status=0",  # status belongs to ends
        f"ob1 {T} create.end default web shim=new",
        f"ob1 {T} create.end default web status=-1",
        f"ob1 {T} create.end default web bogus",
        f"ob1 {T} create.end default web  status=0",  # a doubled space
        f"ob1 {T} start.begin default web x=1",
    ],
)
def test_malformed_lines_are_refused(line: str) -> None:
    assert parse_line(line, KEY) is None


def test_a_cut_last_line_is_malformed() -> None:
    text = f"ob1 {T} start.begin default web\nob1 {T + 1} start.end default web sta"
    moments, malformed = parse_text(text, KEY)
    assert len(moments) == 1
    assert malformed == 1


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("web", True),
        ("a.b-c_d", True),
        ("x" * 76, True),
        ("x" * 77, False),
        ("", False),
        (".", False),
        ("..", False),
        ("../etc", False),
        ("a/b", False),
        (".taken.x", False),
        ("a..b", False),
        ("-a", False),
        ("a b", False),
        ("é", False),
    ],
)
def test_only_containerd_identifiers_are_names(name: str, ok: bool) -> None:
    assert valid_name(name) is ok


def test_take_reads_and_removes_the_file(tmp_path: Path) -> None:
    spool, counters = spool_at(tmp_path)
    write(tmp_path, "default", "web", f"ob1 {T} start.begin default web\n")
    assert spool.take(KEY) == [Moment("start.begin", T)]
    assert list((tmp_path / "default").iterdir()) == []
    assert spool.take(KEY) == []  # taken: nothing the second time
    assert not any(counters.snapshot().values())


def test_take_without_a_spool_or_file_is_empty(tmp_path: Path) -> None:
    spool, counters = spool_at(tmp_path / "missing")
    assert spool.take(KEY) == []
    assert spool.take(ContainerKey("../..", "etc")) == []  # never a path outside
    assert not any(counters.snapshot().values())


def test_hostile_contents_are_counted_not_fatal(tmp_path: Path) -> None:
    spool, counters = spool_at(tmp_path)
    junk = b"\xff\xfe\x00garbage\n" + f"ob1 {T} start.begin default web\n".encode()
    write(tmp_path, "default", "web", junk + b"A" * (MAX_READ_BYTES * 2))
    moments = spool.take(KEY)
    assert moments == [Moment("start.begin", T)]
    # the junk line, the over-long rest (not read), the cut tail
    assert counters.get(semconv.RUNTIME_MALFORMED) == 3
    assert not (tmp_path / "default" / "web").exists()


def test_a_symlink_or_fifo_is_never_followed_nor_blocks(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"ob1 {T} start.begin default web\n")
    folder = tmp_path / "spool" / "default"
    folder.mkdir(parents=True)
    (folder / "web").symlink_to(secret)
    os.mkfifo(folder / "fifo")
    spool, counters = spool_at(tmp_path / "spool")
    assert spool.take(KEY) == []
    assert spool.take(ContainerKey("default", "fifo")) == []
    assert secret.exists()  # the link went, its target did not
    assert list(folder.iterdir()) == []
    assert counters.get(semconv.RUNTIME_MALFORMED) == 2
    (folder / "web").symlink_to(secret)
    os.utime(folder / "web", ns=(T, T), follow_symlinks=False)
    spool.sweep(T + 3600 * S)
    assert list(folder.iterdir()) == []
    assert secret.exists()


def test_sweep_removes_old_files_and_counts_their_moments(tmp_path: Path) -> None:
    spool, counters = spool_at(tmp_path)
    write(tmp_path, "default", "old", f"ob1 {T} start.begin default old\n", mtime_ns=T)
    write(tmp_path, "default", "new", f"ob1 {T} start.begin default new\n", mtime_ns=T + 50 * S)
    removed = spool.sweep(T + 61 * S)
    assert removed == 1
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["new"]
    assert counters.get(semconv.RUNTIME_UNMATCHED) == 1


def test_sweep_does_not_count_namespaces_the_bridge_does_not_follow(tmp_path: Path) -> None:
    spool, counters = spool_at(tmp_path, followed=("default",))
    write(tmp_path, "other", "c", f"ob1 {T} start.begin other c\n", mtime_ns=T)
    assert spool.sweep(T + 61 * S) == 1
    assert counters.get(semconv.RUNTIME_UNMATCHED) == 0


def test_sweep_bounds_the_number_of_files_oldest_first(tmp_path: Path) -> None:
    spool, counters = spool_at(tmp_path, max_files=3)
    for i in range(5):
        write(tmp_path, "default", f"c{i}", f"ob1 {T} start.begin default c{i}\n", T + i * S)
    assert spool.sweep(T + 10 * S) == 2
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["c2", "c3", "c4"]
    assert counters.get(semconv.RUNTIME_UNMATCHED) == 2


def test_sweep_removes_foreign_names_and_stale_half_taken_files(tmp_path: Path) -> None:
    spool, counters = spool_at(tmp_path)
    write(tmp_path, "default", "has space", "x\n", mtime_ns=T)
    write(tmp_path, "default", f"{TAKEN_PREFIX}web.1.1", "x\n", mtime_ns=T)
    write(tmp_path, "default", f"{TAKEN_PREFIX}web.1.2", "x\n", mtime_ns=T + 59 * S)
    assert spool.sweep(T + 61 * S) == 2
    assert [p.name for p in (tmp_path / "default").iterdir()] == [f"{TAKEN_PREFIX}web.1.2"]
    assert counters.get(semconv.RUNTIME_MALFORMED) == 1


def test_sweep_removes_the_markers_of_exited_shims(tmp_path: Path) -> None:
    spool, _ = spool_at(tmp_path)
    shims = tmp_path / SHIMS_DIR
    shims.mkdir()
    me = os.getpid()
    mine = f"{me}-{process_start_ticks(me)}"
    for name in (mine, f"{me}-1", "999999999-5", "junk"):
        (shims / name).write_text("")
    spool.sweep(T)
    assert [p.name for p in shims.iterdir()] == [mine]


def test_sweep_of_a_missing_spool_is_quiet(tmp_path: Path) -> None:
    spool, _ = spool_at(tmp_path / "missing")
    assert spool.sweep(T) == 0
