"""Small process and port helpers shared by the local parts (standard library only)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_is_free(port: int) -> bool:
    """True when 127.0.0.1:port can be bound (nobody listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when the parent thread dies.

    This keeps a mariadbd or tansu from outliving a test run that was killed with SIGKILL.
    Returns None on other platforms.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl

    def _preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return _preexec


def spawn(args: list[str], log_path: str, *, die_with_parent: bool = True) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session, stdout and stderr appended to log_path."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(  # noqa: S603 - fixed argument lists, no shell
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent_preexec() if die_with_parent else None,  # noqa: PLW1509
            env={**os.environ},
        )


def terminate(proc: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    """SIGTERM, wait up to grace seconds, then SIGKILL; always reaps the process."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            kill(proc)
    proc.wait()


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL and reap."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def tail(path: str, lines: int = 40) -> str:
    """The last lines of a log file, or a note when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def wait_until(check: Callable[[], bool], deadline: float, interval: float = 0.1) -> bool:
    """Poll check() until it is true or time.monotonic() passes deadline."""
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
