"""Card gateways: one interface (base.py), one adapter per gateway over its official SDK, and the sandbox."""
