"""The outbox as the relay sees it: claim, mark published, quarantine, the leader lease, purge, stats.

Every statement runs alone in autocommit on a connection the calling thread keeps (the relay's loop
has one, its marker thread another), so a round trip is one statement and nothing else: no BEGIN, no
COMMIT, no reset on return. That is what lets an idle relay cost the database two statements a second
(the lease renewal and, when polling, one claim). A connection that failed is dropped and a new one
taken on the next call.

The lease is a row of `relay_leases`, timed by the database's clock (`UTC_TIMESTAMP(6)`), so relays
on hosts whose clocks differ still agree. See docs/events.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from .orm import OutboxEventRow, RelayLeaseRow

logger = logging.getLogger(__name__)

LEASE_NAME = "outbox"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OUTBOX = cast(Table, OutboxEventRow.__table__)
_LEASES = cast(Table, RelayLeaseRow.__table__)


_CLAIM_SQL = (
    "SELECT id, event_id, event_type, user_id, payload FROM outbox_events"
    " WHERE published_at IS NULL AND quarantined_at IS NULL AND id > %s ORDER BY id LIMIT %s"
)

_IDLE_RECONNECT = 60.0  # seconds a thread's connection may sit unused before it is replaced
_MARK_SQL = "UPDATE outbox_events SET published_at = %s WHERE published_at IS NULL"


class OutboxMessage(NamedTuple):
    """One claimed row: a plain tuple from the driver, no ORM object, no Row processing."""

    id: int
    event_id: str
    event_type: str
    user_id: str
    payload: str


def id_ranges(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted distinct ids as runs of consecutive integers: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    runs: list[tuple[int, int]] = []
    if not ids:
        return runs
    lo = hi = ids[0]
    for i in ids[1:]:
        if i == hi + 1:
            hi = i
        else:
            runs.append((lo, hi))
            lo = hi = i
    runs.append((lo, hi))
    return runs


class SqlOutboxStore:
    """The relay's SQL: one instance per relay, shared by its threads (each has its own connection)."""

    def __init__(self, engine: Engine, *, lease_name: str = LEASE_NAME) -> None:
        self.engine = engine
        self.lease_name = lease_name
        self.mysql = engine.dialect.name in ("mysql", "mariadb")
        # Plain SQL through the driver's cursor: the claim is the relay's widest read, and SQLAlchemy's
        # row processing was a sixth of its cost. The claim index is (published_at, id).
        qmark = engine.dialect.paramstyle not in ("format", "pyformat")
        self._placeholder = "?" if qmark else "%s"
        self._claim_sql = _CLAIM_SQL.replace("%s", "?") if qmark else _CLAIM_SQL
        to_db = _OUTBOX.c.published_at.type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
        self._bind_time: Callable[[datetime], Any] = to_db or (lambda value: value)
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._connections_lock = threading.Lock()
        self._lease_row_checked = False

    # -- connections ------------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        conn: Connection | None = getattr(self._local, "conn", None)
        now = time.monotonic()
        if conn is not None and now - self._local.used_at > _IDLE_RECONNECT:
            self._drop(conn)  # idle a while (the marker's, between drains): a fresh one, not one the server closed
            conn = None
        self._local.used_at = now
        if conn is None:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if self.mysql:
                # The binary log then holds a marked row's id and published_at, not its whole payload
                # twice (binlog_row_image=FULL): a tenth of the bytes. Refused without the privilege
                # (SESSION_VARIABLES_ADMIN on MySQL 8), which only costs binlog volume.
                with suppress(Exception):
                    conn.exec_driver_sql("SET SESSION binlog_row_image = 'MINIMAL'")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        try:
            yield conn
        except BaseException:
            self._drop(conn)
            raise

    def _drop(self, conn: Connection) -> None:
        self._local.conn = None
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        with suppress(Exception):
            conn.invalidate()
        with suppress(Exception):
            conn.close()

    def close(self) -> None:
        """Give back every thread's connection (call once the relay's threads have stopped)."""
        with self._connections_lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            with suppress(Exception):
                conn.close()
        self._local = threading.local()

    # -- claim, mark, quarantine --------------------------------------------------------------------

    def claim(self, limit: int, after: int = 0, skip: Sequence[int] = ()) -> list[OutboxMessage]:
        """The oldest rows neither published nor set aside, with id > after, in id order; not the ids in
        `skip` (sorted: rows the broker confirmed that are still being marked)."""
        sql = self._claim_sql
        if skip:
            spans = " OR ".join(f"id BETWEEN {lo:d} AND {hi:d}" for lo, hi in id_ranges(skip))
            sql = sql.replace(" ORDER BY", f" AND NOT ({spans}) ORDER BY")
        with self._connection() as conn:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, (after, limit))
                rows = cursor.fetchall()
            finally:
                cursor.close()
        return [OutboxMessage(*row) for row in rows]

    def mark_published(self, ids: Sequence[int]) -> int:
        """Mark these rows (sorted, distinct) published in one statement; returns how many it marked.

        A run of consecutive ids becomes `id BETWEEN lo AND hi`, which is safe because every id of the
        run is a row the caller holds: no other row can sit inside it (a row that commits late takes an
        id outside every run it was not claimed in). `published_at IS NULL` makes marking happen once:
        a row two relays both sent (one deposed mid-batch) is counted by the first that marks it.
        """
        if not ids:
            return 0
        # Ints formatted here (`:d`), nothing from outside: no injection.
        spans = " OR ".join(f"id BETWEEN {lo:d} AND {hi:d}" if hi > lo else f"id = {lo:d}" for lo, hi in id_ranges(ids))
        sql = _MARK_SQL.replace("%s", self._placeholder) + f" AND ({spans})"
        now = self._bind_time(datetime.now(UTC))
        with self._connection() as conn:
            # Through the driver: a statement of a new shape each batch would only crowd SQLAlchemy's cache.
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, (now,))
                return int(cursor.rowcount)
            finally:
                cursor.close()

    def quarantine(self, rows: Sequence[tuple[OutboxMessage, str]]) -> None:
        """Set rows aside with the reason (never the payload's content); they are never sent."""
        t = _OUTBOX
        now = datetime.now(UTC)
        with self._connection() as conn:
            for msg, reason in rows:
                conn.execute(
                    update(t)
                    .where(t.c.id == msg.id, t.c.published_at.is_(None))
                    .values(quarantined_at=now, last_error=reason)
                )
        for msg, reason in rows:
            # Never the payload: it may hold the very card number we refuse to send.
            logger.error("outbox event quarantined, not sent", extra={
                "outbox_id": msg.id, "event_id": msg.event_id, "event_type": msg.event_type, "reason": reason})

    # -- the lease ------------------------------------------------------------------------------------

    def _db_now(self) -> Any:
        """The database's clock in SQL (SQLite: this host's, one machine and one clock)."""
        return literal_column("UTC_TIMESTAMP(6)") if self.mysql else datetime.now(UTC)

    def take_or_renew_lease(self, holder: str, ttl: float) -> bool:
        """One statement: True if `holder` holds the lease now. The UPDATE's row lock decides a race."""
        lease = _LEASES
        now = self._db_now()
        if self.mysql:
            expires: Any = func.timestampadd(literal_column("MICROSECOND"), int(ttl * 1_000_000), now)
        else:
            expires = now + timedelta(seconds=ttl)
        stmt = (
            update(lease)
            .where(lease.c.name == self.lease_name, or_(lease.c.holder == holder, lease.c.expires_at < now))
            # MySQL evaluates SET left to right, seeing values already set: fencing goes first, while
            # `holder` is still the previous holder's.
            .ordered_values(
                (lease.c.fencing, case((lease.c.holder == holder, lease.c.fencing), else_=lease.c.fencing + 1)),
                (lease.c.holder, holder),
                (lease.c.expires_at, expires),
            )
        )
        with self._connection() as conn:
            if not self._lease_row_checked:
                self._insert_lease_row(conn)
            return conn.execute(stmt).rowcount == 1

    def fencing(self) -> int:
        """The lease's fencing number: up by one at each change of holder."""
        with self._connection() as conn:
            return int(conn.execute(select(_LEASES.c.fencing).where(_LEASES.c.name == self.lease_name)).scalar_one())

    def release_lease(self, holder: str) -> None:
        """Let a standby take over at once instead of after the lease's time."""
        lease = _LEASES
        now = self._db_now()
        past = func.timestampadd(literal_column("MICROSECOND"), -1, now) if self.mysql else now - timedelta(
            microseconds=1
        )
        with self._connection() as conn:
            conn.execute(
                update(lease)
                .where(lease.c.name == self.lease_name, lease.c.holder == holder)
                .values(holder=None, expires_at=past)
            )

    def _insert_lease_row(self, conn: Connection) -> None:
        exists = conn.execute(select(_LEASES.c.name).where(_LEASES.c.name == self.lease_name)).first()
        if exists is None:
            try:
                conn.execute(insert(_LEASES).values(name=self.lease_name, holder=None, expires_at=_EPOCH, fencing=0))
            except IntegrityError:
                pass  # another relay inserted it first
        self._lease_row_checked = True


class LeaderLease:
    """One relay's hold on the lease: renewed at most every `renew_every`, and trusted for 0.8 x ttl
    after a renewal (counted from before the statement: the database's expiry is at least that late)."""

    def __init__(self, store: SqlOutboxStore, holder: str, ttl: float) -> None:
        self.store, self.holder, self.ttl = store, holder, ttl
        self.renew_every = ttl / 5  # also how often a standby tries to take over
        self.held = False
        self.fencing: int | None = None
        self.renewed_at = float("-inf")  # time.monotonic()
        self._valid_until = 0.0

    def due(self) -> bool:
        return not self.held or time.monotonic() - self.renewed_at >= self.renew_every

    def renew(self) -> bool:
        """Take or renew it; True if held. Raises if the database is away (`held` stays True until the
        lease's time is up: someone else may hold it after that)."""
        now = time.monotonic()
        try:
            held = self.store.take_or_renew_lease(self.holder, self.ttl)
            if held and not self.held:
                self.fencing = self.store.fencing()
        except Exception:
            if self.held and time.monotonic() >= self._valid_until:
                self.held = False
            raise
        if held:
            self.renewed_at, self._valid_until = now, now + self.ttl * 0.8
        self.held = held
        return held


class BackgroundMarker:
    """Marks confirmed rows published on a thread (and connection) of its own while the relay sends the
    next batch. Marking late costs at most a duplicate after a crash; what matters is never marking a
    row the broker did not confirm, and that is decided before a row gets here.

    What was submitted while a mark ran is marked next in one statement, so at a thousand small batches
    a second the database sees a few marks, and the relay never waits behind one (it did, with a queue of
    two batches: 35 ms gaps in the commit -> ack tail). `submit` blocks only while `max_pending_rows` rows
    wait (back-pressure: a relay far ahead of its marking would send them again after a crash).
    """

    def __init__(self, store: SqlOutboxStore, on_marked: Callable[[int], None], *,
                 max_pending_rows: int = 20_000) -> None:
        self._store, self._on_marked, self.max_pending_rows = store, on_marked, max_pending_rows
        self._cond = threading.Condition()
        self._pending: list[list[int]] = []  # submitted, not yet marked (or failed)
        self._queued: list[list[int]] = []  # of those, not yet taken by the thread
        self._pending_rows = 0
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="outbox-marker", daemon=True)
        self._thread.start()

    def submit(self, ids: list[int]) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending_rows < self.max_pending_rows)
            self._pending.append(ids)
            self._queued.append(ids)
            self._pending_rows += len(ids)
            self._cond.notify_all()

    def pending_ids(self) -> list[int]:
        """Ids submitted and not yet marked (or failed), sorted."""
        with self._cond:
            return sorted(i for ids in self._pending for i in ids)

    def wait_idle(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._pending)

    def close(self) -> None:
        self.wait_idle()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queued or self._closing)
                if not self._queued:
                    return
                taken, self._queued = self._queued, []
            ids = sorted({i for part in taken for i in part})
            try:
                self._on_marked(self._store.mark_published(ids))
            except Exception as exc:  # noqa: BLE001 - the rows stay unpublished and are sent again
                logger.warning("could not mark rows published; they will be sent again",
                               extra={"rows": len(ids), "error": f"{type(exc).__name__}: {exc}"})
            finally:
                with self._cond:
                    for part in taken:
                        self._pending.remove(part)
                        self._pending_rows -= len(part)
                    self._cond.notify_all()


# --- purge and stats: the worker's purge job and the metrics collector -------------------------------


def purge_published(engine: Engine, older_than: timedelta, *, batch_size: int = 1000) -> int:
    """Delete rows published more than `older_than` ago, in batches; returns how many went.

    Short transactions, each a range of the (published_at, id) index, so the relay and the writers
    are never held up. Quarantined rows are never published, so they stay for investigation.
    """
    t = _OUTBOX
    cutoff = datetime.now(UTC) - older_than
    total = 0
    while True:
        with engine.begin() as conn:
            ids = list(
                conn.execute(
                    select(t.c.id)
                    .where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
                    .order_by(t.c.published_at, t.c.id)
                    .limit(batch_size)
                ).scalars()
            )
            if ids:
                conn.execute(delete(t).where(t.c.id.in_(bindparam("ids", expanding=True))), {"ids": ids})
        total += len(ids)
        if len(ids) < batch_size:
            return total


def outbox_stats(engine: Engine) -> tuple[int, float]:
    """(rows waiting to be published, age in seconds of the oldest of them, 0 when none)."""
    t = _OUTBOX
    waiting = (t.c.published_at.is_(None), t.c.quarantined_at.is_(None))
    with engine.connect() as conn:
        backlog = conn.execute(select(func.count()).select_from(t).where(*waiting)).scalar_one()
        oldest = conn.execute(select(t.c.created_at).where(*waiting).order_by(t.c.id).limit(1)).scalar()
    age = max(0.0, (datetime.now(UTC) - oldest).total_seconds()) if oldest is not None else 0.0
    return int(backlog), age


__all__ = [
    "LEASE_NAME",
    "BackgroundMarker",
    "LeaderLease",
    "OutboxMessage",
    "SqlOutboxStore",
    "id_ranges",
    "outbox_stats",
    "purge_published",
]
