import pytest

from payment_service.domain.cards import contains_card_number, find_card_number_field, luhn_valid, mask_card_numbers

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
    with pytest.raises(ValueError, match="card number"):
        serialize_event(Event(EventType.PAYMENT_CAPTURED, "pay_1", "u_1", {"note": "pan 4242424242424242"}))
