"""Benchmark: what a response costs to build since it is dumped through its documenting model (issue 11)
and carries canonical amounts (issue 13). Not a test: it prints figures.

In process, no I/O: a payment as the API renders it, three ways, in microseconds per call:

- hand-written dict: the body as the API built it before (kept here as the yardstick);
- model: the same fields plus canonical_amount / canonical_currency / amount_display, validated and dumped
  by PaymentOut (api/schemas.py), as the API builds it now;
- the canonical amount itself (adapters/fx_rates.CanonicalAmounts on the shipped sample), paid once
  per record created.

Compare the difference with a top-up's CPU time (2 cores / the top-ups per second of bench/topup.py).

Run:

    .venv/bin/python bench/responses.py [--n 20000]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from payment_service.adapters.fx_rates import CanonicalAmounts, EcbRates  # noqa: E402
from payment_service.api.payments import payment_json  # noqa: E402
from payment_service.domain import fx  # noqa: E402
from payment_service.domain.events import rfc3339  # noqa: E402
from payment_service.domain.payments import Payment  # noqa: E402


def t(value: datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


def handwritten(p: Payment) -> dict[str, Any]:
    return {
        "id": p.id, "user_id": p.user_id, "amount": p.amount, "currency": p.currency, "gateway": p.gateway,
        "gateway_payment_id": p.gateway_payment_id, "payment_method_id": p.payment_method_id or p.gateway_token,
        "card": {"brand": p.card_brand, "last4": p.card_last4} if p.card_last4 else None, "status": p.status,
        "failure_code": p.failure_code, "failure_message": p.failure_message, "next_action": None,
        "refunded_amount": p.refunded_amount, "created_at": t(p.created_at), "updated_at": t(p.updated_at),
        "captured_at": t(p.captured_at), "expires_at": None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    n = ap.parse_args().n
    now = datetime.now(UTC)
    canonical = CanonicalAmounts(EcbRates(""), "USD", 0)
    c = canonical(123450, "INR", now)
    p = Payment(id="pay_0123456789abcdef01234567", user_id="u_1", amount=123450, currency="INR", gateway="stripe",
                status="CAPTURED", created_at=now, updated_at=now, captured_at=now, gateway_payment_id="pi_123",
                gateway_token="pm_card_visa", card_brand="visa", card_last4="4242", **fx.canonical_fields(c))
    rows = [
        ("hand-written dict (before)", lambda: handwritten(p)),
        ("PaymentOut model + amount_display (now)", lambda: payment_json(p, "en_IN")),
        ("canonical amount (per record created)", lambda: canonical(123450, "INR", now)),
    ]
    print(f"{'what':42} {'us/call':>9}")
    results = {}
    for name, fn in rows:
        fn()
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        results[name] = best
        print(f"{name:42} {best:9.1f}")
    extra = results[rows[1][0]] - results[rows[0][0]] + results[rows[2][0]]
    print(f"added per top-up (one response, one record): {extra:.1f} us")
    for per_s in (150, 300, 600):
        print(f"  at {per_s} top-ups/s on 2 cores (~{2e6 / per_s:.0f} us of CPU each): {extra / (2e6 / per_s):.1%}")


if __name__ == "__main__":
    main()
