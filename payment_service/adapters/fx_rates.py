"""Reference FX rates in the ECB's daily XML format (eurofxref-daily.xml), refreshed off the request path.

The ECB publishes one table a working day, around 16:00 CET: every rate is units of a currency per
1 EUR, and the table's `time` is its reference date. Production points `FX_RATES_URL` at that feed
(or at any feed in the same format that also quotes the currencies it lacks, such as KWD); `dev` and
the tests use the file shipped in config/fx/.

A request never waits for a rate. `EcbRates.table()` returns what is loaded; when the table is due
for a refresh (`FX_REFRESH_SECONDS` since the last attempt) it starts one short-lived background
thread to fetch it (a greenlet under the gevent worker, so a slow feed holds no worker) and
returns at once. Each process (API workers, the worker) keeps its own table and refreshes it on
its own: a few requests a day per process, and nothing survives a fork half-done (a process that
finds no table simply loads one). A local file is read at once, since reading it cannot hang.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
from defusedxml import ElementTree
from prometheus_client import Counter, Gauge

import config

from ..domain import fx

logger = logging.getLogger(__name__)

SHIPPED_RATES = Path(config.__file__).resolve().parent / "fx" / "eurofxref-daily.xml"
ECB_BASE = "EUR"
# A failed refresh is tried again this soon (or after FX_REFRESH_SECONDS, if that is shorter).
RETRY_FAILED_SECONDS = 60.0

FX_REFRESHES = Counter("fx_rates_refreshes_total", "Attempts to load the reference FX rates", ["outcome"])
FX_AS_OF = Gauge(
    "fx_rates_as_of_timestamp_seconds",
    "Reference time of the FX rate table in use (its age: time() minus this)",
    multiprocess_mode="max",
)
CANONICAL_MISSING = Counter(
    "canonical_amount_missing_total",
    "Records created without a canonical amount, by reason (no_rates, stale, unknown_currency)",
    ["reason"],
)


class RatesFormatError(ValueError):
    pass


def _published_at(day: date) -> datetime:
    """The ECB's reference rates are set at 14:10 and published around 16:00 CET (Frankfurt time)."""
    try:
        from zoneinfo import ZoneInfo

        return datetime.combine(day, dtime(16, 0), ZoneInfo("Europe/Berlin")).astimezone(UTC)
    except Exception:  # noqa: BLE001 - no time zone database on this machine: CET without summer time
        return datetime.combine(day, dtime(15, 0), UTC)


def parse_ecb(document: bytes | str) -> fx.RateTable:
    """A RateTable from an eurofxref-daily.xml document; RatesFormatError for anything else.

    The parser refuses entity expansion and external references (defusedxml): the document comes
    from the network."""
    try:
        root = ElementTree.fromstring(document)
    except Exception as exc:  # noqa: BLE001 - ParseError and defusedxml's refusals alike
        raise RatesFormatError(f"not an XML rate table: {type(exc).__name__}") from None
    day_cube = next((el for el in root.iter() if _local(el.tag) == "Cube" and el.get("time")), None)
    if day_cube is None:
        raise RatesFormatError("no <Cube time=...> element")
    try:
        day = date.fromisoformat(day_cube.get("time", ""))
    except ValueError:
        raise RatesFormatError("the table's time is not a date (YYYY-MM-DD)") from None
    rates: dict[str, Decimal] = {}
    for cube in day_cube:
        currency, raw = cube.get("currency"), cube.get("rate")
        if currency is None or raw is None:
            continue
        if len(currency) != 3 or not currency.isascii() or not currency.isupper():
            raise RatesFormatError(f"bad currency code {currency[:8]!r}")
        try:
            rate = Decimal(raw.strip())
        except InvalidOperation:
            raise RatesFormatError(f"bad rate for {currency}") from None
        if not rate.is_finite() or rate <= 0:
            raise RatesFormatError(f"bad rate for {currency}")
        rates[currency] = rate
    if not rates:
        raise RatesFormatError("the table quotes no rate")
    return fx.RateTable(ECB_BASE, rates, _published_at(day))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _file_path(source: str) -> Path | None:
    """The local file a source names (a path, or a file: URL); None for an http(s) URL."""
    if not source:
        return SHIPPED_RATES
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        return None
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    return Path(source)


def _reason(exc: Exception) -> str:
    """Why a load failed, without the URL an HTTP library's message repeats (it may carry a key)."""
    if isinstance(exc, RatesFormatError | OSError) and not isinstance(exc, requests.RequestException):
        return f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


class EcbRates:
    """The latest rate table of one source, refreshed in the background; never blocks a caller."""

    def __init__(
        self,
        source: str = "",
        refresh_seconds: float = 4 * 3600,
        timeout_seconds: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.path = _file_path(source)
        self.refresh_seconds = refresh_seconds
        self.timeout_seconds = timeout_seconds
        self._monotonic = monotonic
        self._table: fx.RateTable | None = None
        self._due_at: float | None = None  # monotonic time of the next refresh; None: never loaded
        self._lock = threading.Lock()
        self._inflight: threading.Thread | None = None
        self._pid = os.getpid()

    def table(self) -> fx.RateTable | None:
        """What is loaded now. Starts a refresh when one is due, without waiting for it (but a local
        file is read in place: that cannot hang)."""
        if self._pid != os.getpid():
            self._after_fork()
        due = self._due_at
        if due is None or self._monotonic() >= due:
            self._start_refresh()
        return self._table

    def _start_refresh(self) -> None:
        with self._lock:
            due = self._due_at
            if due is not None and self._monotonic() < due:
                return  # another caller started it a moment ago
            if self._inflight is not None and self._inflight.is_alive():
                return
            # Until this attempt ends, nobody starts another.
            self._due_at = self._monotonic() + self.refresh_seconds
            if self.path is not None:
                self._inflight = None
                run_inline = True
            else:
                self._inflight = threading.Thread(target=self.refresh, name="fx-rates-refresh", daemon=True)
                run_inline = False
        if run_inline:
            self.refresh()
        else:
            assert self._inflight is not None
            self._inflight.start()

    def _after_fork(self) -> None:
        # A refresh the parent had in flight did not come along (only the forking thread does): this
        # process keeps the parent's table and loads its own at once.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._inflight = None
        self._due_at = None

    def refresh(self) -> bool:
        """Load the source now. On failure the previous table stays in use (until it is too old)."""
        try:
            table = parse_ecb(self._read())
        except Exception as exc:  # noqa: BLE001 - any failure: keep the old table, say so, try later
            self._due_at = self._monotonic() + min(self.refresh_seconds, RETRY_FAILED_SECONDS)
            FX_REFRESHES.labels("failed").inc()
            logger.warning("fx rates not refreshed", extra={"source": self._describe(), "error": _reason(exc)})
            return False
        self._table = table
        self._due_at = self._monotonic() + self.refresh_seconds
        FX_REFRESHES.labels("ok").inc()
        FX_AS_OF.set(table.as_of.timestamp())
        logger.info(
            "fx rates loaded",
            extra={"source": self._describe(), "as_of": table.as_of.isoformat(), "currencies": len(table.rates)},
        )
        return True

    def wait_idle(self, timeout: float) -> None:
        """For tests and the CLI: wait for a background refresh in flight, if any."""
        thread = self._inflight
        if thread is not None:
            thread.join(timeout)

    def _read(self) -> bytes:
        if self.path is not None:
            return self.path.read_bytes()
        resp = requests.get(self.source, timeout=self.timeout_seconds, headers={"Accept": "application/xml"})
        resp.raise_for_status()
        return resp.content

    def _describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        parts = urlsplit(self.source)
        return f"{parts.scheme}://{parts.hostname}{parts.path}"  # never credentials or a query string


class CanonicalAmounts:
    """The services' Canonicalizer: the amount in CANONICAL_CURRENCY at the loaded rate, or None,
    counted by reason on /metrics. Never raises, never waits."""

    def __init__(self, rates: EcbRates, currency: str, max_age_seconds: float) -> None:
        self.rates = rates
        self.currency = currency
        self.max_age_seconds = max_age_seconds

    def __call__(self, amount: int, currency: str, at: datetime) -> fx.CanonicalAmount | None:
        try:
            table = None if currency == self.currency else self.rates.table()
            result = fx.canonical(amount, currency, self.currency, table, at, self.max_age_seconds)
        except Exception:  # a top-up never fails for want of a rate
            logger.exception("canonical amount failed", extra={"currency": currency})
            CANONICAL_MISSING.labels("error").inc()
            return None
        if isinstance(result, fx.Missing):
            CANONICAL_MISSING.labels(result.value).inc()
            return None
        return result
