"""Benchmark: the outbox relay's throughput against a bare producer, and its commit-to-ack latency.

Not a test: it prints figures. It starts its own MariaDB (binary log on, ROW) and Tansu broker (or
uses TEST_DATABASE_URL and TEST_KAFKA_BOOTSTRAP_SERVERS), then:

1. throughput: pre-fills N outbox rows (CloudEvents payloads as the services write them, over
   `--users` users), then `--rounds` times: a bare idempotent confluent-kafka producer sends the same
   messages (key, value, headers precomputed: the ceiling), and a new relay drains the rows (reset to
   unpublished) until every row is marked published, its start included. Prints each round and the
   medians; the ratio is the relay's share of the ceiling.
2. latency: writer processes commit one event per transaction at a steady `--rate` for `--seconds`
   while the relay runs, once woken by the binlog and once polling (no binlog), side by side; the
   relay's `on_delivered` hook stamps each broker ack, the writers stamp each commit. Prints
   commit-to-ack p50/p95/p99, and broker-to-consumer (a TopicReader in another process: Tansu's fetch
   path adds a few hundred ms, that part is the broker's).

    .venv/bin/python bench/relay.py [--events 20000] [--rounds 3] [--rate 1000] [--seconds 10]
                                    [--batch-size 5000] [--poll-ms 5] [--linger-ms 5] [--writers 4] [--durable]

BENCH_DEBUG=1 also lists the events slower than 50 ms (when, and how slow).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Producer  # noqa: E402
from sqlalchemy import Engine, func, insert, select, update  # noqa: E402

from config import load_settings  # noqa: E402
from localparts.broker import TansuBroker, create_topic  # noqa: E402
from localparts.mariadb import MariaDBServer  # noqa: E402
from localparts.topic_reader import TopicReader  # noqa: E402
from payment_service.adapters import migrate  # noqa: E402
from payment_service.adapters.kafka_publisher import CONTENT_TYPE, Delivered, sign  # noqa: E402
from payment_service.adapters.orm import OutboxEventRow  # noqa: E402
from payment_service.adapters.repository import outbox_row  # noqa: E402
from payment_service.bootstrap import build_relay, make_engine  # noqa: E402
from payment_service.domain.events import Event, EventType  # noqa: E402
from payment_service.worker import tune_process  # noqa: E402

SIGNING_KEY = "bench-signing-key"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def captured(user: str, n: int) -> Event:
    pid = f"pay_{uuid.uuid4().hex[:24]}"
    return Event(
        EventType.PAYMENT_CAPTURED, pid, user,
        {"payment_id": pid, "user_id": user, "amount": 50000 + n, "currency": "INR", "gateway": "stripe",
         "gateway_payment_id": f"pi_{uuid.uuid4().hex[:24]}", "captured_at": "2026-11-21T10:00:00.000Z"},
    )


def prefill(engine: Engine, n: int, users: int) -> None:
    t = OutboxEventRow.__table__
    chunk = 2000
    with engine.begin() as conn:
        for start in range(0, n, chunk):
            rows = [outbox_row(captured(f"u_{i % users}", i)) for i in range(start, min(n, start + chunk))]
            conn.execute(insert(t), rows)


def published(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(OutboxEventRow)
                                .where(OutboxEventRow.published_at.is_not(None))).scalar_one())


def raw_ceiling(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
                linger_ms: int) -> float:
    """Events/s of a bare idempotent producer sending these messages, all delivery reports received."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": linger_ms, "partitioner": "murmur2_random"})
    done = [0]
    failed = [0]

    def report(err: Any, _msg: Any) -> None:
        if err is None:
            done[0] += 1
        else:
            failed[0] += 1

    t0 = time.perf_counter()
    for i, (key, value, headers) in enumerate(messages):
        while True:
            try:
                producer.produce(topic, key=key, value=value, headers=headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 999:
            producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - t0
    assert done[0] == len(messages) and not failed[0], (done, failed)
    return len(messages) / elapsed


# --- latency phase: writers and a consumer in processes of their own ---------------------------


def writer_proc(url: str, rate: float, seconds: float, users: int, index: int, ready: Any, go: Any,
                out: Any) -> None:
    """Commits one outbox row per transaction at `rate`, as the services' transactions would.

    The load generator, not what is measured: its rows (the repository's, `outbox_row`) are built before
    the clock starts and go in by the driver, the repository's INSERT compiled once, one INSERT and one
    COMMIT each, so the writers leave the relay, MariaDB and the broker the CPU. Through the ORM they
    took about a core between them on this 2-core machine, and the relay's p99 measured their scheduling.
    """
    engine = make_engine(url, pool_size=1)
    n = int(rate * seconds)
    rows = [outbox_row(captured(f"u_{(k * 7 + index) % users}", k)) for k in range(n)]
    sql = str(insert(OutboxEventRow.__table__).compile(dialect=engine.dialect, column_keys=list(rows[0])))
    conn = engine.raw_connection()
    cursor = conn.cursor()
    ready.put(index)
    go.wait()  # every process started and warm: process start-up must not count as relay latency
    commits: dict[str, float] = {}
    cpu0 = time.process_time()
    t0 = time.time()
    for k, row in enumerate(rows):
        delay = t0 + k / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        row["created_at"] = datetime.now(UTC).replace(tzinfo=None)  # the driver's value for a DATETIME
        cursor.execute(sql, row)
        conn.commit()
        commits[row["event_id"]] = time.time()
    if os.environ.get("BENCH_DEBUG"):
        print(f"  writer {index}: {1000 * (time.process_time() - cpu0) / max(1, n):.3f} ms CPU per commit", flush=True)
    cursor.close()
    conn.close()
    engine.dispose()
    out.put(commits)


def reader_proc(bootstrap: str, topic: str, stop_after: float, ready: Any, go: Any, out: Any) -> None:
    received: dict[str, float] = {}
    with TopicReader(bootstrap, topic) as reader:
        reader.poll(0.1)
        ready.put("reader")
        go.wait()
        deadline = time.time() + stop_after
        while time.time() < deadline:
            for r in reader.poll(0.1):
                eid = (r.header("event_id") or b"").decode()
                received.setdefault(eid, time.time())
            reader.records.clear()
    out.put(received)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20000, help="rows for the throughput run")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--rate", type=float, default=1000, help="events/s written during the latency run")
    ap.add_argument("--seconds", type=float, default=10, help="length of the latency run")
    ap.add_argument("--writers", type=int, default=4, help="writer processes sharing --rate")
    ap.add_argument("--batch-size", type=int, default=None, help="relay rows per round (default: RELAY_BATCH_SIZE)")
    ap.add_argument("--poll-ms", type=float, default=5, help="relay poll interval when idle")
    ap.add_argument("--linger-ms", type=int, default=5, help="linger.ms of both producers (the relay's default: 5)")
    ap.add_argument("--durable", action="store_true", help="MariaDB with fsync at each commit (default: relaxed)")
    ap.add_argument("--db-on-disk", action="store_true",
                    help="MariaDB's data dir on disk (default: /dev/shm, so the figures are the relay's, not "
                         "this VM disk's stalls: 50 to 250 ms commits seen here)")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds (bare producer, then relay), median")
    args = ap.parse_args()

    started = time.monotonic()
    db_server = broker = None
    url = os.environ.get("TEST_DATABASE_URL")
    bootstrap = os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS")
    try:
        if not url:
            db_server = MariaDBServer(durable=args.durable, in_memory=not args.db_on_disk).start()
            url = db_server.url
        if not bootstrap:
            broker = TansuBroker().start()
            bootstrap = broker.bootstrap
        db_name = f"bench_relay_{uuid.uuid4().hex[:8]}"
        from localparts.mariadb import create_database_at, drop_database_at

        db_url = create_database_at(url, db_name)
        try:
            run(args, db_url, bootstrap)
        finally:
            drop_database_at(url, db_name)
    finally:
        if broker is not None:
            broker.stop()
        if db_server is not None:
            db_server.stop()
    print(f"\n(total {time.monotonic() - started:.0f} s)")


def run(args: argparse.Namespace, db_url: str, bootstrap: str) -> None:
    migrate.upgrade(db_url)
    engine = make_engine(db_url, pool_size=4)
    tag = uuid.uuid4().hex[:6]
    relay_kw: dict[str, Any] = {
        "batch_size": args.batch_size,
        "poll_interval": args.poll_ms / 1000,
        "producer_config": {"linger.ms": args.linger_ms},
    }

    def settings_for(topic: str) -> Any:
        return load_settings(env={}, DATABASE_URL=db_url, KAFKA_BOOTSTRAP_SERVERS=bootstrap, EVENTS_TOPIC=topic,
                             EVENT_SIGNING_KEY=SIGNING_KEY, EVENT_SIGNING_KEY_ID="bench-1")

    where_db = ("given" if os.environ.get("TEST_DATABASE_URL") else "data on disk" if args.db_on_disk
                else "data in /dev/shm")
    print(f"cpus: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}; database: MariaDB "
          f"({'durable' if args.durable else 'relaxed fsync'}, binlog ROW, {where_db}); "
          f"broker: {'Tansu (memory)' if not os.environ.get('TEST_KAFKA_BOOTSTRAP_SERVERS') else bootstrap}")

    # 1. throughput: rounds of the bare producer and the relay, alternated, so machine noise hits both --
    prefill(engine, args.events, args.users)
    with engine.connect() as conn:
        rows = list(conn.execute(select(OutboxEventRow.user_id, OutboxEventRow.payload, OutboxEventRow.event_id,
                                        OutboxEventRow.event_type).order_by(OutboxEventRow.id)))
    messages = []
    for user_id, payload, event_id, event_type in rows:
        value = payload.encode()
        messages.append((user_id.encode(), value, [
            ("event_id", event_id.encode()), ("event_type", event_type.encode()),
            ("signature", sign(value, SIGNING_KEY).encode()), ("signature_key_id", b"bench-1"),
            ("content-type", CONTENT_TYPE)]))
    total = args.events
    raws: list[float] = []
    drains: list[float] = []
    confirms: list[float] = []
    batch_size = 0
    for round_ in range(args.rounds):
        raw_topic, relay_topic = (f"bench.{name}.{tag}.{round_}" for name in ("raw", "relay"))
        for topic in (raw_topic, relay_topic):
            create_topic(bootstrap, topic, partitions=6)
        raws.append(raw_ceiling(bootstrap, raw_topic, messages, args.linger_ms))
        if round_:
            with engine.begin() as conn:  # the same rows again, unpublished
                conn.execute(update(OutboxEventRow).values(published_at=None))
        confirmed = threading.Event()
        count = [0]

        def on_delivered(batch: Any, count: list[int] = count, confirmed: threading.Event = confirmed) -> None:
            count[0] += len(batch)
            if count[0] >= total:
                confirmed.set()

        relay = build_relay(settings_for(relay_topic), engine, on_delivered=on_delivered, **relay_kw)
        batch_size = relay.batch_size
        thread = threading.Thread(target=relay.run, daemon=True)
        t0 = time.perf_counter()
        thread.start()  # the relay's start (lease, binlog, topic, producer) counts, as the bare producer's does
        finished = confirmed.wait(max(60.0, total / 500))
        confirmed_after = time.perf_counter() - t0
        deadline = time.monotonic() + 60
        while relay.published_count < total and time.monotonic() < deadline:
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
        relay.stop()
        thread.join(30)
        assert finished, f"relay published {count[0]} of {total} in {elapsed:.0f} s"
        assert published(engine) == total
        drains.append(total / elapsed)
        confirms.append(total / confirmed_after)
        print(f"  round {round_ + 1}: bare producer {raws[-1]:8,.0f}/s; relay {drains[-1]:8,.0f}/s marked "
              f"({confirms[-1]:,.0f}/s confirmed by the broker)")
    del messages
    raw, drain, confirm = statistics.median(raws), statistics.median(drains), statistics.median(confirms)
    print(f"\nthroughput, {total} pre-filled rows, {args.users} users, batch {batch_size}, "
          f"linger.ms {args.linger_ms}, median of {args.rounds} rounds")
    print(f"  bare idempotent producer (ceiling) {raw:10,.0f} events/s")
    print(f"  relay, every row marked published  {drain:10,.0f} events/s   ({drain / raw:.0%} of the ceiling)")
    print(f"  relay, every row confirmed         {confirm:10,.0f} events/s   ({confirm / raw:.0%})")

    # 2. commit-to-ack latency at a steady rate, woken by the binlog and by polling -------------------
    results = [latency(args, engine, db_url, bootstrap, settings_for, relay_kw, binlog=mode, tag=tag)
               for mode in (True, False)]
    print(f"\nlatency, events committed one per transaction by {args.writers} writers at {args.rate:,.0f} "
          f"events/s for {args.seconds:.0f} s (ms)")
    print(f"  {'':34s}{'p50':>8s}{'p95':>8s}{'p99':>8s}{'max':>8s}")
    for label, values in results:
        for name, series in values:
            if series:
                print(f"  {label + ', ' + name:34s}{pct(series, 50):8.1f}{pct(series, 95):8.1f}"
                      f"{pct(series, 99):8.1f}{max(series):8.1f}")
    engine.dispose()


def latency(args: argparse.Namespace, engine: Engine, db_url: str, bootstrap: str, settings_for: Any,
            relay_kw: dict[str, Any], *, binlog: bool, tag: str) -> tuple[str, list[tuple[str, list[float]]]]:
    ctx = mp.get_context("spawn")
    acks: dict[str, float] = {}
    latency_topic = f"bench.latency.{'binlog' if binlog else 'poll'}.{tag}"
    create_topic(bootstrap, latency_topic, partitions=6)

    def record_acks(batch: list[Delivered]) -> None:
        for d in batch:
            acks[d.event_id] = d.acked_at

    relay = build_relay(settings_for(latency_topic), engine, on_delivered=record_acks, binlog=binlog, **relay_kw)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    while not relay.is_leader or not relay.waker.announced:  # the previous relay released the lease
        time.sleep(0.01)
    # As `payment-service relay` does once started: the relay's GIL switch interval, and this
    # process's heap (the throughput phase's leftovers included) out of the collector's full scans.
    tune_process()
    mode = relay.waker.mode
    results: Any = ctx.Queue()
    received_q: Any = ctx.Queue()
    ready: Any = ctx.Queue()
    go: Any = ctx.Event()
    reader = ctx.Process(target=reader_proc,
                         args=(bootstrap, latency_topic, args.seconds + 15, ready, go, received_q))
    reader.start()
    per_writer = args.rate / args.writers
    writers = [ctx.Process(target=writer_proc,
                           args=(db_url, per_writer, args.seconds, args.users, i, ready, go, results))
               for i in range(args.writers)]
    for w in writers:
        w.start()
    for _ in range(args.writers + 1):
        ready.get(timeout=120)
    time.sleep(0.5)  # let the last process settle before the clock starts
    go.set()
    commits: dict[str, float] = {}
    for _ in writers:
        commits.update(results.get(timeout=args.seconds + 120))
    for w in writers:
        w.join(30)
    deadline = time.monotonic() + 30
    while len(acks) < len(commits) and time.monotonic() < deadline:
        time.sleep(0.05)
    relay.stop()
    thread.join(30)
    received: dict[str, float] = received_q.get(timeout=args.seconds + 60)
    reader.join(30)

    span = max(commits.values()) - min(commits.values()) if commits else 0.0
    commit_to_ack = [1000 * (acks[e] - c) for e, c in commits.items() if e in acks]
    # Polling starts from its idle pace (a relay idle before the run): the first events wait for it.
    steady_from = min(commits.values()) + 1.0 if commits else 0.0
    steady = [1000 * (acks[e] - c) for e, c in commits.items() if e in acks and c >= steady_from]
    ack_to_consumer = [1000 * (received[e] - acks[e]) for e in commits if e in received and e in acks]
    label = "binlog" if mode == "binlog" else "polling"
    print(f"\nlatency ({label}): {len(commits)} events at {len(commits) / span if span else 0:,.0f} events/s; "
          f"acked {len(commit_to_ack)}, read back {len(ack_to_consumer)}")
    if os.environ.get("BENCH_DEBUG"):
        t_first = min(commits.values())
        slow = sorted((round(c - t_first, 2), round(1000 * (acks[e] - c))) for e, c in commits.items()
                      if e in acks and acks[e] - c > 0.05)
        print("  slow (s after start, ms):", slow[:40], len(slow))
    assert binlog == (mode == "binlog"), f"asked binlog={binlog}, the relay ran in {mode} mode"
    return label, [("commit -> broker ack", commit_to_ack), ("  after the first second", steady),
                   ("broker ack -> consumer", ack_to_consumer)]


if __name__ == "__main__":
    main()
