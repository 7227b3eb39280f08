import io
import json
import logging

import pytest

from payment_service.observability import configure_logging, request_id_var

PAN = "4242424242424242"


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    handler = configure_logging("DEBUG", "json", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_card_number_masked_in_message_args_extra_and_exception(log_stream) -> None:
    log = logging.getLogger("t")
    log.info("card %s", PAN)
    log.info("direct " + "4242 4242 4242 4242")
    log.info("extra", extra={"body": {"number": PAN, "nested": [PAN]}, "n": int(PAN)})
    try:
        raise ValueError(f"bad card {PAN}")
    except ValueError:
        log.exception("boom")
    text = log_stream.getvalue()
    assert PAN not in text and "4242 4242 4242 4242" not in text
    records = lines(log_stream)
    assert records[0]["message"] == "card [card ****4242]"
    assert records[2]["body"]["nested"] == ["[card ****4242]"]
    assert "ValueError" in records[3]["exc_info"]


def test_json_fields_and_request_id(log_stream) -> None:
    token = request_id_var.set("req_abc")
    try:
        logging.getLogger("t").warning("hello", extra={"payment_id": "pay_1"})
    finally:
        request_id_var.reset(token)
    (rec,) = lines(log_stream)
    assert rec["level"] == "WARNING" and rec["logger"] == "t" and rec["request_id"] == "req_abc"
    assert rec["payment_id"] == "pay_1" and "time" in rec


def test_request_id_is_masked_too(log_stream) -> None:
    # The API never lets such an id in (api/__init__.py), but other callers set request_id_var too.
    token = request_id_var.set(f"req-{PAN}")
    try:
        logging.getLogger("t").info("hello", extra={"path": f"/payments/{PAN}", "query": f"q={PAN}"})
    finally:
        request_id_var.reset(token)
    assert PAN not in log_stream.getvalue()
    (rec,) = lines(log_stream)
    assert rec["request_id"] == "req-[card ****4242]" and rec["path"] == "/payments/[card ****4242]"
    assert rec["query"] == "q=[card ****4242]"


def test_text_format_masks_the_request_id() -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", "text", stream=stream)
    token = request_id_var.set(PAN)
    try:
        logging.getLogger("t").info("hello")
    finally:
        request_id_var.reset(token)
        logging.getLogger().removeHandler(handler)
    assert PAN not in stream.getvalue() and "[[card ****4242]]" in stream.getvalue()
