"""The sandbox's configuration: where webhooks go, the secrets it signs and accepts, its public address."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class SandboxConfig:
    # Where webhooks go, and the secrets they are signed with (per gateway).
    stripe_webhook_url: str | None = None
    stripe_webhook_secret: str = "whsec_sandbox_stripe"
    razorpay_webhook_url: str | None = None
    razorpay_webhook_secret: str = "sandbox_razorpay_webhook_secret"
    # API credentials the sandbox accepts (any non-empty value if None).
    stripe_api_key: str | None = None
    razorpay_key_id: str | None = None
    razorpay_key_secret: str | None = None
    # The public address of the sandbox itself, for 3-D Secure redirect URLs.
    public_url: str = "http://127.0.0.1:12111"
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 0.5  # doubles after each failed attempt


def config_from_env() -> SandboxConfig:
    cfg = SandboxConfig()
    for name in vars(cfg):
        env = os.environ.get("SANDBOX_" + name.upper())
        if env is not None:
            current = getattr(cfg, name)
            setattr(cfg, name, type(current)(env) if current is not None and not isinstance(current, str) else env)
    return cfg
