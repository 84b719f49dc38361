"""Running a command inside a rollout span: ``otelbridge rollout exec``'s process.

The command gets otelbridge's standard streams and an environment of the caller's
choosing; SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to otelbridge are forwarded to it,
once. It runs in otelbridge's process group, so a signal the terminal sends to the group
(Ctrl-C) reaches it directly and is not sent again: on Linux the signals are blocked and
taken with ``sigtimedwait``, whose ``si_code`` tells the kernel's (the terminal's) from
a process's ``kill``; elsewhere every one is forwarded. A signal ignored when otelbridge
started (``nohup``, ``cmd &``) stays ignored, for the command too.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Final

__all__ = ["EXIT_NOT_EXECUTABLE", "EXIT_NOT_FOUND", "Finished", "Relay", "run_command"]

EXIT_NOT_EXECUTABLE: Final = 126
EXIT_NOT_FOUND: Final = 127


@dataclass(frozen=True)
class Finished:
    """How a command ended."""

    exit_code: int
    """As a shell reports it: the exit status, 128+N after signal N, 127 not found,
    126 not executable."""
    signal: int | None = None
    """The signal that ended it, if one did."""
    error: str | None = None
    """Why it could not be started (then it never ran)."""

    def describe(self, command: str) -> str | None:
        """Why this counts as a failure, or ``None`` for exit code 0."""
        if self.error is not None:
            return f"cannot run {command!r}: {self.error}"
        if self.signal is not None:
            return f"{command} was killed by {signal.Signals(self.signal).name}"
        if self.exit_code:
            return f"{command} exited with code {self.exit_code}"
        return None


_FORWARDED: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: ``si_code`` of a signal the kernel sent (a terminal's Ctrl-C, Ctrl-\\, hangup): Linux
_SI_KERNEL: Final = 0x80
#: a child's dispositions Python changed at start (it ignores SIGPIPE): as Popen resets them
_RESET_IN_CHILD: Final = (signal.SIGPIPE, signal.SIGXFSZ)


class Relay:
    """The forwarded signals, held for one child (see the module docstring).

    Main thread only. Use: :meth:`hold` (before starting threads that should inherit
    the block), :func:`run_command` (which calls :meth:`wait`), then :meth:`release` to
    hand the signals to a handler of the caller's while it finishes, and always
    :meth:`restore`.
    """

    def __init__(self) -> None:
        self.signals = [s for s in _FORWARDED if signal.getsignal(s) is not signal.SIG_IGN]
        self.pid: int | None = None
        self._previous = {s: signal.getsignal(s) for s in self.signals}
        self._chld = signal.getsignal(signal.SIGCHLD)
        self._waits = hasattr(signal, "sigtimedwait")
        self.mask: set[int] = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        """The signal mask before :meth:`hold`: the child's."""

    def hold(self) -> None:
        """From now on, these signals are the child's."""
        for s in self.signals:
            signal.signal(s, self._forward)
        if self._chld is signal.SIG_IGN:  # inherited: children would be reaped unseen
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if self._waits:
            signal.pthread_sigmask(signal.SIG_BLOCK, [*self.signals, signal.SIGCHLD])

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        # a thread that does not block them (started before hold()) took the signal
        if self.pid is not None:
            os.kill(self.pid, signum)

    def wait(self, pid: int) -> int:
        """Forwards signals to ``pid`` until it ends; returns its wait status."""
        self.pid = pid
        while True:
            if self._waits:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self.pid = None
                    return status
                info = signal.sigtimedwait([*self.signals, signal.SIGCHLD], 1.0)
                if info is None or info.si_signo == signal.SIGCHLD:
                    continue
                if info.si_code != _SI_KERNEL:  # the kernel's (a terminal's) reached it too
                    os.kill(pid, info.si_signo)
            else:
                _, status = os.waitpid(pid, 0)  # interrupted by a signal: handled, resumed
                self.pid = None
                return status

    def release(self, handler: Callable[[int, FrameType | None], None] | signal.Handlers) -> None:
        """The child is gone: these signals go to ``handler``; any that came meanwhile
        arrives now."""
        self.pid = None
        for s in self.signals:
            signal.signal(s, handler)
        if self._waits:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)

    def restore(self) -> None:
        """The dispositions and mask as they were before :meth:`hold`. Idempotent."""
        if self._waits:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)
        for s, previous in self._previous.items():
            # None: set outside Python, which cannot put it back; the default is closest
            signal.signal(s, signal.SIG_DFL if previous is None else previous)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL if self._chld is None else self._chld)


def _spawn(argv: Sequence[str], env: Mapping[str, str], mask: Iterable[int]) -> int:
    """Starts ``argv`` (looked up in ``PATH``) with this process's standard streams, the
    signal mask ``mask``, and SIGPIPE/SIGXFSZ at their defaults; OSError when it cannot."""
    return os.posix_spawnp(
        argv[0], list(argv), dict(env), setsigmask=mask, setsigdef=_RESET_IN_CHILD
    )


def run_command(
    argv: Sequence[str], env: Mapping[str, str], *, relay: Relay | None = None
) -> Finished:
    """Runs ``argv`` to its end, its stdin, stdout and stderr otelbridge's, forwarding
    signals to it (module docstring); never raises for a command that cannot start
    (:attr:`Finished.error`). Main thread only. With ``relay`` (already held), the caller
    releases and restores the signals itself: ``exec`` holds them before its exporters
    start threads and keeps them until its span is sent."""
    own = relay is None
    if relay is None:
        relay = Relay()
        relay.hold()
    try:
        try:
            pid = _spawn(argv, env, relay.mask)
        except FileNotFoundError:
            return Finished(EXIT_NOT_FOUND, error="command not found")
        except OSError as exc:
            return Finished(EXIT_NOT_EXECUTABLE, error=exc.strerror or str(exc))
        code = os.waitstatus_to_exitcode(relay.wait(pid))
        if code < 0:
            return Finished(128 - code, signal=-code)
        return Finished(code)
    finally:
        if own:
            relay.restore()
