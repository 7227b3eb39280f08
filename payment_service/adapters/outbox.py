"""The outbox writer's serializer, the CloudEvents JSON that the relay publishes as is, and the
relay's guard on what it reads back.

No card number is ever written into an event, and writing an event never fails for one: the event
is part of a state change that may follow money that already moved (a capture, a settlement), and
that transaction must commit. So a card number in free text (a failure message, a reason, a name)
is masked, and ids (ours, user ids, gateway ids, bank UTRs) are left as they are, whatever digits
they hold: they are not card data (DESIGN.md rule 6, domain/cards.py).
"""

from __future__ import annotations

import json

from ..domain.cards import find_card_number_in_free_text, mask_free_text, may_hold_card_number
from ..domain.events import Event


def serialize_event(event: Event) -> str:
    document = event.to_cloudevent()
    text = json.dumps(document, separators=(",", ":"), sort_keys=False)
    if may_hold_card_number(text):  # rare: most events hold no long run of digits at all
        text = json.dumps(mask_free_text(document), separators=(",", ":"), sort_keys=False)
    return text


def unpublishable_reason(event_id: str, payload: str) -> str | None:
    """Why this stored row must never be sent, or None. The reason never contains the payload's content.

    `serialize_event` never writes such a row; one written some other way (a manual fix, a bug) can be.
    """
    try:
        document = json.loads(payload)
    except ValueError as exc:
        return f"payload is not JSON ({type(exc).__name__} at {getattr(exc, 'pos', '?')})"
    if not isinstance(document, dict) or document.get("id") != event_id:
        return "payload is not the CloudEvents document of this event (id differs)"
    # Scanning the raw JSON for a long digit run is ~10x cheaper than walking the parsed document with
    # the Luhn regex, so only the rare payload with such a run gets the full check.
    if may_hold_card_number(payload):
        # Free text only, as the writer masks it: ids (user_id, subject, utr, *_id) are not card data,
        # and an event about money that moved must reach the wallet whatever digits its ids hold.
        field = find_card_number_in_free_text(document)
        if field is not None:
            return f"card number in payload field {field}"
    return None
