"""The outbox writer's serializer: the CloudEvents JSON that the relay publishes as is.

No card number is ever written into an event, and writing an event never fails for one: the event
is part of a state change that may follow money that already moved (a capture, a settlement), and
that transaction must commit. So a card number in free text (a failure message, a reason, a name)
is masked, and ids (ours, user ids, gateway ids, bank UTRs) are left as they are, whatever digits
they hold: they are not card data (DESIGN.md rule 6, domain/cards.py).
"""

from __future__ import annotations

import json

from ..domain.cards import mask_free_text
from ..domain.events import Event


def serialize_event(event: Event) -> str:
    return json.dumps(mask_free_text(event.to_cloudevent()), separators=(",", ":"), sort_keys=False)
