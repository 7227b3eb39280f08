"""The sandbox's Razorpay wire API: one blueprint (`bp`), mounted under /razorpay (the SDK's base_url).

A stateful emulation of the calls our adapter makes, in Razorpay's own shapes: customers, saved card
tokens, orders, payments (S2S JSON and recurring, with a 3-D Secure challenge page), capture, refunds
(with `X-Refund-Idempotency`), and RazorpayX contacts, fund accounts and payouts (with
`X-Payout-Idempotency`). Errors use Razorpay's
`{"error": {"code", "description", "source", "step", "reason", "field", "metadata"}}` shape; unknown ids
answer 400 "The id provided does not exist", as Razorpay does. Webhooks are Razorpay's event envelope,
signed with `X-Razorpay-Signature` = hex HMAC-SHA256(raw body, razorpay_webhook_secret).

Sandbox extensions (not in Razorpay's API), documented in docs/sandbox-razorpay.md:
- client-side test tokens (`tok_rzp_success`, ...) stand in for card data: `POST /v1/tokens` with
  `{"customer_id", "method": "card", "token": "tok_rzp_..."}` saves one as a `token_...`, and a payment may
  name a test token directly;
- `/razorpay/_admin/...` settles, fails and reverses payouts on demand and sets auto-settlement.

Layout: `_blueprint` (the blueprint), `_common` (errors, bodies and fields, collections, list windows),
`_auth` (API keys, refund and payout idempotency), `cards` (test tokens), `events` (webhook events), one
module per resource (`customers` with tokens, `orders`, `payments`, `refunds`, and RazorpayX `contacts`
with fund accounts, `payouts`), `three_ds` (the challenge page) and `admin` (/razorpay/_admin). Each module
adds its routes to the blueprint when imported; importing this package imports them all.
"""

from . import (  # noqa: F401 (importing a module adds its routes)
    _auth,
    admin,
    contacts,
    customers,
    orders,
    payments,
    payouts,
    refunds,
    three_ds,
)
from ._blueprint import bp

__all__ = ["bp"]
