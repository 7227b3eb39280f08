"""The test lanes themselves (tests/support/lanes.py), run as pytest processes on a small tree of their own:
markers come from directories, a misplaced test stops the run, a unit test that does I/O fails even when
the code under test swallowed the error, and `-m unit` never imports another lane."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

INI = """\
[pytest]
addopts = -p tests.support.lanes --strict-markers -p no:cacheprovider -p no:schemathesis -p no:hypothesispytest
markers =
    unit: u
    integration: i
    e2e: e
"""

UNIT = '''
import socket, sqlite3, subprocess, sys


def test_pure():
    assert sum([1, 2]) == 3


def test_socket():
    socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_socket_error_swallowed():
    try:
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    except Exception:
        pass  # "the database is down", says the code under test, and carries on


def test_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_sqlite():
    sqlite3.connect(":memory:")
'''

INTEGRATION = '''
import sqlite3


def test_sqlite_is_fine_here():
    sqlite3.connect(":memory:").close()
'''


def make_tree(root: Path, files: dict[str, str]) -> Path:
    (root / "pytest.ini").write_text(INI)
    for name, body in files.items():
        path = root / "tests" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    return root


def pytest_in(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def outcomes(out: str) -> dict[str, str]:
    """test name -> PASSED / FAILED / ERROR, from the -rA summary."""
    found: dict[str, str] = {}
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR") and "::" in rest:
            found[rest.split("::")[1].split(" ")[0]] = word
    return found


def test_a_unit_test_that_does_io_fails_and_says_what_it_did(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"unit/test_io.py": UNIT, "integration/test_db.py": INTEGRATION})
    out = pytest_in(root)
    assert outcomes(out.stdout) == {
        "test_pure": "PASSED", "test_socket": "FAILED", "test_socket_error_swallowed": "FAILED",
        "test_subprocess": "FAILED", "test_sqlite": "FAILED", "test_sqlite_is_fine_here": "PASSED",
    }, out.stdout[-3000:]
    for what in ("socket.connect", "subprocess.Popen", "sqlite3.connect"):
        assert f"unit test did I/O: {what}(" in out.stdout


def test_markers_come_from_the_directory(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {"unit/test_a.py": "def test_a():\n    pass\n",
                                "integration/deeper/test_b.py": "def test_b():\n    pass\n",
                                "e2e/test_c.py": "def test_c():\n    pass\n"})
    for lane, expected in (("unit", "test_a"), ("integration", "test_b"), ("e2e", "test_c")):
        out = pytest_in(root, "-m", lane)
        assert out.returncode == 0 and list(outcomes(out.stdout)) == [expected], out.stdout[-2000:]


def test_a_test_outside_the_lanes_or_marked_for_another_stops_the_run(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {
        "test_loose.py": "def test_loose():\n    pass\n",
        "unit/test_marked.py": "import pytest\n\n@pytest.mark.e2e\ndef test_marked():\n    pass\n",
    })
    out = pytest_in(root)
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    assert "test_loose.py::test_loose: not in tests/unit, tests/integration or tests/e2e" in out.stderr
    assert "test_marked.py::test_marked: marked ['e2e'] but lives in tests/unit" in out.stderr


def test_the_unit_lane_never_imports_the_other_lanes(tmp_path: Path) -> None:
    broken = "raise ImportError('this lane needs a browser')\n"
    root = make_tree(tmp_path, {"unit/test_a.py": "def test_a():\n    pass\n",
                                "integration/test_broken.py": broken, "e2e/test_broken.py": broken})
    fast = pytest_in(root, "-m", "unit")
    assert fast.returncode == 0 and outcomes(fast.stdout) == {"test_a": "PASSED"}, fast.stdout[-2000:]
    assert pytest_in(root, "-m", "not e2e").returncode != 0  # the integration lane is imported then
    assert pytest_in(root).returncode != 0
