"""The gateway sandbox: a local server speaking Stripe's and Razorpay's HTTP APIs (like test mode)."""

from .core import SandboxConfig, create_sandbox_app

__all__ = ["SandboxConfig", "create_sandbox_app"]
