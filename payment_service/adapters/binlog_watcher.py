"""Wake the relay when outbox rows are committed, from MySQL's (or MariaDB's) binary log.

The watcher follows the binary log like a replica (`mysql-replication`, COM_BINLOG_DUMP from the
current position) and raises a `Wakeup` for every row event that inserts into `outbox_events`. It reads
no row data: the table stays the source of truth, and the relay claims from it as it always does. An
idle database sends nothing but a heartbeat every few seconds, so an idle relay neither polls nor
spends CPU, and a commit reaches the relay about a millisecond after the database wrote it.

The binary log is written before the storage engine makes the transaction visible, so a claim right
after a wake-up can miss the row by a moment: the relay looks again shortly after (see
`OutboxRelay`). What the database needs (binlog on, `binlog_format=ROW`, the REPLICATION SLAVE and
REPLICATION CLIENT grants) is in docs/events.md. Without it the watcher says why, the relay polls, and
the watcher tries again with backoff.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import RotateEvent
from pymysqlreplication.row_event import WriteRowsEvent
from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)
# The library warns at every connection that binlog_row_metadata is not FULL: we read no row data.
logging.getLogger("pymysqlreplication").setLevel(logging.ERROR)


class Wakeup:
    """A flag raised by whoever learns of new rows, taken by the relay before it claims."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def take(self) -> bool:
        """Whether it was raised; lowered either way (a wake-up raised after this is kept)."""
        raised = self._event.is_set()
        self._event.clear()
        return raised

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def is_set(self) -> bool:
        """Whether it is raised, leaving it so."""
        return self._event.is_set()


class BinlogUnavailable(RuntimeError):
    """The database cannot stream its binary log to us; the message says why."""


def connection_settings(url: str) -> dict[str, Any]:
    """PyMySQL's connection arguments for a SQLAlchemy URL, as the engine builds them (TLS options too)."""
    u = make_url(url)
    _args, kwargs = u.get_dialect()().create_connect_args(u)
    kwargs.setdefault("charset", "utf8mb4")
    kwargs.setdefault("connect_timeout", 5)
    for key in ("client_flag", "database", "db"):  # the stream names no database (the library's own lookups do)
        kwargs.pop(key, None)
    return dict(kwargs)


class BinlogWatcher:
    """Follows the binary log in a thread of its own; `active` while the stream is up.

    `on_mode(mode, reason)` is called with "binlog" when the stream is up and "polling" (and why) when
    it is not, at each change. Every change raises the wake-up too: after a gap, rows may have been
    committed that no event announced.

    `pause()` drops the stream without changing the mode (the relay is busy and polls: reading every
    commit's events would only cost it CPU); `resume()` follows the log again from its current position
    and raises the wake-up once streaming, for whatever was committed meanwhile.
    """

    def __init__(
        self,
        url: str,
        wakeup: Wakeup,
        *,
        table: str = "outbox_events",
        on_mode: Callable[[str, str | None], None] | None = None,
        heartbeat: float = 5.0,
        retry_max: float = 30.0,
        server_id: int | None = None,
    ) -> None:
        self.wakeup = wakeup
        self.table = table
        self.schema = make_url(url).database or ""
        self._settings = connection_settings(url)
        self._on_mode = on_mode
        self.heartbeat = heartbeat
        self.retry_max = retry_max
        # Like a replica, the stream needs a server id no other replica of this database uses: the
        # server drops an older stream that registers the same id.
        self.server_id = server_id or 1_000_000 + secrets.randbelow(2**31 - 1_000_000)
        self.active = False
        self.reason: str | None = "not started"
        self._decided = threading.Event()  # the first connection attempt succeeded or failed
        self._closed = threading.Event()
        self._listen = threading.Event()  # cleared while paused
        self._listen.set()
        self._stream: BinLogStreamReader | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-binlog", daemon=True)
        self._thread.start()

    def wait_decided(self, timeout: float) -> bool:
        """Wait until the first connection attempt has either streamed or failed."""
        return self._decided.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        self._listen.set()  # a paused thread wakes up to see it is closed
        self._hang_up()
        if self._thread is not None:
            self._thread.join(5)

    def pause(self) -> None:
        """Stop reading the log (the connection is closed); the mode stays as it is."""
        self._listen.clear()
        self._hang_up()

    def resume(self) -> None:
        self._listen.set()

    @property
    def paused(self) -> bool:
        return not self._listen.is_set()

    def _hang_up(self) -> None:
        stream = self._stream
        sock = getattr(getattr(stream, "_stream_connection", None), "_sock", None)
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # unblocks the thread's read

    # -- the thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 1.0
        while not self._closed.is_set():
            if not self._listen.is_set():
                self._listen.wait()  # paused: until resume() or close()
                continue
            try:
                self._check()
                self._follow()
                if not self._closed.is_set() and self._listen.is_set():
                    raise BinlogUnavailable("the server ended the binlog stream")
            except Exception as exc:  # noqa: BLE001 - the reason is reported; we poll and try again later
                if self._closed.is_set():
                    break
                if not self._listen.is_set():
                    continue  # paused on purpose while connecting or reading: not a failure
                if self.active:
                    delay = 1.0  # it streamed until now: try again soon
                self._set_mode(False, _reason(exc))
                if self._closed.wait(delay):
                    break
                delay = min(self.retry_max, delay * 2)
        self.active = False

    def _connect(self, **kwargs: Any) -> pymysql.connections.Connection:
        if self._closed.is_set() or not self._listen.is_set():  # the library reconnects on a lost connection
            raise BinlogUnavailable("closed" if self._closed.is_set() else "paused")
        if "db" in kwargs:  # the library's name for it, deprecated in PyMySQL
            kwargs["database"] = kwargs.pop("db")
        return pymysql.connect(**kwargs)

    def _check(self) -> None:
        conn = self._connect(**self._settings)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@GLOBAL.log_bin, @@GLOBAL.binlog_format")
                row = cur.fetchone()
                cur.execute("SHOW GLOBAL VARIABLES LIKE 'binlog_transaction_compression'")  # MySQL 8 only
                compression = cur.fetchone()
        finally:
            conn.close()
        log_bin, binlog_format = row if row else (0, None)
        if not int(log_bin or 0):
            raise BinlogUnavailable("the binary log is off (log_bin)")
        if str(binlog_format).upper() != "ROW":
            raise BinlogUnavailable(f"binlog_format is {binlog_format}, not ROW")
        if compression and str(compression[1]).upper() == "ON":
            # Compressed transactions hide their row events from the reader: no wake-up would ever come.
            raise BinlogUnavailable("binlog_transaction_compression is ON")

    def _follow(self) -> None:
        stream = BinLogStreamReader(
            connection_settings={**self._settings, "read_timeout": max(3 * self.heartbeat, 10)},
            server_id=self.server_id,
            blocking=True,
            resume_stream=True,  # from the current position, never the whole log
            only_events=[RotateEvent, WriteRowsEvent],
            only_schemas=[self.schema],
            only_tables=[self.table],
            freeze_schema=True,  # no information_schema lookup per transaction
            use_column_name_cache=True,
            slave_heartbeat=self.heartbeat,  # the server proves it is there; a dead peer times out
            enable_logging=False,
            pymysql_wrapper=self._connect,
        )
        self._stream = stream
        first = True
        try:
            while not self._closed.is_set() and self._listen.is_set():
                event = stream.fetchone()
                if event is None:
                    return
                if first:
                    # The first event of a stream is the server's RotateEvent: we are following it. After
                    # a pause the mode has not changed, but rows may have come meanwhile: a wake-up.
                    first = False
                    if self.active:
                        self.wakeup.set()
                    else:
                        self._set_mode(True, None)
                elif isinstance(event, WriteRowsEvent):
                    self.wakeup.set()
        finally:
            self._stream = None
            with suppress(Exception):
                stream.close()

    def _set_mode(self, active: bool, reason: str | None) -> None:
        changed = active != self.active or not self._decided.is_set()
        self.active = active
        self.reason = reason
        self._decided.set()
        if changed:
            self.wakeup.set()
            if self._on_mode is not None:
                self._on_mode("binlog" if active else "polling", reason)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BinlogUnavailable):
        return str(exc)
    if isinstance(exc, pymysql.MySQLError) and len(exc.args) >= 2:
        return f"{type(exc).__name__} {exc.args[0]}: {exc.args[1]}"
    return f"{type(exc).__name__}: {exc}"


# After a binlog wake-up, claims that find nothing look again this much later: the binary log is
# written a moment before the transaction becomes visible to other connections.
_RECHECKS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


class RelayWaker:
    """When the relay looks for rows next: at a binlog wake-up, or by polling where there is no binlog.

    Polling is fast while rows keep coming (`poll_interval`, doubling after each empty look) and slows
    down to `idle_poll` when idle. With the binlog streaming, an idle relay looks only every
    `safety_poll` seconds, a last resort: every commit wakes it.

    A relay finding `busy_rate` rows a second or more (over `busy_window` seconds) needs no wake-up: a
    look 5 ms later finds rows anyway. It pauses the watcher, whose parsing of every commit's events
    would only compete with the loop for the process, and polls as above. When the rate falls below
    half that, or after `resume_after` empty looks in a row (5 + 10 + 20 + 40 ms), it follows the log
    again, whose first event wakes it. The mode stays "binlog" throughout.
    """

    def __init__(
        self,
        binlog_url: str | None,
        *,
        off_reason: str | None = None,
        poll_interval: float = 0.005,
        idle_poll: float = 1.0,
        safety_poll: float = 10.0,
        retry_max: float = 30.0,
        on_mode: Callable[[str], None] | None = None,
        busy_rate: float = 500.0,
        busy_window: float = 0.25,
        resume_after: int = 4,
    ) -> None:
        self.binlog_url, self.off_reason = binlog_url, off_reason
        self.busy_rate, self.busy_window, self.resume_after = busy_rate, busy_window, resume_after
        self._window_start, self._window_rows = time.monotonic(), 0
        self.pauses = 0  # times the watcher was paused for a busy spell (tests, logs)
        self.poll_interval, self.idle_poll, self.safety_poll = poll_interval, idle_poll, safety_poll
        self.retry_max, self._on_mode = retry_max, on_mode
        self.flag = Wakeup()
        self.watcher: BinlogWatcher | None = None
        self.started = False
        self.announced = False  # start() has logged the mode: later changes are logged as changes
        self._rechecks: list[float] = []
        self._empty = 0

    @property
    def mode(self) -> str:
        return "binlog" if self.watcher is not None and self.watcher.active else "polling"

    @property
    def listening(self) -> bool:
        """A commit wakes the relay now: the binlog mode, the watcher not paused."""
        return self.watcher is not None and self.watcher.active and not self.watcher.paused

    def start(self, wait: float = 1.0) -> None:
        """Follow the binlog if there is one (waiting up to `wait` seconds for the verdict) and log the mode."""
        self.started = True
        if self.binlog_url is not None:
            self.watcher = BinlogWatcher(self.binlog_url, self.flag, on_mode=self._mode_changed,
                                         retry_max=self.retry_max)
            self.watcher.start()
            self.watcher.wait_decided(wait)
        reason = self.off_reason if self.watcher is None else self.watcher.reason
        if self._on_mode is not None:
            self._on_mode(self.mode)
        logger.info("relay wake-up mode", extra={"mode": self.mode, "reason": reason, "idle_poll": self.idle_poll})
        self.announced = True

    def _mode_changed(self, mode: str, reason: str | None) -> None:
        if self._on_mode is not None:
            self._on_mode(mode)
        if self.announced:
            (logger.info if mode == "binlog" else logger.warning)(
                "relay wake-up mode changed", extra={"mode": mode, "reason": reason})

    def stop(self) -> None:
        watcher, self.watcher, self.started, self.announced = self.watcher, None, False, False
        if watcher is not None:
            watcher.close()

    def take(self) -> bool:
        """Whether a wake-up came since the last look (and, if so, look again shortly after finding nothing)."""
        if not self.flag.take():
            return False
        self._rechecks = list(_RECHECKS)
        return True

    def found_rows(self, count: int) -> None:
        self._empty = 0
        if self._rechecks:  # progress: the next empty look after a wake-up is a quick one again
            self._rechecks = list(_RECHECKS)
        self._window_rows += count
        now = time.monotonic()
        if now - self._window_start < self.busy_window:
            return
        rate = self._window_rows / (now - self._window_start)
        self._window_start, self._window_rows = now, 0
        watcher = self.watcher
        if watcher is None or not watcher.active:
            return
        if rate >= self.busy_rate and not watcher.paused:
            watcher.pause()
            self.pauses += 1
            logger.debug("relay busy: binlog watcher paused, polling", extra={"rows_per_s": round(rate)})
        elif rate < self.busy_rate / 2 and watcher.paused:
            self._resume(watcher)

    def idle_delay(self) -> float:
        """A look found nothing: how long until the next one (a wake-up cuts it short)."""
        if not self.listening:
            self._rechecks = []  # polling: its own schedule, nothing would cut a long recheck short
        elif self._rechecks:
            return self._rechecks.pop(0)
        else:
            return self.safety_poll
        self._empty += 1
        watcher = self.watcher
        if watcher is not None and watcher.paused and self._empty >= self.resume_after:
            self._resume(watcher)
            return self.safety_poll  # the watcher's first event wakes the relay
        return float(min(self.idle_poll, self.poll_interval * 2 ** (self._empty - 1)))

    def _resume(self, watcher: BinlogWatcher) -> None:
        self._empty = 0
        self._window_start, self._window_rows = time.monotonic(), 0
        watcher.resume()
        logger.debug("relay no longer busy: binlog watcher resumed")
