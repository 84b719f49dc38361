"""`otelbridge processor` as a command: its flags, where its state goes, its exit codes
(0 on SIGTERM, 1 unusable state dir or address in use, one line; 2 every problem of the
flags and the config file)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge import cli
from otelbridge.processor import command

from .test_server_helpers import self_signed


@pytest.fixture
def free_ports() -> Iterator[tuple[int, int]]:
    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = (socks[0].getsockname()[1], socks[1].getsockname()[1])
    for s in socks:
        s.close()
    yield ports


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_where_the_state_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTELBRIDGE_STATE_DIR", raising=False)
    assert command.state_dir(None) == "/var/lib/otelbridge/processor"
    monkeypatch.setenv("OTELBRIDGE_STATE_DIR", "/srv/ob")
    assert command.state_dir(None) == "/srv/ob/processor"
    assert command.state_dir("/elsewhere") == "/elsewhere"
    assert command.state_dir("") == ""  # memory only


def test_the_defaults_are_loopback_only() -> None:
    args = cli.build_parser().parse_args(["processor"])
    assert args.otlp_grpc_addr == "127.0.0.1:4317"
    assert args.http_addr == "127.0.0.1:9465"


def test_every_problem_is_reported_and_the_exit_code_is_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[processor]\nmax_rollouts = 0\nnope = 1\n[gate]\nmin_startups = 0\n")
    empty = tmp_path / "token"
    empty.write_text("\n")
    code = cli.main(
        [
            "processor",
            "--config",
            str(config),
            "--otlp-grpc-addr",
            "localhost",
            "--http-addr",
            "1.2.3.4:99999",
            "--token-file",
            str(empty),
            "--tls-cert",
            str(tmp_path / "missing.pem"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    for problem in (
        "processor.nope: unknown key",
        "processor.max_rollouts must be >= 1",
        "gate.min_startups must be >= 1",
        "--otlp-grpc-addr 'localhost'",
        "--http-addr '1.2.3.4:99999'",
        f"--token-file {empty}: expected one token",
        "--tls-cert and --tls-key go together",
    ):
        assert problem in err, problem


def test_unusable_tls_files_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = self_signed(tmp_path)
    code = cli.main(["processor", "--tls-cert", str(cert), "--tls-key", str(cert)])
    assert code == 2
    assert "TLS certificate" in capsys.readouterr().err


def test_an_unusable_state_dir_is_exit_1_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], free_ports: tuple[int, int]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    grpc_port, http_port = free_ports
    code = cli.main(
        [
            "processor",
            "--state-dir",
            str(blocker / "state"),
            "--otlp-grpc-addr",
            f"127.0.0.1:{grpc_port}",
            "--http-addr",
            f"127.0.0.1:{http_port}",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(blocker) in err and "--state-dir" in err


@pytest.mark.parametrize("which", ["grpc", "http"])
def test_an_address_in_use_is_exit_1_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], free_ports: tuple[int, int], which: str
) -> None:
    grpc_port, http_port = free_ports
    taken = socket.socket()
    taken.bind(("127.0.0.1", grpc_port if which == "grpc" else http_port))
    taken.listen()
    try:
        code = cli.main(
            [
                "processor",
                "--state-dir",
                str(tmp_path / "state"),
                "--otlp-grpc-addr",
                f"127.0.0.1:{grpc_port}",
                "--http-addr",
                f"127.0.0.1:{http_port}",
            ]
        )
    finally:
        taken.close()
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "cannot listen" in err
    assert ("--otlp-grpc-addr" if which == "grpc" else "address") in err


def test_it_serves_until_sigterm_then_exits_0(
    tmp_path: Path, free_ports: tuple[int, int], restore_signals: None
) -> None:
    grpc_port, http_port = free_ports
    answers: list[int] = []

    def probe_then_terminate() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{http_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    answers.append(answer.status)
                    break
            except OSError:
                time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    prober = threading.Thread(target=probe_then_terminate)
    prober.start()
    code = cli.main(
        [
            "processor",
            "--state-dir",
            "",
            "--otlp-grpc-addr",
            f"127.0.0.1:{grpc_port}",
            "--http-addr",
            f"127.0.0.1:{http_port}",
        ]
    )
    prober.join(10)
    assert code == 0
    assert answers == [200]
