"""Benchmark: why the audit chain is built by a sealer and not by each writing transaction (issue 12).

Not a test: it prints figures. Raw SQL with PyMySQL on a durable MariaDB it starts (or
TEST_DATABASE_URL), `--clients` threads each running a top-up's last transaction shape over and over
for `--seconds`, three ways, alternated:

- **no audit**: UPDATE a record row (guarded move), INSERT an outbox-like row, COMMIT;
- **insert only** (what the service does): the same plus one two-row INSERT into audit_events, COMMIT;
  the chain is built later by the sealer, outside these transactions;
- **chained in the transaction**: the same, but the audit rows take the chain head first
  (SELECT ... FROM audit_chain FOR UPDATE), carry seq and hash, and move the head, so every writing
  transaction waits for the one before it to commit.

It prints transactions/s and p99 for each.

Run:

    .venv/bin/python bench/audit_chain_choice.py [--clients 32] [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pymysql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from localparts.mariadb import MariaDBServer  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402

KEY = b"k" * 32
AUDIT_COLS = "occurred_at, actor, action, resource_type, resource_id, outcome, http_status, request_id, source, summary"


def connect(url: str) -> pymysql.connections.Connection:
    p = urlsplit(url.replace("mysql+pymysql", "mysql"))
    return pymysql.connect(host=p.hostname, port=p.port or 3306, user=p.username, password=p.password,
                           database=p.path.lstrip("/"), autocommit=False)


def setup(url: str, clients: int) -> None:
    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS bench_records (id INT PRIMARY KEY, status VARCHAR(16), n BIGINT)")
        cur.execute("CREATE TABLE IF NOT EXISTS bench_outbox (id BIGINT AUTO_INCREMENT PRIMARY KEY, payload TEXT)")
        cur.executemany("INSERT IGNORE INTO bench_records VALUES (%s, 'PENDING', 0)", [(i,) for i in range(clients)])
    conn.commit()
    conn.close()


def run(url: str, mode: str, clients: int, seconds: float) -> tuple[float, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        conn = connect(url)
        cur = conn.cursor()
        mine: list[float] = []
        barrier.wait()
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            cur.execute("UPDATE bench_records SET n = n + 1 WHERE id = %s AND status = 'PENDING'", (i,))
            cur.execute("INSERT INTO bench_outbox (payload) VALUES (%s)", ("x" * 300,))
            rows = [("2026-12-02 00:00:00", "user:u_1", a, "payment", f"pay_{i}", "succeeded", 201, "req_x",
                     "10.0.0.1", "201 POST /payments/topup") for a in ("payment.captured", "POST /payments/topup")]
            if mode == "insert only":
                cur.executemany(f"INSERT INTO audit_events ({AUDIT_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                                rows)
            elif mode == "chained in the transaction":
                cur.execute("SELECT last_seq, last_hash FROM audit_chain WHERE id = 1 FOR UPDATE")
                seq, prev = cur.fetchone()
                chained = []
                for r in rows:
                    seq += 1
                    h = hmac.new(KEY, prev.encode() + repr(r).encode(), hashlib.sha256).hexdigest()
                    chained.append((*r, seq, prev, h))
                    prev = h
                cur.executemany(f"INSERT INTO audit_events ({AUDIT_COLS}, seq, prev_hash, hash) "
                                "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", chained)
                cur.execute("UPDATE audit_chain SET last_seq = %s, last_hash = %s WHERE id = 1", (seq, prev))
            conn.commit()
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return len(latencies) / seconds, latencies[int(0.99 * (len(latencies) - 1))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    server = None
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        server = MariaDBServer(durable=True).start()
        url = server.url
    try:
        migrate.upgrade(url)
        setup(url, args.clients)
        print(f"{args.clients} clients, {args.seconds:g} s per run, durable MariaDB, load "
              f"{Path('/proc/loadavg').read_text().split()[0]}")
        for rnd in range(args.rounds):
            for mode in ("no audit", "insert only", "chained in the transaction"):
                rate, p99 = run(url, mode, args.clients, args.seconds)
                print(f"round {rnd + 1}  {mode:<27} {rate:8.1f} tx/s  p99 {p99:7.1f} ms")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
