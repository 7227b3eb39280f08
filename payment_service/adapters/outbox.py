"""The outbox writer's serializer: the CloudEvents JSON that the relay publishes as is.

No card number is ever written into an event, and writing an event never fails for one: the event
is part of a state change that may follow money that already moved (a capture, a settlement), and
that transaction must commit. So a card number in free text (a failure message, a reason, a name)
is masked, and ids (ours, user ids, gateway ids, bank UTRs) are left as they are, whatever digits
they hold: they are not card data (DESIGN.md rule 6, domain/cards.py).
"""

from __future__ import annotations

import json

from ..domain.cards import mask_free_text, may_hold_card_number
from ..domain.events import Event


def serialize_event(event: Event) -> str:
    document = event.to_cloudevent()
    text = json.dumps(document, separators=(",", ":"), sort_keys=False)
    if may_hold_card_number(text):  # rare: most events hold no long run of digits at all
        text = json.dumps(mask_free_text(document), separators=(",", ":"), sort_keys=False)
    return text
