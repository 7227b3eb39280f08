"""Canonical amounts: the half-even math on known rates, the ECB-format parser, staleness, and the services
recording canonical amounts (and nulls without a fresh rate) on payments, refunds, withdrawals and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from babel.numbers import get_currency_precision
from prometheus_client import REGISTRY

from payment_service.adapters.fx_rates import (
    RETRY_FAILED_SECONDS,
    SHIPPED_RATES,
    CanonicalAmounts,
    EcbRates,
    RatesFormatError,
    parse_ecb,
)
from payment_service.api.display import amount_display
from payment_service.domain import fx
from payment_service.domain.events import EventType
from payment_service.domain.money import SUPPORTED_CURRENCIES, exponent
from payment_service.gateways.base import Beneficiary
from payment_service.services import payments as svc
from payment_service.services import refunds, withdrawals
from payment_service.services.risk import RiskRules

from .fakes import Clock, FakeMoneyOutGateway, fake_uow_factory, run_flow

D = Decimal
AS_OF = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
# Units per 1 EUR, chosen so that some cross rates are exact: INR->USD 0.012, JPY->USD 1/150.
TABLE = fx.RateTable("EUR", {"USD": D("1.05"), "JPY": D("157.5"), "INR": D("87.5"), "KWD": D("0.3234")}, AS_OF)


# --- the math, on known rates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "source", "target", "rate", "expected"),
    [
        # USD -> JPY (2 -> 0 decimals) at 150: 1 cent is 1.5 yen -> 2 (even), 3 cents 4.5 -> 4, 5 cents 7.5 -> 8
        (1, "USD", "JPY", "150", 2),
        (3, "USD", "JPY", "150", 4),
        (5, "USD", "JPY", "150", 8),
        (100, "USD", "JPY", "150", 150),
        # JPY -> USD (0 -> 2) at 0.005: 1 yen is half a cent -> 0, 3 yen 1.5 cents -> 2
        (1, "JPY", "USD", "0.005", 0),
        (3, "JPY", "USD", "0.005", 2),
        (1000, "JPY", "USD", "0.0065", 650),
        # INR -> USD (2 -> 2) at 0.012: 123.45 INR is 1.4814 USD -> 148 cents; ties at 0.01
        (12345, "INR", "USD", "0.012", 148),
        (50, "INR", "USD", "0.01", 0),
        (150, "INR", "USD", "0.01", 2),
        (250, "INR", "USD", "0.01", 2),
        # USD -> INR at 88.5: 1 cent is 88.5 paise -> 88, 3 cents 265.5 -> 266
        (1, "USD", "INR", "88.5", 88),
        (3, "USD", "INR", "88.5", 266),
        # KWD -> USD (3 -> 2) at 5: 1 fils is half a cent -> 0, 3 fils 1.5 -> 2; 1 KWD at 3.25 = 325 cents
        (1, "KWD", "USD", "5", 0),
        (3, "KWD", "USD", "5", 2),
        (1000, "KWD", "USD", "3.25", 325),
        # USD -> KWD (2 -> 3): 1 USD at 0.3075 is 307.5 fils -> 308; at 0.3065, 306.5 -> 306
        (100, "USD", "KWD", "0.3075", 308),
        (100, "USD", "KWD", "0.3065", 306),
        # KWD <-> JPY (3 <-> 0): 1 fils at 505 yen/KWD is 0.505 yen -> 1; 1 yen at 0.0025 KWD is 2.5 fils -> 2
        (1, "KWD", "JPY", "505", 1),
        (1000, "KWD", "JPY", "505", 505),
        (1, "JPY", "KWD", "0.0025", 2),
        (3, "JPY", "KWD", "0.0025", 8),  # 7.5 -> 8
        # The largest amount the API takes converts exactly (no float, no lost digits).
        (10**12, "INR", "USD", "0.01234567890123456789", 12345678901),
        (10**12 + 5, "INR", "USD", "0.1", 10**11),  # a tie at 10^11 + 0.5 cents: the even one
    ],
)
def test_convert_known_rates_half_even(amount: int, source: str, target: str, rate: str, expected: int) -> None:
    assert fx.convert(amount, source, target, D(rate)) == expected


def test_cross_rates_go_through_the_base_and_are_rounded_to_the_stored_scale() -> None:
    assert TABLE.rate("INR", "USD") == D("0.012")
    assert TABLE.rate("USD", "INR") == D("83.33333333333333333333")
    assert TABLE.rate("JPY", "USD") == D("0.00666666666666666667")
    assert TABLE.rate("EUR", "USD") == D("1.05")
    assert TABLE.rate("USD", "EUR") == D("0.95238095238095238095")
    assert TABLE.rate("AED", "USD") is None
    for rate in (TABLE.rate("KWD", "USD"), TABLE.rate("JPY", "KWD")):
        assert rate is not None and -rate.as_tuple().exponent == fx.RATE_PLACES


def test_canonical_amount_from_a_table_is_reproducible_from_the_stored_rate() -> None:
    at = AS_OF + timedelta(hours=1)
    got = fx.canonical(100_000, "JPY", "USD", TABLE, at, 86400)
    assert isinstance(got, fx.CanonicalAmount)
    assert (got.amount, got.currency, got.rate_at) == (66667, "USD", AS_OF)  # 666.67 USD
    assert fx.convert(100_000, "JPY", "USD", got.rate) == got.amount
    inr = fx.canonical(50_000, "INR", "USD", TABLE, at, 86400)
    assert isinstance(inr, fx.CanonicalAmount) and inr.amount == 600 and inr.rate == D("0.012")
    kwd = fx.canonical(1_500, "KWD", "USD", TABLE, at, 86400)  # 1.500 KWD at 3.2467... USD
    assert isinstance(kwd, fx.CanonicalAmount) and kwd.amount == 487


def test_an_amount_in_the_canonical_currency_needs_no_rate() -> None:
    got = fx.canonical(1234, "USD", "USD", None, AS_OF, 60)
    assert got == fx.CanonicalAmount(1234, "USD", D(1), AS_OF)


def test_a_stale_or_missing_rate_is_not_used() -> None:
    max_age = 5 * 86400
    fresh = fx.canonical(100, "INR", "USD", TABLE, AS_OF + timedelta(seconds=max_age), max_age)
    assert isinstance(fresh, fx.CanonicalAmount)
    assert fx.canonical(100, "INR", "USD", TABLE, AS_OF + timedelta(seconds=max_age + 1), max_age) is fx.Missing.STALE
    assert fx.canonical(100, "INR", "USD", None, AS_OF, max_age) is fx.Missing.NO_RATES
    assert fx.canonical(100, "AED", "USD", TABLE, AS_OF, max_age) is fx.Missing.UNKNOWN_CURRENCY
    # 0: no age limit (the shipped sample under `dev`)
    assert isinstance(fx.canonical(100, "INR", "USD", TABLE, AS_OF + timedelta(days=900), 0), fx.CanonicalAmount)


def test_money_exponents_are_babels_for_every_supported_currency() -> None:
    """domain/money.py is the one source of exponents; Babel (CLDR) agrees on every currency we take."""
    for currency in SUPPORTED_CURRENCIES:
        assert exponent(currency) == get_currency_precision(currency), currency
    assert (exponent("JPY"), exponent("INR"), exponent("USD"), exponent("KWD")) == (0, 2, 2, 3)


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "expected"),
    [
        (123450, "INR", "en_IN", "₹1,234.50"),
        (1234567890, "INR", "en_IN", "₹1,23,45,678.90"),
        (1234, "JPY", "en_IN", "JP¥1,234"),
        (1234, "KWD", "en_IN", "KWD1.234"),
        (5, "USD", "en_US", "$0.05"),
        (1234567890, "INR", "en_US", "₹12,345,678.90"),
    ],
)
def test_amount_display_uses_the_currency_exponent(amount: int, currency: str, locale: str, expected: str) -> None:
    assert amount_display(amount, currency, locale) == expected


# --- the ECB format and the provider ---------------------------------------------------------------

ECB_DOC = """<?xml version="1.0" encoding="UTF-8"?>
<gesmes:Envelope xmlns:gesmes="http://www.gesmes.org/xml/2002-08-01"
 xmlns="http://www.ecb.int/vocabulary/2002-08-01/eurofxref">
  <gesmes:subject>Reference rates</gesmes:subject>
  <Cube><Cube time='{day}'>
    <Cube currency='USD' rate='{usd}'/><Cube currency='JPY' rate='162.35'/><Cube currency='INR' rate='88.1'/>
  </Cube></Cube>
</gesmes:Envelope>"""


def ecb_doc(day: str = "2026-07-01", usd: str = "1.0773") -> str:
    return ECB_DOC.format(day=day, usd=usd)


def test_parse_the_ecb_daily_format() -> None:
    table = parse_ecb(ecb_doc())
    assert table.base == "EUR"
    assert dict(table.rates) == {"USD": D("1.0773"), "JPY": D("162.35"), "INR": D("88.1")}
    # Published around 16:00 Frankfurt time: 14:00 UTC in summer, 15:00 UTC in winter.
    assert table.as_of == datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
    assert parse_ecb(ecb_doc(day="2026-11-27")).as_of == datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


def test_the_shipped_sample_quotes_the_currencies_we_take() -> None:
    table = parse_ecb(SHIPPED_RATES.read_bytes())
    assert {"USD", "JPY", "INR", "GBP", "KWD", "AED", "BHD", "OMR", "JOD", "SGD", "AUD", "CAD"} <= set(table.rates)
    for currency in SUPPORTED_CURRENCIES:
        assert table.rate(currency, "USD") is not None, currency


@pytest.mark.parametrize(
    "document",
    [
        "not xml at all",
        "<Envelope><Cube><Cube currency='USD' rate='1.1'/></Cube></Envelope>",  # no time
        ecb_doc(day="yesterday"),
        ecb_doc(usd="abc"),
        ecb_doc(usd="-1.2"),
        ecb_doc(usd="0"),
        ecb_doc(usd="NaN"),
        "<Envelope><Cube time='2026-07-01'></Cube></Envelope>",  # no rate
        # Entity expansion (a "billion laughs" document) is refused, not expanded.
        """<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>
        <Envelope><Cube time='2026-07-01'><Cube currency='USD' rate='&b;'/></Cube></Envelope>""",
    ],
)
def test_anything_else_is_refused(document: str) -> None:
    with pytest.raises(RatesFormatError):
        parse_ecb(document)


class Ticks:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_file_source_loads_at_once_and_refreshes_on_its_period(tmp_path: Path) -> None:
    path = tmp_path / "rates.xml"
    path.write_text(ecb_doc(usd="1.1"))
    ticks = Ticks()
    rates = EcbRates(f"file://{path}", refresh_seconds=3600, monotonic=ticks)
    first = rates.table()
    assert first is not None and first.rates["USD"] == D("1.1")
    path.write_text(ecb_doc(day="2026-07-02", usd="1.2"))
    ticks.t += 3599
    assert rates.table() is first  # not due yet
    ticks.t += 1
    second = rates.table()
    assert second is not None and second.rates["USD"] == D("1.2")
    # A broken source keeps the table in use, and is tried again soon rather than a period later.
    path.write_text("<broken")
    ticks.t += 3600
    assert rates.table() is second
    path.write_text(ecb_doc(day="2026-07-03", usd="1.3"))
    ticks.t += RETRY_FAILED_SECONDS
    third = rates.table()
    assert third is not None and third.rates["USD"] == D("1.3")


def test_the_default_source_is_the_shipped_sample() -> None:
    rates = EcbRates("")
    assert rates.path == SHIPPED_RATES
    table = rates.table()
    assert table is not None and table.as_of == datetime(2026, 11, 27, 15, 0, tzinfo=UTC)


def _missing(reason: str) -> float:
    return REGISTRY.get_sample_value("canonical_amount_missing_total", {"reason": reason}) or 0.0


def test_canonical_amounts_count_what_they_could_not_convert(tmp_path: Path) -> None:
    path = tmp_path / "rates.xml"
    path.write_text(ecb_doc(day="2026-07-01"))
    canonical = CanonicalAmounts(EcbRates(str(path)), "USD", max_age_seconds=5 * 86400)
    fresh_at = datetime(2026, 7, 2, tzinfo=UTC)
    got = canonical(8810, "INR", fresh_at)  # 88.10 INR = 1 EUR = 1.0773 USD
    assert got is not None and (got.amount, got.currency, got.rate) == (108, "USD", D("0.01222814982973893303"))
    stale_before, unknown_before = _missing("stale"), _missing("unknown_currency")
    assert canonical(8810, "INR", fresh_at + timedelta(days=6)) is None
    assert canonical(100, "AED", fresh_at) is None
    assert _missing("stale") == stale_before + 1
    assert _missing("unknown_currency") == unknown_before + 1
    nothing = CanonicalAmounts(EcbRates(str(tmp_path / "absent.xml")), "USD", 0)
    no_rates_before = _missing("no_rates")
    assert nothing(100, "INR", fresh_at) is None
    assert _missing("no_rates") == no_rates_before + 1
    assert nothing(100, "USD", fresh_at) == fx.CanonicalAmount(100, "USD", D(1), fresh_at)


# --- the services record them ---------------------------------------------------------------------

RATES_AT = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)  # the fakes' clock starts at 10:00 that day
RATES = fx.RateTable("EUR", {"USD": D("1.05"), "INR": D("87.5")}, RATES_AT)


class FixedRates:
    def __init__(self, table: fx.RateTable | None) -> None:
        self.table = table

    def __call__(self, amount: int, currency: str, at: datetime) -> fx.CanonicalAmount | None:
        got = fx.canonical(amount, currency, "USD", self.table, at, 86400)
        return got if isinstance(got, fx.CanonicalAmount) else None


def _settings(table: fx.RateTable | None):
    canonical = FixedRates(table)
    return (
        svc.PaymentSettings(RiskRules(), 900, canonical=canonical),
        refunds.RefundSettings(canonical=canonical),
        withdrawals.WithdrawalSettings(canonical=canonical),
    )


def test_payments_refunds_withdrawals_and_their_events_carry_the_canonical_amount() -> None:
    uow_factory, store = fake_uow_factory()
    gw, clock = FakeMoneyOutGateway(), Clock()
    p_settings, r_settings, w_settings = _settings(RATES)
    cmd = svc.TopUp(user_id="u_1", amount=50_000, currency="INR", gateway="stripe", token="pm_card_visa")
    payment = run_flow(svc.TopUpFlow(cmd, {"stripe": gw}, p_settings), uow_factory, now=clock)
    assert payment.status == "CAPTURED"
    assert (payment.canonical_amount, payment.canonical_currency) == (600, "USD")  # 500 INR at 0.012
    assert (payment.fx_rate, payment.fx_rate_at) == (D("0.012"), RATES_AT)

    flow = refunds.RefundFlow(refunds.RefundPayment(payment.id, 12_345), {"stripe": gw}, r_settings)
    refund = run_flow(flow, uow_factory, caller="client:wallet", now=clock)
    assert (refund.canonical_amount, refund.canonical_currency, refund.fx_rate) == (148, "USD", D("0.012"))

    b = Beneficiary(name="A Kumar", account_number="1234567890", ifsc="HDFC0000123")
    wcmd = withdrawals.RequestWithdrawal("u_1", 100_000, "INR", "IMPS", b)
    gw.payout_status = gw.payout_status.SETTLED
    w = run_flow(withdrawals.WithdrawalFlow(wcmd, gw, w_settings), uow_factory, caller="client:wallet", now=clock)
    assert (w.canonical_amount, w.canonical_currency) == (1200, "USD")

    by_type = {e.type: e.data for e in store.outbox}
    assert by_type[EventType.PAYMENT_CAPTURED]["canonical_amount"] == 600
    assert by_type[EventType.PAYMENT_REFUNDED]["canonical_amount"] == 148
    assert by_type[EventType.WITHDRAWAL_SETTLED]["canonical_amount"] == 1200
    assert {d["canonical_currency"] for d in by_type.values()} == {"USD"}


def test_without_a_fresh_rate_the_top_up_goes_through_with_nulls() -> None:
    uow_factory, store = fake_uow_factory()
    gw, clock = FakeMoneyOutGateway(), Clock()
    stale = fx.RateTable("EUR", RATES.rates, RATES_AT - timedelta(days=2))
    for table in (stale, None):
        p_settings, _, _ = _settings(table)
        cmd = svc.TopUp(user_id="u_1", amount=50_000, currency="INR", gateway="stripe", token="pm_card_visa")
        payment = run_flow(svc.TopUpFlow(cmd, {"stripe": gw}, p_settings), uow_factory, now=clock)
        assert payment.status == "CAPTURED"
        assert (payment.canonical_amount, payment.canonical_currency, payment.fx_rate) == (None, None, None)
    captured = [e.data for e in store.outbox if e.type is EventType.PAYMENT_CAPTURED]
    assert len(captured) == 2
    assert all(d["canonical_amount"] is None and d["canonical_currency"] is None for d in captured)


def test_a_forked_process_loads_its_own_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rates.xml"
    path.write_text(ecb_doc(usd="1.1"))
    ticks = Ticks()
    rates = EcbRates(str(path), refresh_seconds=3600, monotonic=ticks)
    assert rates.table() is not None
    path.write_text(ecb_doc(usd="1.2"))
    import payment_service.adapters.fx_rates as fx_rates

    monkeypatch.setattr(fx_rates.os, "getpid", lambda: -1)  # as a child after fork() sees it
    table = rates.table()
    assert table is not None and table.rates["USD"] == D("1.2")
