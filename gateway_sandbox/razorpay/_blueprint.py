"""The Razorpay wire API's blueprint, which every module of gateway_sandbox.razorpay adds its routes to."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("sandbox_razorpay", __name__)
