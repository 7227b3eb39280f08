"""The sandbox's Stripe wire API: one blueprint (`bp`), mounted under /stripe (the SDK's api base).

A stateful emulation of the parts of https://docs.stripe.com/api that the Stripe adapter uses:
customers, payment methods (from Stripe's public test tokens such as `pm_card_visa`), payment
intents (create with confirm, confirm, cancel, retrieve, list, search), charges (read only),
refunds and events. Requests are form-encoded the way the SDK sends them; responses are JSON in
Stripe's object shapes; errors are Stripe's `{"error": {...}}` with Stripe's HTTP statuses.

Like Stripe's test mode it honours `Idempotency-Key` (same key and parameters: the stored
response again, with `Idempotent-Replayed: true`; other parameters: 400 `idempotency_error`;
still running: 409 `idempotency_key_in_use`), answers a card that needs 3-D Secure with
`next_action.redirect_to_url` pointing at a challenge page served here (GET/POST
`/stripe/3ds/<pi_id>`), and sends every state change as a signed webhook event
(`Stripe-Signature: t=...,v1=...`) through the shared WebhookDispatcher.

Test payment methods are described in docs/sandbox.md. No card number is ever stored or
returned: a test token maps straight to its card metadata (brand, last4, expiry, country).

Layout: `_blueprint` (the blueprint), `_common` (errors, form parameters, rendering, pagination),
`_auth` (API key, request ids, idempotency), `cards` (test tokens), `events` (building and signing
webhook events), one module per resource (`customers` with payment methods, `payment_intents`,
`charges`, `refunds`), `three_ds` (the challenge page) and `admin` (/stripe/_admin). Each module
adds its routes to the blueprint when imported; importing this package imports them all.
"""

from . import _auth, admin, charges, customers, events, payment_intents, refunds, three_ds  # noqa: F401 (routes)
from ._blueprint import bp

__all__ = ["bp"]
