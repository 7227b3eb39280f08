"""The Stripe wire API's blueprint, which every module of gateway_sandbox.stripe adds its routes to."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("sandbox_stripe", __name__)
