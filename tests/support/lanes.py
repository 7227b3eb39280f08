"""The test lanes: each test's marker (`unit`, `integration`, `e2e`) from its directory, and no I/O in `unit`.

A pytest plugin, loaded by tests/conftest.py. A test gets the lane of the directory it lives in
(tests/unit, tests/integration, tests/e2e), so a new file cannot forget its marker; a test outside
those directories, or one marked for another lane than its directory's, stops the run. A unit test
that connects a socket, starts a process or opens a database (SQLite included) fails, naming what it
did, even if the code under test swallowed the error (docs/testing.md).
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import sqlite3
import subprocess
import traceback
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

try:  # pytest's own parser of `-m` expressions (not public API): without it, every lane is collected
    from _pytest.mark.expression import Expression
except ImportError:  # pragma: no cover
    Expression = None  # type: ignore[assignment,misc]

LANES = ("unit", "integration", "e2e")
REPO = Path(__file__).resolve().parents[2]


def tests_dir(config: pytest.Config) -> Path:
    """Where the lane directories are: `tests/` beside the ini file (this repository's, or a test's own)."""
    return Path(config.rootpath).resolve() / "tests"


class IOInUnitTest(RuntimeError):
    """A unit test tried to reach outside the process (or into a database)."""


def lane_of(path: Path, root: Path) -> str | None:
    """The lane of a test file under `root` (tests/), from its first directory; None when it is in none."""
    parts = path.resolve().relative_to(root).parts
    return parts[0] if len(parts) > 1 and parts[0] in LANES else None


def _lane_can_match(config: pytest.Config, lane: str) -> bool:
    """Whether the `-m` expression can select a test of this lane (one that has only this lane's marker
    and any others): False for `-m unit` and tests/e2e, say. Tries every truth value of the other
    names the expression uses, so an answer of False is certain."""
    markexpr = config.getoption("markexpr", "") or ""
    if not markexpr or Expression is None:
        return True
    try:
        expression = Expression.compile(markexpr)
    except Exception:  # noqa: BLE001 - pytest reports a bad expression itself
        return True
    names = sorted(set(re.findall(r"[A-Za-z_][\w.\-]*", markexpr)) - {"and", "or", "not", "True", "False", *LANES})
    if len(names) > 8:
        return True
    for values in itertools.product((False, True), repeat=len(names)):
        truth = {**dict(zip(names, values, strict=True)), **{other: other == lane for other in LANES}}
        if expression.evaluate(lambda name, truth=truth, **_: truth.get(name, False)):
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Do not even import a lane the `-m` expression leaves out: `-m unit` then loads neither the
    browser, the SDKs nor the sandbox that the other lanes' modules import, and is not broken by them."""
    if collection_path.name in LANES and collection_path.parent.resolve() == tests_dir(config):
        if not _lane_can_match(config, collection_path.name):
            return True
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the markers given here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced: list[str] = []
    root = tests_dir(config)
    for item in items:
        path = Path(str(item.path))
        if not path.resolve().is_relative_to(root):
            continue  # not one of ours (run by path from elsewhere): no lane to give
        lane = lane_of(path, root)
        declared = {m.name for m in item.iter_markers() if m.name in LANES}
        if lane is None:
            misplaced.append(f"{item.nodeid}: not in tests/unit, tests/integration or tests/e2e")
        elif declared - {lane}:
            misplaced.append(f"{item.nodeid}: marked {sorted(declared)} but lives in tests/{lane}")
        else:
            item.add_marker(getattr(pytest.mark, lane))
    if misplaced:
        listing = "\n  ".join(misplaced)
        raise pytest.UsageError(f"every test belongs to exactly one lane (docs/testing.md):\n  {listing}")


# --- the unit lane's guard -----------------------------------------------------------------------


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:120]
    except Exception:  # noqa: BLE001 - a half-built object (Popen inside __init__)
        return type(value).__name__


def _caller() -> str:
    """Where in our code the blocked call was made: the innermost frames outside libraries and this file."""
    root = str(REPO)
    ours = [f for f in traceback.extract_stack()[:-2]
            if f.filename.startswith(root) and "site-packages" not in f.filename and f.filename != __file__]
    return " <- ".join(f"{Path(f.filename).relative_to(root)}:{f.lineno}" for f in reversed(ours[-3:])) or "?"


def _blocked(violations: list[str], what: str, original: Callable[..., Any], method: bool) -> Callable[..., Any]:
    def guard(*args: Any, **kwargs: Any) -> Any:
        shown = ", ".join([*(_safe_repr(a) for a in args[int(method):][:2]), *(f"{k}=..." for k in kwargs)])
        message = f"{what}({shown}) from {_caller()}"
        violations.append(message)
        raise IOInUnitTest(f"unit tests do no I/O, and this one called {message}: "
                           "use a fake (tests/unit/fakes.py) or move the test to tests/integration")

    guard.__wrapped__ = original  # type: ignore[attr-defined]
    return guard


@contextmanager
def _no_io(violations: list[str]) -> Iterator[None]:
    """Sockets, processes and database files refuse, for the duration of one phase of one unit test.

    Not seen: connections that C libraries open themselves (librdkafka's, for one).
    """
    patches = [
        (socket.socket, "connect", "socket.connect"),
        (socket.socket, "connect_ex", "socket.connect_ex"),
        (subprocess.Popen, "__init__", "subprocess.Popen"),
        (os, "system", "os.system"),
        (os, "fork", "os.fork"),
        (os, "posix_spawn", "os.posix_spawn"),
        (sqlite3, "connect", "sqlite3.connect"),
        (sqlite3.dbapi2, "connect", "sqlite3.connect"),
    ]
    # What to put back: the owner's own attribute, or nothing (an inherited method, e.g. connect).
    saved = [(owner, name, vars(owner).get(name)) for owner, name, _ in patches if hasattr(owner, name)]
    try:
        for owner, name, what in patches:
            if hasattr(owner, name):
                method = isinstance(owner, type)
                setattr(owner, name, _blocked(violations, what, getattr(owner, name), method))
        yield
    finally:
        for owner, name, original in reversed(saved):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def _guarded(item: pytest.Item) -> Generator[None, Any, Any]:
    if item.get_closest_marker("unit") is None:
        return (yield)
    violations: list[str] = []
    with _no_io(violations):
        try:
            result = yield
        except BaseException as exc:
            if not violations or isinstance(exc, KeyboardInterrupt):
                raise
            result = None  # reported below, in place of whatever the blocked call led to
    if violations:
        # Also when the code under test caught the IOInUnitTest and carried on.
        pytest.fail("unit test did I/O: " + "; ".join(dict.fromkeys(violations))
                    + " (use a fake, or move the test to tests/integration)", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    if nextitem is None:
        # The session's end: the last test's teardown also stops the session's servers (MariaDB,
        # the broker) that integration tests started, which is I/O of theirs, not this test's.
        return (yield)
    return (yield from _guarded(item))
