"""Stripe's public test payment methods (`pm_card_visa`, `tok_visa`, ...): card metadata and behaviour.

Last four digits only: no card number is ever stored or returned.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decline:
    code: str  # Stripe error code (card_declined, expired_card, incorrect_cvc, processing_error, ...)
    decline_code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class TestCard:
    brand: str
    last4: str
    country: str = "US"
    funding: str = "credit"
    three_d_secure: bool = False  # the charge needs the customer to authenticate first
    decline: Decline | None = None  # declined at charge time (after authentication, if any)
    attach_decline: bool = False  # refused when attached to a customer, like Stripe's decline cards


_GENERIC = Decline("card_declined", "generic_decline", "Your card was declined.")
_INSUFFICIENT = Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")

# Keyed by the token's name without its `pm_card_` / `tok_` prefix. Last four digits only.
TEST_CARDS: dict[str, TestCard] = {
    "visa": TestCard("visa", "4242"),
    "visa_debit": TestCard("visa", "5556", funding="debit"),
    "mastercard": TestCard("mastercard", "4444"),
    "mastercard_debit": TestCard("mastercard", "8210", funding="debit"),
    "amex": TestCard("amex", "8431"),
    "discover": TestCard("discover", "1117"),
    "jcb": TestCard("jcb", "0505", country="JP"),
    "unionpay": TestCard("unionpay", "0005", country="CN"),
    "in": TestCard("visa", "0008", country="IN"),
    "threeDSecureOptional": TestCard("visa", "3055"),
    "chargeDeclined": TestCard("visa", "0002", decline=_GENERIC, attach_decline=True),
    "chargeDeclinedInsufficientFunds": TestCard("visa", "9995", decline=_INSUFFICIENT, attach_decline=True),
    "chargeDeclinedLostCard": TestCard(
        "visa", "9987", decline=Decline("card_declined", "lost_card", "Your card was declined."), attach_decline=True
    ),
    "chargeDeclinedStolenCard": TestCard(
        "visa", "9979", decline=Decline("card_declined", "stolen_card", "Your card was declined."), attach_decline=True
    ),
    "chargeDeclinedFraudulent": TestCard(
        "visa", "0019", decline=Decline("card_declined", "fraudulent", "Your card was declined."), attach_decline=True
    ),
    "chargeDeclinedExpiredCard": TestCard(
        "visa",
        "0069",
        decline=Decline("expired_card", "expired_card", "Your card has expired.", "exp_month"),
        attach_decline=True,
    ),
    "chargeDeclinedIncorrectCvc": TestCard(
        "visa",
        "0127",
        decline=Decline("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.", "cvc"),
        attach_decline=True,
    ),
    "chargeDeclinedProcessingError": TestCard(
        "visa",
        "0119",
        decline=Decline(
            "processing_error",
            "processing_error",
            "An error occurred while processing your card. Try again in a little bit.",
        ),
        attach_decline=True,
    ),
    "chargeDeclinedVelocityLimitExceeded": TestCard(
        "visa",
        "6975",
        decline=Decline("card_declined", "card_velocity_exceeded", "Your card was declined."),
    ),
    # Attaches fine, but every charge is declined (like Stripe's "chargeCustomerFail").
    "chargeCustomerFail": TestCard("visa", "0341", decline=_GENERIC),
    # 3-D Secure: the charge answers requires_action; the challenge page decides the outcome.
    "threeDSecure2Required": TestCard("visa", "3220", three_d_secure=True),
    "threeDSecureRequired": TestCard("visa", "3063", three_d_secure=True),
    "authenticationRequired": TestCard("visa", "3184", country="DE", three_d_secure=True),
    "authenticationRequiredOnSetup": TestCard("visa", "3155", country="DE", three_d_secure=True),
    # 3-D Secure, and when the customer does authenticate the charge is still declined (insufficient funds).
    "authenticationRequiredChargeDeclinedInsufficientFunds": TestCard(
        "visa", "3178", country="DE", three_d_secure=True, decline=_INSUFFICIENT
    ),
}


def test_card_for(token: str) -> tuple[str, TestCard] | None:
    """The (name, card) of a Stripe test token (`pm_card_visa`, `tok_visa`, `pm_card_visa_chargeDeclined`)."""
    for prefix in ("pm_card_", "tok_"):
        if token.startswith(prefix):
            name = token[len(prefix) :]
            if name in TEST_CARDS:
                return name, TEST_CARDS[name]
            # Stripe spells several decline tokens both ways: pm_card_chargeDeclined and pm_card_visa_chargeDeclined.
            if name.startswith("visa_") and name[5:] in TEST_CARDS:
                return name[5:], TEST_CARDS[name[5:]]
    return None
