"""The sandbox's client-side Razorpay test tokens (`tok_rzp_success`, ...) and the card entity each shows.

Card numbers never appear: a test token maps straight to network, last four digits and issuer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TestCard:
    network: str
    last4: str
    issuer: str
    international: bool
    type: str = "credit"
    expiry_month: int = 12
    expiry_year: int = 2030
    # What happens when it is charged: success, decline, insufficient_funds, 3ds_success, 3ds_failure.
    outcome: str = "success"


# Client-side test tokens: what a checkout in test mode would hand the service. Card numbers never appear.
TEST_TOKENS: dict[str, TestCard] = {
    "tok_rzp_success": TestCard("Visa", "1111", "HDFC", False),
    "tok_rzp_mastercard": TestCard("MasterCard", "5449", "ICIC", False),
    "tok_rzp_rupay": TestCard("RuPay", "0008", "SBIN", False, type="debit"),
    "tok_rzp_international": TestCard("Visa", "4242", "JPMC", True),
    "tok_rzp_declined": TestCard("Visa", "0002", "HDFC", False, outcome="decline"),
    "tok_rzp_insufficient_funds": TestCard(
        "MasterCard", "9995", "ICIC", False, type="debit", outcome="insufficient_funds"
    ),
    "tok_rzp_3ds_success": TestCard("Visa", "3184", "HDFC", False, outcome="3ds_success"),
    "tok_rzp_3ds_failure": TestCard("MasterCard", "3220", "KKBK", False, outcome="3ds_failure"),
}


def _card_entity(card: TestCard) -> dict[str, Any]:
    return {
        "id": "card_" + hashlib.sha256(card.last4.encode() + card.network.encode()).hexdigest()[:14],
        "entity": "card",
        "name": "Sandbox Cardholder",
        "last4": card.last4,
        "network": card.network,
        "type": card.type,
        "issuer": card.issuer,
        "international": card.international,
        "emi": False,
        "sub_type": "consumer",
    }
