"""The gateway sandbox: a local server speaking Stripe's and Razorpay's HTTP APIs (like test mode).

Not part of the product: `payment-service sandbox`, `dev` and the tests run it; production points
the SDKs at the real gateways. Layout: config (settings), core (state), faults, webhooks (delivery),
admin (/_sandbox), challenge (3-D Secure page), the stripe and razorpay subpackages (the wire APIs,
a module per resource), app (puts them together), server (runs it in a thread or the foreground).
"""

from .app import create_sandbox_app
from .config import SandboxConfig

__all__ = ["SandboxConfig", "create_sandbox_app"]
