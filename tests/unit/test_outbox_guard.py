"""Scenario 5 of issue 9: an id that looks like a card number never blocks a state change.

The outbox writer and the relay look for card numbers in free text only (descriptions, failure
messages, reasons, names, metadata values); our ids, user ids, gateway ids and bank references
(UTR) are ids, not card data (DESIGN.md rule 6). A card number in free text is masked, never raised.
"""

import json

from payment_service.adapters.outbox import serialize_event, unpublishable_reason
from payment_service.domain.events import Event, EventType

PAN = "4242424242424242"  # Stripe's public test number
LUHN_USER = "4111111111111111"  # a numeric user id (JWT sub) that happens to pass Luhn
LUHN_UTR = "5555555555554444"  # a 16-digit bank UTR that happens to pass Luhn


def captured_for(user_id: str) -> Event:
    data = {"payment_id": "pay_1", "user_id": user_id, "amount": 50000, "currency": "INR", "gateway": "stripe",
            "gateway_payment_id": "pi_1", "captured_at": "2026-01-01T00:00:00.000Z"}
    return Event(EventType.PAYMENT_CAPTURED, "pay_1", user_id, data)


def settled_with_utr(utr: str) -> Event:
    data = {"withdrawal_id": "wd_1", "user_id": "u_1", "amount": 10000, "currency": "INR", "mode": "IMPS",
            "beneficiary": {"name": "A Kumar", "account_last4": "9012"}, "gateway_payout_id": "pout_1",
            "utr": utr, "settled_at": "2026-01-01T00:00:00.000Z"}
    return Event(EventType.WITHDRAWAL_SETTLED, "wd_1", "u_1", data)


def test_luhn_valid_user_id_is_written_intact() -> None:
    event = captured_for(LUHN_USER)
    doc = json.loads(serialize_event(event))
    assert doc["data"]["user_id"] == LUHN_USER and doc["id"] == event.id


def test_luhn_valid_utr_is_written_intact() -> None:
    doc = json.loads(serialize_event(settled_with_utr(LUHN_UTR)))
    assert doc["data"]["utr"] == LUHN_UTR


def test_ids_of_every_kind_are_left_alone() -> None:
    data = {"payment_id": LUHN_USER, "gateway_refund_id": LUHN_USER, "refund_id": LUHN_USER, "utr": LUHN_UTR,
            "amount": int(LUHN_UTR), "user_id": int(LUHN_USER)}
    event = Event(EventType.PAYMENT_REFUNDED, LUHN_USER, LUHN_USER, data)
    doc = json.loads(serialize_event(event))
    assert doc["subject"] == LUHN_USER and doc["data"] == data


def test_card_number_in_free_text_is_masked_never_raised() -> None:
    data = {"payment_id": "pay_1", "user_id": "u_1", "failure_code": "card_declined",
            "failure_message": f"card {PAN} was declined", "reason": f"customer typed {PAN}",
            "beneficiary": {"name": PAN}, "note": int(PAN)}
    text = serialize_event(Event(EventType.PAYMENT_FAILED, "pay_1", "u_1", data))
    assert PAN not in text
    doc = json.loads(text)["data"]
    assert doc["failure_message"] == "card [card ****4242] was declined"
    assert doc["reason"] == "customer typed [card ****4242]"
    assert doc["beneficiary"] == {"name": "[card ****4242]"} and doc["note"] == "[card ****4242]"
    assert doc["user_id"] == "u_1" and doc["failure_code"] == "card_declined"


def test_relay_publishes_luhn_valid_ids() -> None:
    for event in (captured_for(LUHN_USER), settled_with_utr(LUHN_UTR)):
        payload = json.dumps(event.to_cloudevent())  # as a writer that never masked would have left it
        assert unpublishable_reason(event.id, payload) is None


def test_relay_still_sets_aside_a_card_number_in_free_text() -> None:
    # The writer masks, so only a row from elsewhere (a manual fix, a bug) can hold one.
    event = captured_for("u_1")
    doc = event.to_cloudevent()
    doc["data"]["note"] = f"card {PAN}"
    assert unpublishable_reason(event.id, json.dumps(doc)) == "card number in payload field data.note"
    doc["data"]["note"] = "fine"
    doc["data"]["metadata"] = {"user_id": "u_1", "order_id": PAN}  # metadata values are free text
    assert unpublishable_reason(event.id, json.dumps(doc)) == "card number in payload field data.metadata.order_id"
