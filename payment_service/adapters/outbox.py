"""The outbox writer's serializer: the CloudEvents JSON that the relay publishes as is.

It refuses any event that holds a card number: such an event must never be written, let alone sent.
"""

from __future__ import annotations

import json

from ..domain.cards import find_card_number_field
from ..domain.events import Event


class CardDataInEvent(ValueError):
    pass


def serialize_event(event: Event) -> str:
    document = event.to_cloudevent()
    field = find_card_number_field(document)
    if field is not None:
        raise CardDataInEvent(f"event {event.id} ({event.type.value}) holds a card number in {field}; not written")
    return json.dumps(document, separators=(",", ":"), sort_keys=False)
