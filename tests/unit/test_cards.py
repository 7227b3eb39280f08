import json

import pytest

from payment_service.domain.cards import (
    contains_card_number,
    find_card_number_field,
    find_card_number_in_free_text,
    is_identifier_key,
    luhn_valid,
    mask_card_numbers,
    mask_free_text,
    mask_json_text,
    may_hold_card_number,
)

VISA_TEST = "4242424242424242"  # Stripe's public test number


@pytest.mark.parametrize(
    "text",
    [VISA_TEST, "4242 4242 4242 4242", "4242-4242-4242-4242", "card:4000002760003184;", "5555555555554444",
     "378282246310005", "6011111111111117"],
)
def test_detects_card_numbers(text: str) -> None:
    assert contains_card_number(text)


@pytest.mark.parametrize(
    "text",
    ["4242424242424241", "1234567890", "order 2026112110000000 placed", "+91 98765 43210", "pay_01hx4242424242",
     "pi_a4242424242424242b", "ch_4242424242424242abc", "evt_x4242424242424242",
     "42424242424242424242424"],
)
def test_ignores_non_cards(text: str) -> None:
    assert not contains_card_number(text)


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_mask_keeps_only_last_four() -> None:
    masked = mask_card_numbers(f"charge {VISA_TEST} now, again 4242 4242 4242 4242")
    assert VISA_TEST not in masked and "4242 4242 4242 4242" not in masked
    assert masked == "charge [card ****4242] now, again [card ****4242]"


def test_find_field_in_nested_json() -> None:
    assert find_card_number_field({"a": 1, "device": {"id": "d", "note": ["x", VISA_TEST]}}) == "device.note[1]"
    assert find_card_number_field({"n": int(VISA_TEST)}) == "n"
    assert find_card_number_field({VISA_TEST: "k"}) == "(body)"
    assert find_card_number_field({"amount": 50000, "token": "pm_card_visa", "ok": True}) is None


def test_ids_with_digit_runs_do_not_block_events() -> None:
    from payment_service.adapters.outbox import serialize_event
    from payment_service.domain.events import Event, EventType

    evt = Event(EventType.PAYMENT_CAPTURED, "pay_1", "u_1", {"gateway_payment_id": "pi_a4242424242424242b"})
    assert "pi_a4242424242424242b" in serialize_event(evt)
    # A card number in free text is masked, never raised: writing the event must not fail.
    text = serialize_event(Event(EventType.PAYMENT_CAPTURED, "pay_1", "u_1", {"note": "pan 4242424242424242"}))
    assert VISA_TEST not in text and "pan [card ****4242]" in text


# --- ids are not card data; free text is (DESIGN.md rule 6) ----------------------------------


@pytest.mark.parametrize(
    "key",
    ["id", "subject", "user_id", "payment_id", "gateway_payment_id", "gateway_payout_id", "utr", "rrn",
     "bank_reference", "amount", "amount_refunded", "event_ids", "USER_ID"],
)
def test_identifier_keys(key: str) -> None:
    assert is_identifier_key(key)


@pytest.mark.parametrize(
    "key", ["description", "failure_message", "reason", "name", "note", "return_url", "account_number", "idea"]
)
def test_free_text_keys(key: str) -> None:
    assert not is_identifier_key(key)


def test_mask_free_text_keeps_ids_and_masks_the_rest() -> None:
    doc = {
        "id": VISA_TEST,
        "user_id": VISA_TEST,
        "utr": VISA_TEST,
        "amount": int(VISA_TEST),
        "description": f"for {VISA_TEST}",
        "n": int(VISA_TEST),
        "ok": True,
        "small": 42,
        "nothing": None,
        "list": ["a", VISA_TEST, {"payment_id": VISA_TEST, "name": VISA_TEST}],
        VISA_TEST: "a key is free text",
        "metadata": {"payment_id": "pay_1", "user_id": VISA_TEST, "order_id": VISA_TEST, "n": int(VISA_TEST)},
        "notes": {"invoice_id": VISA_TEST},
    }
    masked = mask_free_text(doc)
    assert masked == {
        "id": VISA_TEST,
        "user_id": VISA_TEST,
        "utr": VISA_TEST,
        "amount": int(VISA_TEST),
        "description": "for [card ****4242]",
        "n": "[card ****4242]",
        "ok": True,
        "small": 42,
        "nothing": None,
        "list": ["a", "[card ****4242]", {"payment_id": VISA_TEST, "name": "[card ****4242]"}],
        "[card ****4242]": "a key is free text",
        # Metadata and notes are free text whatever their keys, except the references we write there.
        "metadata": {"payment_id": "pay_1", "user_id": VISA_TEST, "order_id": "[card ****4242]",
                     "n": "[card ****4242]"},
        "notes": {"invoice_id": "[card ****4242]"},
    }
    assert doc["description"] == f"for {VISA_TEST}"  # a copy: the input is left as it was


def test_find_card_number_in_free_text() -> None:
    assert find_card_number_in_free_text({"user_id": VISA_TEST, "utr": VISA_TEST, "id": VISA_TEST}) is None
    assert find_card_number_in_free_text({"data": {"utr": VISA_TEST, "reason": VISA_TEST}}) == "data.reason"
    assert find_card_number_in_free_text({"a": [{"name": "x"}, {"name": int(VISA_TEST)}]}) == "a[1].name"
    assert find_card_number_in_free_text({"metadata": {"order_id": VISA_TEST}}) == "metadata.order_id"
    assert find_card_number_in_free_text({VISA_TEST: 1}) == "(key)"


def test_mask_json_text_keeps_json_valid_and_untouched_bodies_byte_identical() -> None:
    raw = '{"id": "evt_1",  "data": {"object": {"id": "pi_1", "amount": 100}}}'
    assert mask_json_text(raw) is raw
    body = json.dumps({"id": "evt_1", "data": {"object": {
        "id": "pi_1", "description": f"card {VISA_TEST}", "metadata": {"payment_id": "pay_1", "n": int(VISA_TEST),
                                                                        "s": f"{VISA_TEST[:4]} {VISA_TEST[4:]}"},
        "amount": 100, "utr": "5555555555554444"}}})
    masked = mask_json_text(body)
    assert VISA_TEST not in masked and "4242 424242424242" not in masked
    obj = json.loads(masked)["data"]["object"]
    assert obj["description"] == "card [card ****4242]" and obj["metadata"]["n"] == "[card ****4242]"
    assert obj["metadata"]["payment_id"] == "pay_1" and obj["id"] == "pi_1" and obj["utr"] == "5555555555554444"


def test_mask_json_text_of_a_body_that_is_not_json() -> None:
    assert mask_json_text(f"not json {VISA_TEST}") == "not json [card ****4242]"
    assert json.loads(mask_json_text(VISA_TEST)) == "[card ****4242]"  # a bare JSON number, still JSON


def test_first_look_misses_no_card_number_hidden_by_json() -> None:
    assert not may_hold_card_number('{"amount":50000,"time":"2026-01-01T00:00:00.000Z","id":"evt_01hx"}')
    # Every fourth digit as a \u escape: no long digit run in the text, a card number once decoded.
    escaped = "".join(c if i % 4 else "\\u003" + c for i, c in enumerate(VISA_TEST))
    hidden = [json.dumps({"s": f"\n{VISA_TEST}"}), '{"s": "' + escaped + '"}', VISA_TEST]
    assert json.loads(hidden[1])["s"] == VISA_TEST and not contains_card_number(hidden[1])
    for text in hidden:
        assert may_hold_card_number(text)
        assert VISA_TEST not in json.dumps(json.loads(mask_json_text(text)))
