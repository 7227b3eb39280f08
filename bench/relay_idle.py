"""Benchmark: what an idle stack costs. The leader relay's CPU, and the queries a second MariaDB receives.

Not a test: it prints figures. It starts its own MariaDB (binary log on, ROW) and Tansu broker, runs
`payment-service relay` (and then the API and the worker beside it) as real processes with nothing to
publish, and measures over windows of `--window` seconds:

1. binlog mode: the relay alone (its queries a second and its CPU), then the whole idle stack (API
   under gunicorn, worker, relay: the queries a second MariaDB receives from all of them);
2. polling mode (`RELAY_BINLOG=false`, as where the binlog is not available): the relay alone, after
   `--idle` seconds idle (its polls have slowed down to RELAY_IDLE_POLL_SECONDS by then).

Queries are `SHOW GLOBAL STATUS LIKE 'Questions'` deltas (every statement a client sends, COMMIT
included; the two of the measurement are taken off). CPU is the process's user + system time from
/proc, as a share of one core.

    .venv/bin/python bench/relay_idle.py [--window 30] [--idle 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pymysql  # noqa: E402

from gateway_sandbox.server import free_port  # noqa: E402
from localparts.broker import TansuBroker  # noqa: E402
from localparts.mariadb import MariaDBServer, create_database_at  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402

VENV_BIN = Path(sys.executable).parent
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class Questions:
    def __init__(self, db: MariaDBServer) -> None:
        self.conn = pymysql.connect(unix_socket=db.socket_path, user="root", password="", autocommit=True)

    def read(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            row = cur.fetchone()
        assert row is not None
        return int(row[1])


def measure(db: MariaDBServer, pid: int, window: float) -> tuple[float, float]:
    """(queries a second MariaDB received, CPU of `pid` as a share of one core) over `window` seconds."""
    questions = Questions(db)
    try:
        q0, c0, t0 = questions.read(), cpu_seconds(pid), time.monotonic()
        time.sleep(window)
        q1, c1, t1 = questions.read(), cpu_seconds(pid), time.monotonic()
    finally:
        questions.conn.close()
    return (q1 - q0 - 2) / (t1 - t0), (c1 - c0) / (t1 - t0)


class Service:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([str(VENV_BIN / "payment-service"), *args], env={**os.environ, **env},
                                     cwd=str(REPO), stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_for_line(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log.name} exited:\n{self.log.read_text()[-3000:]}")
            for line in self.log.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            time.sleep(0.2)
        raise TimeoutError(f"{text!r} not in {self.log}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._out.close()


def mode_of(line: str) -> str:
    record = json.loads(line)
    return f"wake-up mode {record.get('mode')} ({record.get('reason') or 'the binlog streams'})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=30.0, help="seconds each figure is measured over")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds the polling relay is idle before measuring")
    args = ap.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-relay-idle-"))
    print(f"cpus: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}; logs in {logs}")
    with MariaDBServer(durable=False) as db, TansuBroker() as broker:
        url = create_database_at(db.url, f"bench_idle_{uuid.uuid4().hex[:8]}")
        migrate.upgrade(url)
        env = {"DATABASE_URL": url, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "RELAY_METRICS_PORT": "0",
               "EVENTS_TOPIC": f"bench.idle.{uuid.uuid4().hex[:6]}", "LOG_FORMAT": "json"}
        rows: list[tuple[str, str]] = []

        # 1. binlog mode ---------------------------------------------------------------------------
        relay = Service(["relay"], env, logs / "relay-binlog.log")
        api = worker = None
        try:
            line = relay.wait_for_line("relay wake-up mode")
            relay.wait_for_line("created topic")
            time.sleep(3)  # past the start
            q, cpu = measure(db, relay.proc.pid, args.window)
            rows.append(("binlog: the relay alone, queries/s", f"{q:.2f}"))
            rows.append(("binlog: leader relay CPU", f"{cpu:.2%} of a core"))
            worker = Service(["worker"], env, logs / "worker.log")
            time.sleep(5)  # the worker's first runs
            q, _ = measure(db, relay.proc.pid, args.window)
            rows.append(("binlog: relay and worker, queries/s", f"{q:.2f}"))
            port = free_port()
            api = Service(["serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"], env, logs / "serve.log")
            api.wait_for_line("Booting worker")
            time.sleep(5)  # gunicorn's workers up
            q, cpu = measure(db, relay.proc.pid, args.window)
            rows.append(("binlog: the whole idle stack (API, worker, relay), queries/s", f"{q:.2f}"))
            rows.append(("binlog: leader relay CPU, beside the stack", f"{cpu:.2%} of a core"))
            print(f"relay: {mode_of(line)}")
        finally:
            for service in (worker, api, relay):
                if service is not None:
                    service.stop()

        # 2. polling mode ---------------------------------------------------------------------------
        relay = Service(["relay"], {**env, "RELAY_BINLOG": "false"}, logs / "relay-polling.log")
        try:
            print(f"relay: {mode_of(relay.wait_for_line('relay wake-up mode'))}")
            time.sleep(args.idle)
            q, cpu = measure(db, relay.proc.pid, args.window)
            rows.append((f"polling: the relay alone after {args.idle:.0f} s idle, queries/s", f"{q:.2f}"))
            rows.append(("polling: leader relay CPU", f"{cpu:.2%} of a core"))
        finally:
            relay.stop()

    print(f"\nidle, windows of {args.window:.0f} s (RELAY_IDLE_POLL_SECONDS 1, lease renewed every second)")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:{width}s}  {value}")


if __name__ == "__main__":
    main()
