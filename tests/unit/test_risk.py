from payment_service.services.risk import RiskAction, RiskFacts, RiskRules, assess

RULES = RiskRules(max_amount=1000, velocity_max_attempts=3, velocity_max_amount=2000,
                  blocked_bins=frozenset({"400000"}), blocked_countries=frozenset({"KP"}), new_device_amount=500)


def facts(**kw):
    base = dict(amount=100, attempts_in_window=0, amount_in_window=0, device_id="d", device_known=True)
    return RiskFacts(**{**base, **kw})


def test_allow() -> None:
    assert assess(facts(), RULES).action is RiskAction.ALLOW


def test_each_refusal_reason() -> None:
    assert assess(facts(amount=1001), RULES).reasons == ("amount_over_limit:1000",)
    assert assess(facts(attempts_in_window=3), RULES).refused
    assert assess(facts(attempts_in_window=2), RULES).action is RiskAction.ALLOW
    assert "velocity_amount" in assess(facts(amount_in_window=1950), RULES).reasons[0]
    assert assess(facts(card_iin="4000001234"), RULES).reasons == ("blocked_bin:400000",)
    assert assess(facts(card_country="kp"), RULES).reasons == ("blocked_country:KP",)


def test_new_device_by_configuration() -> None:
    assert assess(facts(amount=600, device_known=False), RULES).action is RiskAction.REQUIRE_3DS
    refuse = RiskRules(new_device_amount=500, new_device_action=RiskAction.REFUSE)
    assert assess(facts(amount=600, device_known=False), refuse).refused
    allow = RiskRules(new_device_amount=500, new_device_action=RiskAction.ALLOW)
    assert assess(facts(amount=600, device_known=False), allow).action is RiskAction.ALLOW
    assert assess(facts(amount=400, device_known=False), RULES).action is RiskAction.ALLOW
    assert assess(facts(amount=600, device_id=None, device_known=False), RULES).action is RiskAction.ALLOW
