"""Structured JSON logs, request ids, and the filter that keeps card numbers out of every log line."""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from .domain.cards import mask_card_numbers

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# The record's own attributes, left alone. request_id is not one of them: it came from a caller (the
# API refuses a card-like one, but a worker or a test may set request_id_var too), so it is masked.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_card_numbers(value)
    if isinstance(value, (int,)) and not isinstance(value, bool):
        masked = mask_card_numbers(str(value))
        return value if masked == str(value) else masked
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mask(v) for v in value]
    return value


class CardNumberFilter(logging.Filter):
    """Masks anything that looks like a card number (regex plus Luhn) in the message, its arguments,
    every extra field (a path, a query, the request id), and the exception text. Attached to handlers,
    after RequestIdFilter, so no logger can bypass it. Logs mask ids too: a log line moves no money."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            # Render first: a card number could be split across the format string and its arguments.
            record.msg = mask_card_numbers(record.getMessage())
            record.args = None
        elif isinstance(record.msg, str):
            record.msg = mask_card_numbers(record.msg)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, _mask(value))
        if record.exc_info and record.exc_info[1] is not None:
            # Format once and mask the text; the formatter then uses exc_text as is.
            record.exc_text = mask_card_numbers(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = mask_card_numbers(record.stack_info)
        return True


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _Json(JsonFormatter):
    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # The formatter appends exc_text after our filter ran; mask again to be safe.
        if "exc_info" in log_data and isinstance(log_data["exc_info"], str):
            log_data["exc_info"] = mask_card_numbers(log_data["exc_info"])
        return log_data


def configure_logging(level: str = "INFO", fmt: str = "json", stream: Any = None) -> logging.Handler:
    """Route all logging through one handler on the root logger, with the masking filter on it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            _Json(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    handler.addFilter(RequestIdFilter())
    handler.addFilter(CardNumberFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_payment_service", False)]:
        root.removeHandler(old)
    handler._payment_service = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Werkzeug's access log would print raw query strings; ours logs requests itself.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per job run is noise
    return handler
