import pytest

from config.settings import ConfigError, load_settings


def test_defaults_and_env() -> None:
    s = load_settings({"EVENTS_TOPIC": "t", "PENDING_3DS_TTL_SECONDS": "60", "GATEWAY_BREAKER_OPEN_SECONDS": "2.5"})
    assert s.EVENTS_TOPIC == "t"
    assert s.PENDING_3DS_TTL_SECONDS == 60
    assert s.GATEWAY_BREAKER_OPEN_SECONDS == 2.5


def test_file_convention(tmp_path) -> None:
    secret = tmp_path / "stripe"
    secret.write_text("sk_live_from_file\n")
    s = load_settings({"STRIPE_API_KEY_FILE": str(secret)})
    assert s.STRIPE_API_KEY == "sk_live_from_file"


def test_both_forms_is_an_error(tmp_path) -> None:
    f = tmp_path / "x"
    f.write_text("a")
    with pytest.raises(ConfigError, match="both set"):
        load_settings({"STRIPE_API_KEY": "a", "STRIPE_API_KEY_FILE": str(f)})


def test_missing_file_and_bad_int_are_clear(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"JWT_SECRET_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="PENDING_3DS_TTL_SECONDS must be a int"):
        load_settings({"PENDING_3DS_TTL_SECONDS": "soon"})


def test_describe_masks_secrets() -> None:
    s = load_settings({"STRIPE_API_KEY": "sk_live_secret", "DATABASE_URL": "mysql+pymysql://app:pw@db/payments"})
    d = s.describe()
    assert d["STRIPE_API_KEY"] == "***"
    assert d["DATABASE_URL"] == "mysql+pymysql://app:***@db/payments"
    assert "sk_live_secret" not in repr(d)
