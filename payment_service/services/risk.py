"""Fraud pre-check: rules from configuration, a decision and the reasons for it.

Pure: the caller gathers the facts (velocity from the database, so the check holds across
replicas; device history; card BIN and country when known) and records the decision and its
reasons on the payment.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field


class RiskAction(str, enum.Enum):
    ALLOW = "allow"
    REQUIRE_3DS = "require_3ds"
    REFUSE = "refuse"


@dataclass(frozen=True)
class RiskRules:
    max_amount: int = 20_000_000
    velocity_max_attempts: int = 10
    velocity_max_amount: int = 50_000_000
    velocity_window_seconds: int = 3600
    blocked_bins: frozenset[str] = frozenset()
    blocked_countries: frozenset[str] = frozenset()
    new_device_amount: int = 1_000_000
    new_device_action: RiskAction = RiskAction.REQUIRE_3DS

    @classmethod
    def from_settings(cls, s: object) -> RiskRules:
        def csv(value: str) -> frozenset[str]:
            return frozenset(v.strip().upper() for v in value.split(",") if v.strip())

        return cls(
            max_amount=s.RISK_MAX_AMOUNT,  # type: ignore[attr-defined]
            velocity_max_attempts=s.RISK_VELOCITY_MAX_ATTEMPTS,  # type: ignore[attr-defined]
            velocity_max_amount=s.RISK_VELOCITY_MAX_AMOUNT,  # type: ignore[attr-defined]
            velocity_window_seconds=s.RISK_VELOCITY_WINDOW_SECONDS,  # type: ignore[attr-defined]
            blocked_bins=csv(s.RISK_BLOCKED_BINS),  # type: ignore[attr-defined]
            blocked_countries=csv(s.RISK_BLOCKED_COUNTRIES),  # type: ignore[attr-defined]
            new_device_amount=s.RISK_NEW_DEVICE_AMOUNT,  # type: ignore[attr-defined]
            new_device_action=RiskAction(s.RISK_NEW_DEVICE_ACTION),  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class RiskFacts:
    amount: int
    attempts_in_window: int  # this user's top-up attempts in the window, before this one
    amount_in_window: int  # their amount in the window (captured or pending), before this one
    device_id: str | None
    device_known: bool  # the user has captured a payment from this device before
    card_iin: str | None = None
    card_country: str | None = None


@dataclass(frozen=True)
class RiskDecision:
    action: RiskAction
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def refused(self) -> bool:
        return self.action is RiskAction.REFUSE

    def reasons_json(self) -> str:
        return json.dumps(list(self.reasons))

    def failure_message(self) -> str:
        return "refused by the fraud pre-check: " + ", ".join(self.reasons)


def assess(facts: RiskFacts, rules: RiskRules) -> RiskDecision:
    refuse: list[str] = []
    step_up: list[str] = []
    if facts.amount > rules.max_amount:
        refuse.append(f"amount_over_limit:{rules.max_amount}")
    if facts.attempts_in_window + 1 > rules.velocity_max_attempts:
        refuse.append(
            f"velocity_attempts:{facts.attempts_in_window + 1}>{rules.velocity_max_attempts}"
            f"/{rules.velocity_window_seconds}s"
        )
    if facts.amount_in_window + facts.amount > rules.velocity_max_amount:
        refuse.append(
            f"velocity_amount:{facts.amount_in_window + facts.amount}>{rules.velocity_max_amount}"
            f"/{rules.velocity_window_seconds}s"
        )
    if facts.card_iin and any(facts.card_iin.startswith(b) for b in rules.blocked_bins):
        refuse.append(f"blocked_bin:{facts.card_iin[:6]}")
    if facts.card_country and facts.card_country.upper() in rules.blocked_countries:
        refuse.append(f"blocked_country:{facts.card_country.upper()}")
    if facts.device_id is not None and not facts.device_known and facts.amount > rules.new_device_amount:
        reason = f"new_device_over:{rules.new_device_amount}"
        if rules.new_device_action is RiskAction.REFUSE:
            refuse.append(reason)
        elif rules.new_device_action is RiskAction.REQUIRE_3DS:
            step_up.append(reason)
    if refuse:
        return RiskDecision(RiskAction.REFUSE, tuple(refuse + step_up))
    if step_up:
        return RiskDecision(RiskAction.REQUIRE_3DS, tuple(step_up))
    return RiskDecision(RiskAction.ALLOW)
